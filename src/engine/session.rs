//! One ONNX Runtime session of a bundle's classifier, owned by one worker thread
//! (`Session::run` takes `&mut self`). Checks the graph against the bundle at open.

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::bundle::{Bundle, Layout, ScoreKind};

use super::{Device, EngineError, ExecutionProvider};

/// Smallest probability taken before the log when a graph answers probabilities (the
/// pipeline's fit/torch_graph.py uses the same constant).
const MIN_PROBABILITY: f32 = 1e-30;

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
    /// The graph's axis order: batches arrive NCHW and are transposed for an NHWC graph.
    layout: Layout,
    /// Probabilities are turned into logits (ln p) as they leave the session.
    scores: ScoreKind,
    /// A graph with a fixed batch of 1 (bundle max_batch 1) is accepted as it is.
    fixed_batch_one: bool,
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
            layout: m.input.layout,
            scores: m.outputs.scores,
            fixed_batch_one: m.max_batch == 1,
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
        let [c, h, w] = self.item_shape.map(|d| d as i64);
        let want = match self.layout {
            Layout::Nchw => [c, h, w],
            Layout::Nhwc => [h, w, c],
        };
        let batch_ok = |b: i64| b <= 0 || (b == 1 && self.fixed_batch_one);
        match input.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 4 && batch_ok(shape[0]) && shape[1..] == want[..] => {}
            other => {
                return mismatch(format!(
                    "input {:?} is {other:?}; bundle.toml says float32 [N, {want:?}] ({:?}) with a dynamic batch (or max_batch = 1 for a batch of 1)",
                    self.input, self.layout
                ))
            }
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
        let tensor = match self.layout {
            Layout::Nchw => Tensor::from_array(([n, c, h, w], input)),
            Layout::Nhwc => Tensor::from_array(([n, h, w, c], to_nhwc(&input, n, c, h * w))),
        }
        .map_err(|e| EngineError::Run(e.to_string()))?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(|e| EngineError::Run(e.to_string()))?;
        let extract = |name: &str, width: usize| -> Result<Vec<f32>, EngineError> {
            let value = outputs.get(name).ok_or_else(|| EngineError::Run(format!("output {name} missing")))?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| EngineError::Run(e.to_string()))?;
            if shape.len() != 2 || shape[0] as usize != n || shape[1] as usize != width {
                return Err(EngineError::Run(format!("output {name} has shape {shape:?}, expected [{n}, {width}]")));
            }
            Ok(data.to_vec())
        };
        let mut logits = extract(&self.logits, self.num_labels)?;
        if self.scores == ScoreKind::Probabilities {
            logits.iter_mut().for_each(|p| *p = p.max(MIN_PROBABILITY).ln());
        }
        let features = extract(&self.features, self.feature_dim)?;
        Ok(BatchOutput { logits, features })
    }
}

/// (n, c, hw) row-major -> (n, hw, c).
fn to_nhwc(input: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; input.len()];
    for i in 0..n {
        let (src, dst) = (&input[i * c * hw..(i + 1) * c * hw], &mut out[i * c * hw..(i + 1) * c * hw]);
        for ch in 0..c {
            for p in 0..hw {
                dst[p * c + ch] = src[ch * hw + p];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn to_nhwc_interleaves_channels() {
        // two items, 3 channels, 2 pixels: item 0 planes [0 1][2 3][4 5]
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(super::to_nhwc(&x, 2, 3, 2), vec![0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]);
    }
}
