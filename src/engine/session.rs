//! One ONNX Runtime session of a bundle's classifier, owned by one worker thread
//! (`Session::run` takes `&mut self`). Checks the graph against the bundle at open.

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::bundle::Bundle;

use super::{Device, EngineError, ExecutionProvider};

/// Logits and features of a batch, row-major.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    pub logits: Vec<f32>,
    pub features: Vec<f32>,
}

pub struct ModelSession {
    session: Session,
    /// Names of the graph's input and outputs, from bundle.toml, checked against the graph.
    input: String,
    logits: String,
    features: String,
    /// Input shape without the batch dimension (C, H, W).
    item_shape: [usize; 3],
    num_labels: usize,
    feature_dim: usize,
    /// The provider this session really runs on (CUDA may have fallen back to CPU).
    pub provider: ExecutionProvider,
}

impl ModelSession {
    pub fn open(bundle: &Bundle, intra_threads: usize, device: Device) -> Result<ModelSession, EngineError> {
        let env = super::runtime::environment(None)?;
        let name = bundle.name().to_string();
        let ort_err = |e: ort::Error| EngineError::Session { model: name.clone(), message: e.to_string() };
        let mut builder = Session::builder(env).map_err(ort_err)?.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| ort_err(e.into()))?;
        // Spinning intra-op threads would burn the cores the gRPC and decode threads need
        // between batches; a sidecar shares its cores, so its ORT threads sleep instead.
        builder = builder.with_config_entry("session.intra_op.allow_spinning", "0").map_err(|e| ort_err(e.into()))?;
        if intra_threads > 0 {
            builder = builder.with_intra_threads(intra_threads).map_err(|e| ort_err(e.into()))?;
        }
        let (mut builder, provider) = super::provider::register(builder, device, &name)?;
        let session = builder.commit_from_memory(bundle.classifier()).map_err(ort_err)?;
        let m = &bundle.manifest;
        let item_shape = [m.input.channels as usize, m.input.height as usize, m.input.width as usize];
        let s = ModelSession {
            session,
            input: m.outputs.input.clone(),
            logits: m.outputs.logits.clone(),
            features: m.outputs.features.clone(),
            item_shape,
            num_labels: m.labels.len(),
            feature_dim: m.outputs.feature_dim,
            provider,
        };
        s.check_graph(&name)?;
        Ok(s)
    }

    /// The bundle's input spec and output names must be what the graph really has.
    fn check_graph(&self, model: &str) -> Result<(), EngineError> {
        let mismatch = |message: String| Err(EngineError::GraphMismatch { model: model.to_string(), message });
        let inputs = self.session.inputs();
        let Some(input) = inputs.iter().find(|o| o.name() == self.input) else {
            let names: Vec<_> = inputs.iter().map(|o| o.name().to_string()).collect();
            return mismatch(format!("graph has no input {:?} (inputs: {names:?})", self.input));
        };
        let want: Vec<i64> = self.item_shape.iter().map(|&d| d as i64).collect();
        match input.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 4 && shape[0] <= 0 && shape[1..] == want[..] => {}
            other => return mismatch(format!("input {:?} is {other:?}; bundle.toml says float32 [N, {want:?}] with a dynamic batch", self.input)),
        }
        for (name, width) in [(&self.logits, self.num_labels), (&self.features, self.feature_dim)] {
            let Some(out) = self.session.outputs().iter().find(|o| o.name() == name.as_str()) else {
                return mismatch(format!("graph has no output {name:?}"));
            };
            match out.dtype() {
                ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 2 && shape[1] == width as i64 => {}
                other => return mismatch(format!("output {name:?} is {other:?}, expected float32 [N, {width}]")),
            }
        }
        Ok(())
    }

    /// Runs `n` inputs laid out contiguously in `input` (n * C * H * W normalised values).
    pub fn run(&mut self, input: Vec<f32>, n: usize) -> Result<BatchOutput, EngineError> {
        let [c, h, w] = self.item_shape;
        let tensor = Tensor::from_array(([n, c, h, w], input)).map_err(|e| EngineError::Run(e.to_string()))?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(|e| EngineError::Run(e.to_string()))?;
        let extract = |name: &str, width: usize| -> Result<Vec<f32>, EngineError> {
            let value = outputs.get(name).ok_or_else(|| EngineError::Run(format!("output {name} missing")))?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| EngineError::Run(e.to_string()))?;
            if shape.len() != 2 || shape[0] as usize != n || shape[1] as usize != width {
                return Err(EngineError::Run(format!("output {name} has shape {shape:?}, expected [{n}, {width}]")));
            }
            Ok(data.to_vec())
        };
        let logits = extract(&self.logits, self.num_labels)?;
        let features = extract(&self.features, self.feature_dim)?;
        Ok(BatchOutput { logits, features })
    }
}
