//! The campaign monitor over real gRPC: quiet on a clean AdvTest stream, alarmed by streams
//! of images that carry the bundle's own universal perturbations (committed by the
//! pipeline's campaign stage under tests/fixtures/campaign).

mod common;

use common::*;
use medsentry::proto::Campaign;

const MODEL: &str = "chest-xray-pneumonia";
const UAP_NONTARGETED: &str = "chest-xray-pneumonia__uap__linf_z4";
const UAP_TO_NORMAL: &str = "chest-xray-pneumonia__uap_to0__l2_z4";

/// Clean AdvTest images in a fixed random order, as [0, 1] model-size tensors.
fn clean_stream() -> Vec<Vec<f32>> {
    let files: Vec<String> = eval_fixture()["clean_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    let spec = chest_spec();
    shuffled(&files, 7).iter().map(|f| model_pixels(f, &spec)).collect()
}

/// Screens each tensor in order (one at a time: the monitor sees the stream's order) and
/// returns the campaign state of every answer.
async fn screen_stream(server: &TestServer, inputs: &[Vec<f32>]) -> Vec<Campaign> {
    let mut client = server.client().await;
    let mut out = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let resp = client.screen(tensor_request(&format!("r{i}"), vec![1, 64, 64], x.clone())).await.unwrap().into_inner();
        out.push(resp.screening.unwrap().campaign.expect("the chest bundle has a [campaign] calibration"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_traffic_stays_quiet() {
    let _serial = serial().await;
    let before = metrics_now();
    let server = TestServer::ready(&[]).await;
    let states = screen_stream(&server, &clean_stream()).await;
    let alarms = states.iter().filter(|c| c.alarm).count();
    let max_res = states.iter().map(|c| c.shared_perturbation_score).fold(0f32, f32::max);
    assert_eq!(alarms, 0, "clean AdvTest stream raised {alarms} alarms (max residual score {max_res})");
    let (_, m) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &m, "medsentry_campaign_alarms_total", &[("model", MODEL)]), 0.0);
    assert_eq!(metric(&m, "medsentry_campaign_alarm", &[("model", MODEL), ("signal", "shared_perturbation")]), 0.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_universal_perturbation_campaign_raises_the_shared_perturbation_alarm() {
    let _serial = serial().await;
    let before = metrics_now();
    let server = TestServer::ready(&[]).await;
    let uap = perturbation(UAP_NONTARGETED);
    // 20 clean requests, then every request carries the same perturbation.
    let clean = clean_stream();
    let mut stream: Vec<Vec<f32>> = clean[..20].to_vec();
    stream.extend(clean[20..120].iter().map(|x| add_clipped(x, &uap)));
    let states = screen_stream(&server, &stream).await;
    assert!(states[..20].iter().all(|c| !c.shared_perturbation_alarm));
    let first = states.iter().position(|c| c.shared_perturbation_alarm).expect("the campaign is noticed");
    // The window (32) must fill with perturbed inputs before the mean crosses the threshold.
    assert!(first < 20 + 32, "alarm only after {first} requests");
    assert!(states[first..].iter().all(|c| c.shared_perturbation_alarm && c.alarm), "the alarm holds while the campaign lasts");
    let (_, m) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &m, "medsentry_campaign_alarms_total", &[("model", MODEL), ("signal", "shared_perturbation")]), 1.0, "one alarm episode");
    assert_eq!(metric(&m, "medsentry_campaign_alarm", &[("model", MODEL), ("signal", "shared_perturbation")]), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_campaign_shifts_the_class_mix() {
    let _serial = serial().await;
    let server = TestServer::ready(&[]).await;
    let uap = perturbation(UAP_TO_NORMAL);
    let stream: Vec<Vec<f32>> = clean_stream().iter().map(|x| add_clipped(x, &uap)).collect();
    let states = screen_stream(&server, &stream).await;
    let last = states.last().unwrap();
    assert!(last.class_mix_alarm, "class mix chi-square {} after {} targeted inputs", last.class_mix_score, states.len());
    assert!(states[..199].iter().all(|c| !c.class_mix_alarm), "no class-mix alarm before its window (200) is full");
    server.stop().await.unwrap();
}

fn metrics_now() -> String {
    medsentry::metrics::render()
}
