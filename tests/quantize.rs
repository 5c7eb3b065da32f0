//! The bundle's `[input] quantize_bits`: the sidecar rounds every model-space input to the
//! grid its detectors were calibrated on before anything reads it, so the same picture sent
//! as float pixels, as 8-bit pixels at the model's size, or with a perturbation smaller
//! than half a grid step gets one answer; without the key nothing is rounded; a value out
//! of range is refused when the bundle loads.

mod common;

use common::*;
use medsentry::bundle::Bundle;
use medsentry::proto::ScreenResponse;

const MODEL: &str = "chest-xray-pneumonia";

/// Multiples of 1/255, half up: what an 8-bit client sends.
fn to_8_bits(pixels: &[f32]) -> Vec<f32> {
    pixels.iter().map(|v| (v * 255.0 + 0.5).floor().clamp(0.0, 255.0) / 255.0).collect()
}

/// `pixels` (on the 8-bit grid) moved by +-0.4/255 in a fixed pattern, kept in [0, 1] (the
/// sidecar refuses other tensors): off the grid, but nearest to the same grid points.
fn sub_step_noise(pixels: &[f32]) -> Vec<f32> {
    pixels.iter().enumerate().map(|(i, v)| (v + if (i * 7919) % 3 == 0 { 0.4 } else { -0.4 } / 255.0).clamp(0.0, 1.0)).collect()
}

/// (probabilities, every detector's score) of one tensor screened by `model`.
async fn answer(server: &TestServer, model: &str, pixels: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut client = server.client().await;
    let mut req = tensor_request("q", vec![1, 1, 64, 64], pixels.to_vec());
    req.model = model.into();
    let resp: ScreenResponse = client.screen(req).await.unwrap().into_inner();
    let probs = resp.probabilities.iter().map(|p| p.probability).collect();
    let scores = resp.screening.unwrap().detectors.iter().map(|d| d.score).collect();
    (probs, scores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_8_bit_and_sub_step_copies_of_an_image_get_one_answer() {
    assert_eq!(Bundle::load_dir(&repo().join("models").join(MODEL), &[]).unwrap().manifest.input.quantize_bits, Some(8));
    let server = TestServer::ready(&[]).await;
    let (_, refs) = references(MODEL);
    for r in &refs {
        // r.pixels: the pipeline's area resize of a real X-ray, floating point (off the grid).
        let eight = to_8_bits(&r.pixels);
        assert!(r.pixels.iter().zip(&eight).any(|(a, b)| a != b), "{}: the float pixels are off the grid", r.file);
        let float = answer(&server, MODEL, &r.pixels).await;
        assert_eq!(float, answer(&server, MODEL, &eight).await, "{}: float vs 8-bit", r.file);
        assert_eq!(float, answer(&server, MODEL, &sub_step_noise(&eight)).await, "{}: +-0.4/255 is erased", r.file);
        // ...and it is the answer the pipeline computed for the rounded input (reference.json).
        for (a, b) in float.0.iter().zip(&r.probabilities) {
            assert!((a - b).abs() < 1e-4, "{}: sidecar {:?} vs pipeline {:?}", r.file, float.0, r.probabilities);
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quantize_bits_the_sub_step_perturbation_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_bundle(tmp.path(), MODEL);
    let toml = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    assert!(toml.contains("quantize_bits = 8\n"));
    std::fs::write(dir.join("bundle.toml"), toml.replacen("quantize_bits = 8\n", "", 1)).unwrap();
    let server = TestServer::ready(&["--models-dir", tmp.path().to_str().unwrap()]).await;
    let (_, refs) = references(MODEL);
    let eight = to_8_bits(&refs[0].pixels);
    let (on_grid, off_grid) = (answer(&server, MODEL, &eight).await, answer(&server, MODEL, &sub_step_noise(&eight)).await);
    assert_ne!(on_grid.0, off_grid.0, "unrounded, the classifier reads the +-0.4/255 pattern");
    server.stop().await.unwrap();
}

#[test]
fn quantize_bits_out_of_range_is_refused_at_load() {
    for bad in ["0", "17"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_bundle(tmp.path(), MODEL);
        let toml = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
        std::fs::write(dir.join("bundle.toml"), toml.replacen("quantize_bits = 8", &format!("quantize_bits = {bad}"), 1)).unwrap();
        let err = Bundle::load_dir(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("quantize_bits") && err.contains("1..=16"), "{err}");
    }
}
