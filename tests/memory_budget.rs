//! Nothing a caller sends takes the sidecar down. Each test runs the real binary as its own
//! process under a memory cap (RLIMIT_DATA), so that a bomb that gets through kills it, and
//! checks that it refuses what it must, keeps serving, and that its peak resident memory
//! stays inside the Deployment's 1 GiB.

mod common;

use std::time::Duration;

use common::bombs;
use common::capped::CappedServer;
use common::*;
use tonic::Code;

/// RLIMIT_DATA counts every private writable mapping (thread stacks and allocator arenas
/// included), so it sits above the resident ceiling.
const DATA_CAP: u64 = 2 << 30;
/// The Deployment's memory limit (deploy/kubernetes): peak resident memory must stay below.
const RESIDENT_CEILING: u64 = 1 << 30;

async fn assert_still_serving(server: &mut CappedServer, what: &str) {
    assert!(server.alive(), "the server died after {what}");
    let mut client = server.client().await;
    let r = client.screen(tensor_request("after", vec![1, 1, 64, 64], vec![0.5; 4096])).await;
    assert!(r.is_ok(), "the server does not serve after {what}: {:?}", r.err());
    let peak = server.status_bytes("VmHWM");
    eprintln!("after {what}: peak resident {} MiB", peak >> 20);
    assert!(peak < RESIDENT_CEILING, "peak resident memory {} MiB after {what}", peak >> 20);
}

fn reason(status: &tonic::Status) -> &str {
    status.metadata().get("medsentry-reason").and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_before_they_allocate() {
    let mut server = CappedServer::start(DATA_CAP, &[]).await;
    let mut client = server.client().await;

    // 3 MB inflating to 3 GiB of Pixel Data behind a 512x512 header.
    let bomb = bombs::deflate_bomb(3072);
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let err = client.screen(dicom_request("deflate", bomb)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::InvalidArgument, "malformed_dicom"), "{}", err.message());
    assert!(err.message().contains("inflates past"), "{}", err.message());
    assert_still_serving(&mut server, "a deflate bomb").await;

    // Codestreams that declare far more than Rows x Columns.
    let lies = [
        ("jpeg 65500x65500 in 64x64", bombs::encapsulated("1.2.840.10008.1.2.4.50", 64, 64, 1, &bombs::jpeg_claiming(65500, 65500)), "image_too_large"),
        ("jpeg 60000x60000 in 512x512", bombs::encapsulated("1.2.840.10008.1.2.4.50", 512, 512, 1, &bombs::jpeg_claiming(60000, 60000)), "image_too_large"),
        ("jpeg 4000x4000 in 64x64", bombs::encapsulated("1.2.840.10008.1.2.4.50", 64, 64, 1, &bombs::jpeg_claiming(4000, 4000)), "malformed_dicom"),
        ("j2k 60000x60000 in 512x512", bombs::encapsulated("1.2.840.10008.1.2.4.90", 512, 512, 1, &bombs::j2k_claiming(60000, 60000, 1)), "image_too_large"),
        ("j2k 4000x4000 in 512x512", bombs::encapsulated("1.2.840.10008.1.2.4.91", 512, 512, 1, &bombs::j2k_claiming(4000, 4000, 1)), "malformed_dicom"),
        // A JP2 file could show a matching SIZ in one box and decode another.
        (
            "j2k in a JP2 wrapper",
            bombs::encapsulated("1.2.840.10008.1.2.4.90", 512, 512, 1, &[&b"\0\0\0\x0cjP  \r\n\x87\n"[..], &bombs::j2k_claiming(512, 512, 1)].concat()),
            "malformed_dicom",
        ),
        // Syntaxes whose decoders inflate without a bound are not accepted at all.
        ("deflated image frame", bombs::encapsulated("1.2.840.10008.1.2.8.1", 512, 512, 1, &[0x78, 0x9C, 0x03, 0x00]), "unsupported_transfer_syntax"),
        ("JPIP referenced deflate", bombs::part10("1.2.840.10008.1.2.4.95", &[0x78, 0x9C, 0x03, 0x00]), "unsupported_transfer_syntax"),
    ];
    for (what, file, want) in lies {
        assert!(file.len() < 8 << 10, "{what}: {} bytes", file.len());
        let err = client.screen(dicom_request(what, file)).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::InvalidArgument, want), "{what}: {}", err.message());
        assert_still_serving(&mut server, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_allowed_images_in_parallel_are_shed_not_fatal() {
    // 4096 x 4096 RGB: about 350 MB to decode each, so one fits the default 512 MiB budget
    // at a time and the rest wait, then are shed.
    let mut server = CappedServer::start(DATA_CAP, &[]).await;
    let big = bombs::jpeg(4096, 4096, 3, 95.0);
    let mut calls = Vec::new();
    for i in 0..8 {
        let (big, mut client) = (big.clone(), server.client().await);
        calls.push(tokio::spawn(async move { client.screen(image_request(&format!("big-{i}"), big)).await }));
    }
    let (mut ok, mut shed) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert_eq!(reason(&e), "decode_budget_exhausted", "{}", e.message());
                shed += 1;
            }
            Err(e) => panic!("unexpected refusal: {:?} {}", e.code(), e.message()),
        }
    }
    eprintln!("8 parallel 4096x4096 JPEGs: {ok} decoded, {shed} shed");
    assert!(ok >= 1, "at least one large image must be decoded");
    assert_still_serving(&mut server, "8 parallel 4096x4096 JPEGs").await;

    // One Open Inference Protocol call carrying 8 of them as BYTES: its items share the
    // same budget; the call is answered or shed as a whole, and the server stays up.
    {
        use medsentry::api::oip::convert::join_bytes_tensor;
        use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
        use medsentry::inference::model_infer_request::InferInputTensor;
        use medsentry::inference::ModelInferRequest;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
        let mut oip = GrpcInferenceServiceClient::new(channel).max_encoding_message_size(64 << 20);
        let req = ModelInferRequest {
            model_name: "chest-xray-pneumonia".into(),
            inputs: vec![InferInputTensor { name: "input".into(), datatype: "BYTES".into(), shape: vec![8], ..Default::default() }],
            raw_input_contents: vec![join_bytes_tensor((0..8).map(|_| big.as_slice()))],
            ..Default::default()
        };
        match oip.model_infer(req).await {
            Ok(_) => eprintln!("OIP call with 8 4096x4096 JPEGs: answered"),
            Err(e) => {
                assert_eq!((e.code(), reason(&e)), (Code::ResourceExhausted, "decode_budget_exhausted"), "{}", e.message());
                eprintln!("OIP call with 8 4096x4096 JPEGs: shed");
            }
        }
    }
    assert_still_serving(&mut server, "an OIP call with 8 4096x4096 JPEGs").await;

    // Calls dropped by their callers right after sending: their decodes stop or finish
    // inside the budget, and the budget drains back to zero.
    for i in 0..24 {
        let big = big.clone();
        let mut client = server.client().await;
        let call = tokio::spawn(async move { client.screen(image_request(&format!("gone-{i}"), big)).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        call.abort();
    }
    let mut in_use = f64::NAN;
    for _ in 0..300 {
        let (_, text) = http_get(server.admin, "/metrics");
        in_use = metric(&text, "medsentry_decode_memory_bytes", &[("state", "in_use")]);
        if in_use == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_use, 0.0, "decode memory still reserved after the cancelled calls");
    assert_still_serving(&mut server, "24 cancelled calls carrying 4096x4096 JPEGs").await;
}
