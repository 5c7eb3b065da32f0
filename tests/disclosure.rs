//! What callers see of the detectors: by default the verdict, which detectors fired and
//! the policy's action, never raw scores or thresholds (what a score-based attacker tunes
//! against); holders of a token the policy lists see them. Over medsentry.v1 and the Open
//! Inference Protocol, for answers, rejections and model descriptions.

mod common;

use common::*;
use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use medsentry::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use medsentry::inference::ModelInferRequest;
use medsentry::proto::{GetModelRequest, Verdict};
use tonic::Code;
use tonic_types::StatusExt;

const TOKEN: &str = "letmein";
/// sha256("letmein")
const TOKEN_SHA256: &str = "1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b63032";

fn with_token<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("medsentry-score-token", TOKEN.parse().unwrap());
    r
}

fn oip_request(pixels: &[f32], outputs: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: CHEST.into(),
        inputs: vec![InferInputTensor { name: "input".into(), datatype: "FP32".into(), shape: vec![1, 1, 64, 64], ..Default::default() }],
        raw_input_contents: vec![pixels.iter().flat_map(|v| v.to_le_bytes()).collect()],
        outputs: outputs.iter().map(|o| InferRequestedOutputTensor { name: o.to_string(), ..Default::default() }).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_are_withheld_by_default_and_shown_to_token_holders() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &format!("[disclosure]\nscore_token_sha256 = [\"{TOKEN_SHA256}\"]\n"));
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let (_, flagged) = sample_pair();

    let hidden = client.screen(tensor_request("adv", vec![1, 64, 64], flagged.clone())).await.unwrap().into_inner().screening.unwrap();
    assert_eq!(hidden.verdict, Verdict::Adversarial as i32);
    assert!(hidden.scores_withheld);
    assert_eq!(hidden.fused_score, 0.0);
    assert!(hidden.detectors.iter().all(|d| d.score == 0.0 && d.threshold == 0.0 && d.calibrated_fpr == 0.0), "{:?}", hidden.detectors);
    assert!(hidden.detectors.iter().any(|d| d.fired), "which detectors fired is still given");
    let shown = client.screen(with_token(tensor_request("adv", vec![1, 64, 64], flagged.clone()))).await.unwrap().into_inner().screening.unwrap();
    assert!(!shown.scores_withheld && shown.fused_score > 1.0);
    assert!(shown.detectors.iter().all(|d| d.score != 0.0 && d.threshold > 0.0), "{:?}", shown.detectors);
    // A wrong token is no token.
    let mut wrong = tonic::Request::new(tensor_request("adv", vec![1, 64, 64], flagged.clone()));
    wrong.metadata_mut().insert("medsentry-score-token", "letmeout".parse().unwrap());
    assert!(client.screen(wrong).await.unwrap().into_inner().screening.unwrap().scores_withheld);

    let model = client.get_model(GetModelRequest { name: CHEST.into() }).await.unwrap().into_inner();
    assert!(model.detectors.iter().all(|d| d.threshold == 0.0), "thresholds withheld from GetModel");
    let model = client.get_model(with_token(GetModelRequest { name: CHEST.into() })).await.unwrap().into_inner();
    assert!(model.detectors.iter().all(|d| d.threshold > 0.0));

    let mut oip = GrpcInferenceServiceClient::new(server.channel().await);
    let resp = oip.model_infer(oip_request(&flagged, &[])).await.unwrap().into_inner();
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "verdict"]);
    assert!(!resp.parameters.keys().any(|k| k.contains("score") || k.starts_with("medsentry.detector.")), "{:?}", resp.parameters.keys());
    assert!(!resp.parameters["medsentry.fired"].parameter_choice.as_ref().map(|c| format!("{c:?}")).unwrap_or_default().is_empty());
    let err = oip.model_infer(oip_request(&flagged, &["fused_score"])).await.unwrap_err();
    assert_eq!((err.code(), err.metadata().get("medsentry-reason").unwrap().to_str().unwrap()), (Code::InvalidArgument, "scores_withheld"));
    let resp = oip.model_infer(with_token(oip_request(&flagged, &[]))).await.unwrap().into_inner();
    assert_eq!(resp.outputs.len(), 4);
    assert!(resp.parameters.contains_key("medsentry.fused_score"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_name_what_fired_without_scores() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), &format!("[default]\naction = \"reject\"\n[disclosure]\nscore_token_sha256 = [\"{TOKEN_SHA256}\"]\n"));
    let server = TestServer::ready(&["--policy", &policy]).await;
    let mut client = server.client().await;
    let (_, flagged) = sample_pair();

    let err = client.screen(tensor_request("adv", vec![1, 64, 64], flagged.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("fired") && !err.message().contains("threshold") && !err.message().contains("score"), "{}", err.message());
    let info = err.get_details_error_info().unwrap();
    assert!(info.metadata.keys().all(|k| !k.ends_with(".score") && !k.ends_with(".threshold") && k != "fused_score"), "{:?}", info.metadata);
    assert!(info.metadata.iter().any(|(k, v)| k.ends_with(".fired") && v == "true"));

    let err = client.screen(with_token(tensor_request("adv", vec![1, 64, 64], flagged))).await.unwrap_err();
    assert!(err.message().contains("> threshold"), "{}", err.message());
    assert!(err.get_details_error_info().unwrap().metadata.contains_key("fused_score"));
    server.stop().await.unwrap();
}
