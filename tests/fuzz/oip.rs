//! Fuzz target: an Open Inference Protocol ModelInferRequest as it arrives on the wire
//! (protobuf bytes) through the conversion to pipeline inputs, served locally and in proxy
//! mode, against the embedded chest X-ray bundle. Seeds: requests written by the seed mode.

#[path = "common.rs"]
mod common;

use medsentry::api::oip::convert::{join_bytes_tensor, parse_request};
use medsentry::inference::model_infer_request::InferInputTensor;
use medsentry::inference::{InferTensorContents, ModelInferRequest};
use prost::Message;

fn request(datatype: &str, shape: Vec<i64>, raw: Option<Vec<u8>>, typed: Option<InferTensorContents>) -> Vec<u8> {
    let inputs = vec![InferInputTensor { name: "input".into(), datatype: datatype.into(), shape, contents: typed, ..Default::default() }];
    ModelInferRequest {
        model_name: "chest-xray-pneumonia".into(),
        id: "seed".into(),
        inputs,
        raw_input_contents: raw.into_iter().collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn main() {
    let fp32: Vec<u8> = (0..4096).flat_map(|i| (i as f32 / 4096.0).to_le_bytes()).collect();
    let files = join_bytes_tensor([b"\x89PNG\r\n\x1a\n".as_slice(), b"DICM".as_slice()]);
    common::write_seeds_if_asked(&[
        ("fp32_raw", request("FP32", vec![1, 1, 64, 64], Some(fp32), None)),
        ("uint8_typed", request("UINT8", vec![1, 1, 64, 64], None, Some(InferTensorContents { uint_contents: vec![128; 4096], ..Default::default() }))),
        ("bytes_raw", request("BYTES", vec![2], Some(files), None)),
        ("bytes_typed", request("BYTES", vec![1, 1], None, Some(InferTensorContents { bytes_contents: vec![b"x".to_vec()], ..Default::default() }))),
    ]);
    let bundle = medsentry::bundle::Bundle::embedded().expect("the build embeds the default bundle").expect("it loads");
    afl::fuzz!(|data: &[u8]| {
        if let Ok(req) = ModelInferRequest::decode(data) {
            let _ = parse_request(&req, &bundle, false);
            let _ = parse_request(&req, &bundle, true);
        }
    });
}
