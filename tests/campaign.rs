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
    // The campaign alarm itself comes from the shared perturbation.
    assert!(last.alarm && last.shared_perturbation_alarm);
    server.stop().await.unwrap();
}

/// The patient of a Kermany chest X-ray file (person<N>_, NORMAL2-IM-<N>, IM-<N>), as
/// models/training/medsentry_training/campaign.py groups them.
fn patient(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap();
    if let Some(rest) = base.strip_prefix("person") {
        return format!("person{}", rest.split('_').next().unwrap());
    }
    let parts: Vec<&str> = base.split('-').collect();
    parts[..if base.starts_with("NORMAL2-") { 3 } else { 2 }].join("-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clean_official_test_set_in_file_order_and_grouped_by_patient_raises_no_campaign_alarm() {
    let _serial = serial().await;
    let mut files: Vec<String> = std::fs::read_dir(data("chest_xray_kermany/images/test/NORMAL"))
        .unwrap()
        .chain(std::fs::read_dir(data("chest_xray_kermany/images/test/PNEUMONIA")).unwrap())
        .map(|e| {
            let p = e.unwrap().path();
            format!("images/test/{}/{}", p.parent().unwrap().file_name().unwrap().to_string_lossy(), p.file_name().unwrap().to_string_lossy())
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 624);
    let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for f in &files {
        groups.entry(patient(f)).or_default().push(f.clone());
    }
    let keys: Vec<String> = groups.keys().cloned().collect();
    let grouped: Vec<String> = shuffled(&keys, 11).iter().flat_map(|k| groups[k].clone()).collect();
    let spec = chest_spec();
    for (order, list) in [("file order", &files), ("grouped by patient", &grouped)] {
        // A fresh server per order: the monitor's windows start empty.
        let server = TestServer::ready(&[]).await;
        let inputs: Vec<Vec<f32>> = list.iter().map(|f| model_pixels(f, &spec)).collect();
        let states = screen_stream(&server, &inputs).await;
        // (Over full windows: the first answers average only a few pairs.)
        let max_res = states.iter().skip(40).map(|c| c.shared_perturbation_score).fold(0f32, f32::max);
        let drifted = states.iter().filter(|c| c.class_mix_alarm).count();
        eprintln!("{order}: {} patients, max shared-perturbation score {max_res:.4}, class mix drifted on {drifted} answers", groups.len());
        assert!(states.iter().all(|c| !c.alarm && !c.shared_perturbation_alarm), "{order}: campaign alarm on clean traffic (max score {max_res})");
        if order == "file order" {
            // 234 NORMAL then 390 PNEUMONIA: the drift is reported, as drift.
            assert!(drifted > 0, "a window of one class is a drifted mix");
        }
        server.stop().await.unwrap();
    }
}

fn metrics_now() -> String {
    medsentry::metrics::render()
}

/// The campaign residual and window score against the pipeline's own numbers
/// (tests/fixtures/campaign/residual_parity.json, written by
/// models/training/tests/make_campaign_parity.py from campaign.residuals / window_score):
/// the same residual vectors, and the monitor's score as its window fills.
#[test]
fn residuals_and_window_scores_match_the_pipeline() {
    use medsentry::bundle::CampaignSpec;
    use medsentry::defense::campaign::{residual, CampaignMonitor};
    let text = std::fs::read_to_string(repo().join("tests/fixtures/campaign/residual_parity.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (_, refs) = references(MODEL);
    let uap = perturbation(UAP_NONTARGETED);
    let residuals: Vec<Vec<f32>> = refs.iter().map(|r| residual(&add_clipped(&r.pixels, &uap), 64, 64)).collect();
    for (i, row) in want["residuals"].as_array().unwrap().iter().enumerate() {
        let row: Vec<f64> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(row.len(), residuals[i].len());
        let worst = row.iter().zip(&residuals[i]).map(|(a, b)| (a - *b as f64).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "residual {i}: largest difference {worst}");
    }
    let spec = CampaignSpec {
        residual_window: residuals.len(),
        residual_threshold: 1.0,
        class_mix_window: 10,
        class_mix_threshold: 1e9,
        reference_class_mix: vec![0.5, 0.5],
    };
    let monitor = CampaignMonitor::new("parity", spec);
    let scores = want["window_scores"].as_object().unwrap();
    for (n, r) in residuals.into_iter().enumerate() {
        let status = monitor.observe(r, 0);
        if let Some(w) = scores.get(&(n + 1).to_string()) {
            let w = w.as_f64().unwrap();
            assert!((status.residual_score as f64 - w).abs() < 1e-5, "window of {}: {} vs the pipeline's {w}", n + 1, status.residual_score);
        }
    }
    assert_eq!(scores.len(), 7, "windows of 2 to 8 residuals compared");
}
