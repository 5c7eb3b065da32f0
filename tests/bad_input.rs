//! The bad-input table over real gRPC: each row gets its own status, a message a PACS
//! engineer can act on, and a counter; the server keeps serving after every one.

mod common;

use common::*;
use medsentry::proto::{self, ScreenRequest};
use tonic::Code;

const MODEL: &str = "chest-xray-pneumonia";

/// A PNG whose header claims 60000 x 60000 pixels (and carries no pixel data).
fn huge_png_header() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(60000u32.to_be_bytes());
    ihdr.extend(60000u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // An empty IDAT and IEND: a decoder reading past the header hits them, not EOF.
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend(0u32.to_be_bytes());
        png.extend(chunk);
        png.extend(crc32(chunk).to_be_bytes());
    }
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn dicom_without_pixel_data() -> Vec<u8> {
    let mut obj = dicom_object::open_file(data("dicom/CT_small.dcm")).unwrap();
    obj.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

/// A real file whose Pixel Data header claims 4 GiB: refused from the headers, before
/// dicom-rs would allocate the declared length.
fn dicom_claiming_4_gib() -> Vec<u8> {
    let mut b = std::fs::read(data("dicom/CT_small.dcm")).unwrap();
    let at = b.windows(6).rposition(|w| w == b"\xe0\x7f\x10\x00OW").expect("CT_small has OW pixel data");
    b[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    b
}

/// Found by fuzzing (scripts/fuzz.sh dicom): MR_small_RLE.dcm with one byte of its RLE
/// segment data changed (offset 1767: 6 -> 27) makes dicom-rs's RLE decoder index out of
/// bounds; the panic is caught and answered as a refusal.
fn rle_segment_overrun() -> Vec<u8> {
    let mut b = std::fs::read(data("dicom/MR_small_RLE.dcm")).unwrap();
    assert_eq!(b[1767], 6, "the shared MR_small_RLE.dcm is the one the fuzzer mutated");
    b[1767] = 27;
    b
}

/// A real chest X-ray JPEG cut in half (libjpeg would pad the missing rows with grey).
fn half_a_jpeg() -> Vec<u8> {
    let full = std::fs::read(data("chest_xray_kermany/images/test/NORMAL/IM-0001-0001.jpeg")).unwrap();
    full[..full.len() / 2].to_vec()
}

struct Row {
    name: &'static str,
    request: ScreenRequest,
    code: Code,
    /// Words the message must contain.
    says: &'static str,
    /// `reason` label of medsentry_errors_total.
    reason: &'static str,
}

fn table() -> Vec<Row> {
    let ct = std::fs::read(data("dicom/CT_small.dcm")).unwrap();
    let spec_len = 64 * 64;
    let mut nan = vec![0.5f32; spec_len];
    nan[17] = f32::NAN;
    vec![
        Row { name: "empty body", request: image_request("r", Vec::new()), code: Code::InvalidArgument, says: "no input bytes", reason: "empty_input" },
        Row { name: "empty dicom", request: dicom_request("r", Vec::new()), code: Code::InvalidArgument, says: "no input bytes", reason: "empty_input" },
        Row {
            name: "no input at all",
            request: ScreenRequest { request_id: "r".into(), model: String::new(), input: None },
            code: Code::InvalidArgument,
            says: "no input",
            reason: "no_input",
        },
        Row {
            name: "neither DICOM nor image",
            request: image_request("r", b"%PDF-1.4 definitely not pixels".to_vec()),
            code: Code::InvalidArgument,
            says: "neither DICOM",
            reason: "unrecognized_format",
        },
        Row {
            name: "garbage in the dicom field",
            request: dicom_request("r", vec![7u8; 4096]),
            code: Code::InvalidArgument,
            says: "DICOM",
            reason: "malformed_dicom",
        },
        Row {
            name: "truncated DICOM",
            request: dicom_request("r", ct[..ct.len() / 2].to_vec()),
            code: Code::InvalidArgument,
            says: "truncated or malformed",
            reason: "malformed_dicom",
        },
        Row {
            name: "DICOM element claiming 4 GiB",
            request: dicom_request("r", dicom_claiming_4_gib()),
            code: Code::InvalidArgument,
            says: "declares 4294967280 bytes",
            reason: "malformed_dicom",
        },
        Row {
            name: "DICOM without pixel data",
            request: dicom_request("r", dicom_without_pixel_data()),
            code: Code::InvalidArgument,
            says: "no Pixel Data",
            reason: "dicom_no_pixel_data",
        },
        Row {
            name: "unsupported transfer syntax",
            request: dicom_request("r", std::fs::read(data("dicom/MR_small_jpeg_ls_lossless.dcm")).unwrap()),
            code: Code::InvalidArgument,
            says: "JPEG-LS",
            reason: "unsupported_transfer_syntax",
        },
        Row {
            name: "60000x60000 header",
            request: image_request("r", huge_png_header()),
            code: Code::InvalidArgument,
            says: "60000x60000",
            reason: "image_too_large",
        },
        Row {
            name: "tensor of the wrong shape",
            request: tensor_request("r", vec![1, 3, 64, 64], vec![0.5; 3 * spec_len]),
            code: Code::InvalidArgument,
            says: "does not match the model input",
            reason: "bad_tensor",
        },
        Row {
            name: "tensor with NaN",
            request: tensor_request("r", vec![1, 1, 64, 64], nan),
            code: Code::InvalidArgument,
            says: "not finite",
            reason: "bad_tensor",
        },
        Row {
            name: "tensor data/shape mismatch",
            request: tensor_request("r", vec![1, 64, 64], vec![0.5; 10]),
            code: Code::InvalidArgument,
            says: "needs 4096 values",
            reason: "bad_tensor",
        },
        Row {
            name: "RLE segment overrun (fuzz finding)",
            request: dicom_request("r", rle_segment_overrun()),
            code: Code::InvalidArgument,
            says: "codec failed",
            reason: "malformed_dicom",
        },
        Row { name: "JPEG cut in half", request: image_request("r", half_a_jpeg()), code: Code::InvalidArgument, says: "truncated", reason: "malformed_image" },
        Row {
            name: "a 100 kB model name",
            request: ScreenRequest { request_id: "r".into(), model: "m".repeat(100_000), input: Some(proto::screen_request::Input::Image(vec![1])) },
            code: Code::NotFound,
            says: "(100000 bytes)",
            reason: "unknown_model",
        },
        Row {
            name: "unknown model",
            request: ScreenRequest { request_id: "r".into(), model: "brain-mri".into(), input: Some(proto::screen_request::Input::Image(vec![1])) },
            code: Code::NotFound,
            says: "unknown model \"brain-mri\"",
            reason: "unknown_model",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_reason_and_counter_and_the_server_keeps_serving() {
    let server = TestServer::ready(&[]).await;
    let mut client = server.client().await;
    let good = std::fs::read(data("chest_xray_kermany/images/test/NORMAL/IM-0001-0001.jpeg")).unwrap();
    for row in table() {
        let (_, before) = server.admin_get("/metrics");
        let err = client.screen(row.request).await.expect_err(row.name);
        assert_eq!(err.code(), row.code, "{}: {}", row.name, err.message());
        assert!(err.message().contains(row.says), "{}: message {:?} should say {:?}", row.name, err.message(), row.says);
        assert_eq!(err.metadata().get("medsentry-reason").unwrap().to_str().unwrap(), row.reason, "{}", row.name);
        let (_, after) = server.admin_get("/metrics");
        let count = |t: &str| metric(t, "medsentry_errors_total", &[("reason", row.reason)]);
        assert_eq!(count(&after) - count(&before), 1.0, "{}: errors counter for {}", row.name, row.reason);
        // Still serving: a real image right after.
        let ok = client.screen(image_request("after", good.clone())).await;
        assert!(ok.is_ok(), "{}: server stopped serving: {:?}", row.name, ok.err());
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused_and_counted() {
    let server = TestServer::ready(&["--max-message-bytes", "1048576"]).await;
    let mut client = server.client().await;
    let (_, before) = server.admin_get("/metrics");
    let err = client.screen(image_request("big", vec![0u8; 2 << 20])).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("too large"), "{}", err.message());
    let (_, after) = server.admin_get("/metrics");
    let count = |t: &str| metric(t, "medsentry_errors_total", &[("reason", "message_too_large")]);
    assert_eq!(count(&after) - count(&before), 1.0);
    let good = std::fs::read(data("chest_xray_kermany/images/test/NORMAL/IM-0001-0001.jpeg")).unwrap();
    client.screen(image_request("after", good)).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted() {
    let server = TestServer::ready(&["--queue-capacity", "1", "--max-batch", "1"]).await;
    let client = server.client().await;
    let tensor = vec![0.5f32; 64 * 64];
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let (mut c, t) = (client.clone(), tensor.clone());
            tokio::spawn(async move { c.screen(tensor_request(&i.to_string(), vec![1, 1, 64, 64], t)).await })
        })
        .collect();
    let mut codes = Vec::new();
    for c in calls {
        codes.push(match c.await.unwrap() {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        });
    }
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "24 concurrent calls into a queue of 1: {codes:?}");
    let (_, m) = server.admin_get("/metrics");
    assert!(metric(&m, "medsentry_errors_total", &[("model", MODEL), ("reason", "queue_full")]) >= 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oip_batch_larger_than_the_queue_is_answered() {
    use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use medsentry::inference::model_infer_request::InferInputTensor;
    use medsentry::inference::ModelInferRequest;
    // 300 items against the default queue capacity of 256: they enter the batcher 32 at a
    // time instead of all at once (which answered RESOURCE_EXHAUSTED on an idle server).
    let server = TestServer::ready(&[]).await;
    let n = 300;
    let raw: Vec<u8> = (0..n * 4096).flat_map(|i| ((i % 255) as f32 / 255.0).to_le_bytes()).collect();
    let req = ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![n as i64, 1, 64, 64], ..Default::default() }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    let mut oip = GrpcInferenceServiceClient::new(server.channel().await).max_decoding_message_size(64 << 20);
    let resp = oip.model_infer(req).await.expect("a 300-item batch is answered").into_inner();
    let verdict = resp.outputs.iter().find(|o| o.name == "verdict").unwrap();
    assert_eq!(verdict.shape, [n as i64]);
    server.stop().await.unwrap();
}
