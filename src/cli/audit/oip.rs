//! The audit over the Open Inference Protocol (KServe v2 / Triton gRPC): ModelInfer with the
//! query as one PNG in a BYTES element, or as an FP32 `[1, C, H, W]` tensor in [0, 1] at the
//! model's size (what a client of a Triton model sends, and what medsentry in proxy mode
//! screens and forwards). The answer is read as an outside caller of such an endpoint reads
//! it: probabilities from the `probabilities` output, else from the first FP32 `[1, K]`
//! output (softmax applied when it does not already sum to 1); the verdict and the campaign
//! alarm from medsentry's response parameters, when the endpoint sends them.

use tonic::transport::Channel;

use super::image::Image;
use crate::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::inference::infer_parameter::ParameterChoice;
use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::{ModelInferRequest, ModelInferResponse, ModelMetadataRequest};

/// What the query carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// One encoded PNG, BYTES `[1]`.
    Png,
    /// FP32 `[1, C, H, W]`, the image already at the model's size.
    Fp32 { channels: usize, height: usize, width: usize },
}

pub struct OipClient {
    client: GrpcInferenceServiceClient<Channel>,
    model: String,
    /// Name of the model's (single) input, from ModelMetadata.
    input: String,
    pub payload: Payload,
}

/// The parts of a ModelInfer answer the audit uses.
pub struct OipAnswer {
    pub probabilities: Vec<f32>,
    /// `medsentry.verdict` (CLEAN, SUSPICIOUS, ...), absent from endpoints that do not screen.
    pub verdict: Option<String>,
    pub campaign_alarm: bool,
}

impl OipClient {
    /// Reads the model's input from ModelMetadata; `fp32` sends tensors at its size.
    pub async fn connect(channel: Channel, model: &str, fp32: bool) -> anyhow::Result<OipClient> {
        anyhow::ensure!(!model.is_empty(), "--protocol oip-* needs --model (the Open Inference Protocol names every model)");
        let mut client = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(256 << 20);
        let meta = client.model_metadata(ModelMetadataRequest { name: model.to_string(), version: String::new() }).await?.into_inner();
        anyhow::ensure!(meta.inputs.len() == 1, "model {model} has {} inputs; the audit sends one image", meta.inputs.len());
        let input = &meta.inputs[0];
        let payload = if fp32 {
            let dims: Vec<i64> = input.shape.iter().rev().take(3).rev().copied().collect();
            anyhow::ensure!(
                dims.len() == 3 && dims.iter().all(|d| *d > 0) && (dims[0] == 1 || dims[0] == 3),
                "model {model} input {} has shape {:?}: --protocol oip-fp32 needs [.., C, H, W] with C 1 or 3 and a fixed size",
                input.name,
                input.shape
            );
            Payload::Fp32 { channels: dims[0] as usize, height: dims[1] as usize, width: dims[2] as usize }
        } else {
            Payload::Png
        };
        Ok(OipClient { client, model: model.to_string(), input: input.name.clone(), payload })
    }

    pub fn request(&self, img: &Image, png: Vec<u8>, id: String) -> ModelInferRequest {
        let (datatype, shape, raw) = match self.payload {
            Payload::Png => {
                let mut raw = (png.len() as u32).to_le_bytes().to_vec();
                raw.extend_from_slice(&png);
                ("BYTES", vec![1], raw)
            }
            Payload::Fp32 { channels, height, width } => {
                let planes = img.planes(channels);
                ("FP32", vec![1, channels as i64, height as i64, width as i64], planes.iter().flat_map(|v| (*v as f32 / 255.0).to_le_bytes()).collect())
            }
        };
        ModelInferRequest {
            model_name: self.model.clone(),
            id,
            inputs: vec![InferInputTensor { name: self.input.clone(), datatype: datatype.into(), shape, ..Default::default() }],
            raw_input_contents: vec![raw],
            ..Default::default()
        }
    }

    pub async fn infer(&mut self, req: ModelInferRequest) -> Result<OipAnswer, tonic::Status> {
        let resp = self.client.model_infer(req).await?.into_inner();
        Ok(read_answer(&resp))
    }
}

fn read_answer(resp: &ModelInferResponse) -> OipAnswer {
    let text = |key: &str| match resp.parameters.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        Some(ParameterChoice::StringParam(s)) => Some(s.clone()),
        _ => None,
    };
    let campaign_alarm =
        matches!(resp.parameters.get("medsentry.campaign_alarm").and_then(|p| p.parameter_choice.as_ref()), Some(ParameterChoice::BoolParam(true)));
    let fp32 = |i: usize| -> Option<Vec<f32>> {
        let o = &resp.outputs[i];
        let n: i64 = o.shape.iter().product();
        if o.datatype != "FP32" || o.shape.len() != 2 || o.shape[0] != 1 || n < 2 {
            return None;
        }
        match resp.raw_output_contents.get(i) {
            Some(raw) if raw.len() == 4 * n as usize => Some(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            _ => o.contents.as_ref().map(|c| c.fp32_contents.clone()).filter(|v| v.len() == n as usize),
        }
    };
    let named = resp.outputs.iter().position(|o| o.name == "probabilities").and_then(fp32);
    let scores = named.or_else(|| (0..resp.outputs.len()).find_map(fp32)).unwrap_or_default();
    let sums_to_one = scores.iter().all(|p| (0.0..=1.0).contains(p)) && (scores.iter().sum::<f32>() - 1.0).abs() < 1e-3;
    let probabilities = if scores.is_empty() || sums_to_one { scores } else { crate::defense::numeric::softmax(&scores) };
    OipAnswer { probabilities, verdict: text("medsentry.verdict"), campaign_alarm }
}
