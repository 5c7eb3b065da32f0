use super::*;

use crate::inference::model_infer_request::InferRequestedOutputTensor;

fn bundle() -> Bundle {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    crate::bundle::load_all(&dir, &[]).unwrap().into_iter().find(|b| b.name() == "chest-xray-pneumonia").unwrap()
}

fn request(name: &str, datatype: &str, shape: Vec<i64>, raw: Option<Vec<u8>>, contents: Option<InferTensorContents>) -> ModelInferRequest {
    ModelInferRequest {
        inputs: vec![InferInputTensor { name: name.into(), datatype: datatype.into(), shape, parameters: HashMap::new(), contents }],
        raw_input_contents: raw.into_iter().collect(),
        ..Default::default()
    }
}

fn reason(r: Result<Parsed, PipelineError>) -> &'static str {
    match r {
        Err(PipelineError::InvalidRequest { reason, .. }) => reason,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[test]
fn fp32_and_uint8_batches_become_one_tensor_per_item() {
    let b = bundle();
    let fp32: Vec<u8> = (0..2 * 4096).flat_map(|i| ((i % 4096) as f32 / 4096.0).to_le_bytes()).collect();
    let p = parse_request(&request("input", "FP32", vec![2, 1, 64, 64], Some(fp32), None), &b, false).unwrap();
    assert!(p.raw);
    assert_eq!(p.items.len(), 2);
    let Input::Tensor { shape, data } = &p.items[1] else { panic!() };
    assert_eq!((shape.as_slice(), data.len(), data[4095]), (&[1i64, 1, 64, 64][..], 4096, 4095.0 / 4096.0));

    let typed = InferTensorContents { uint_contents: vec![255; 4096], ..Default::default() };
    let p = parse_request(&request("input", "UINT8", vec![1, 1, 64, 64], None, Some(typed)), &b, false).unwrap();
    assert!(!p.raw);
    let Input::Tensor { data, .. } = &p.items[0] else { panic!() };
    assert!(data.iter().all(|&v| v == 1.0));
}

#[test]
fn bytes_inputs_are_files_and_dicom_is_recognised() {
    let b = bundle();
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM");
    let raw = join_bytes_tensor([b"\x89PNG".as_slice(), dicom.as_slice()]);
    let p = parse_request(&request("input", "BYTES", vec![2], Some(raw), None), &b, false).unwrap();
    assert!(
        matches!(p.items[0], Input::Image(_)) && matches!(p.items[1], Input::Dicom(_)),
        "{:?}",
        p.items.iter().map(std::mem::discriminant).collect::<Vec<_>>()
    );
    let typed = InferTensorContents { bytes_contents: vec![b"x".to_vec()], ..Default::default() };
    assert_eq!(parse_request(&request("input", "BYTES", vec![1, 1], None, Some(typed.clone())), &b, false).unwrap().items.len(), 1);
    assert_eq!(reason(parse_request(&request("input", "BYTES", vec![2], None, Some(typed)), &b, false)), "bad_contents");
}

#[test]
fn refusals_name_what_is_wrong() {
    let b = bundle();
    let ok = || Some(vec![0u8; 4096 * 4]);
    assert_eq!(reason(parse_request(&request("input", "FP32", vec![1, 1, 32, 32], ok(), None), &b, false)), "bad_shape");
    assert_eq!(reason(parse_request(&request("input", "FP32", vec![1, 64, 64], ok(), None), &b, false)), "bad_shape");
    assert_eq!(reason(parse_request(&request("input", "FP32", vec![0, 1, 64, 64], Some(vec![]), None), &b, false)), "bad_shape");
    assert_eq!(reason(parse_request(&request("input", "FP64", vec![1, 1, 64, 64], ok(), None), &b, false)), "bad_datatype");
    assert_eq!(reason(parse_request(&request("input", "FP32", vec![1, 1, 64, 64], Some(vec![0; 100]), None), &b, false)), "bad_contents");
    assert_eq!(reason(parse_request(&request("input", "FP32", vec![2, 1, 64, 64], ok(), None), &b, false)), "bad_contents");
    let big = InferTensorContents { uint_contents: vec![256; 4096], ..Default::default() };
    assert_eq!(reason(parse_request(&request("input", "UINT8", vec![1, 1, 64, 64], None, Some(big)), &b, false)), "bad_contents");
    // Names: strict locally, any single input in proxy mode.
    assert_eq!(reason(parse_request(&request("INPUT__0", "FP32", vec![1, 1, 64, 64], ok(), None), &b, false)), "bad_input_name");
    assert!(parse_request(&request("INPUT__0", "FP32", vec![1, 1, 64, 64], ok(), None), &b, true).is_ok());
    assert_eq!(reason(parse_request(&ModelInferRequest::default(), &b, false)), "no_input");
    // Proxy mode screens every input: a second image-like input is screened too, one
    // the bundle cannot screen refuses the request.
    let mut pair = request("INPUT__0", "FP32", vec![1, 1, 64, 64], ok(), None);
    pair.inputs.push(InferInputTensor { name: "INPUT__1".into(), datatype: "FP32".into(), shape: vec![2, 1, 64, 64], ..Default::default() });
    pair.raw_input_contents.push(vec![0u8; 2 * 4096 * 4]);
    let parsed = parse_request(&pair, &b, true).unwrap();
    assert_eq!((parsed.items.len(), parsed.layout.as_str()), (3, "INPUT__0:1,INPUT__1:2"));
    assert_eq!(reason(parse_request(&pair, &b, false)), "bad_input_name");
    pair.inputs[1].datatype = "INT64".into();
    assert_eq!(reason(parse_request(&pair, &b, true)), "unscreenable_input");
    let mut two = request("input", "FP32", vec![1, 1, 64, 64], ok(), None);
    two.raw_input_contents.push(vec![]);
    assert_eq!(reason(parse_request(&two, &b, false)), "bad_contents");
    let mut unknown = request("input", "FP32", vec![1, 1, 64, 64], ok(), None);
    unknown.outputs.push(InferRequestedOutputTensor { name: "logits".into(), parameters: HashMap::new() });
    assert!(matches!(check_requested_outputs(&unknown), Err(PipelineError::InvalidRequest { reason: "unknown_output", .. })));
}

#[test]
fn bytes_tensors_round_trip_and_refuse_truncation() {
    let items: [&[u8]; 3] = [b"abc", b"", b"\x00\x01"];
    let raw = join_bytes_tensor(items);
    assert_eq!(raw.len(), 3 * 4 + 5);
    assert_eq!(split_bytes_tensor(&raw).unwrap(), items);
    assert!(split_bytes_tensor(&raw[..raw.len() - 1]).unwrap_err().contains("claims 2 bytes"));
    assert!(split_bytes_tensor(&[1, 0]).unwrap_err().contains("length prefix"));
    assert!(split_bytes_tensor(&[]).unwrap().is_empty());
}
