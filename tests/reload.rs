//! Hot reload through the real server: `POST /reload` on the admin port re-reads the models
//! folder and the policy while clients keep calling. A bundle added, a policy changed, a
//! bundle replaced (new workers warmed before the swap) and a bundle removed cost no failed
//! call; a replaced bundle of the same classifier keeps its campaign windows; a bundle that
//! no longer verifies is refused with a metric while the previous set keeps serving; only a
//! caller the policy lets `Reload` may reload. SIGHUP does the same in the real binary.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use medsentry::proto::{self, GetModelRequest, ListModelsRequest};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

const MNIST: &str = "pneumoniamnist-28";
const DERM: &str = "dermoscopy-isic2018";

fn request(id: &str) -> proto::ScreenRequest {
    let (_, refs) = references(MNIST);
    let mut r = tensor_request(id, vec![1, 1, 28, 28], refs[0].pixels.clone());
    r.model = MNIST.into();
    r
}

/// Clients calling Screen until stopped; counts answers and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(client: &proto::sentry_client::SentryClient<Channel>, callers: usize) -> Load {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..callers)
            .map(|i| {
                let (mut c, stop, ok) = (client.clone(), stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match c.screen(request(&format!("load-{i}-{n}"))).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.push(format!("{:?}: {}", e.code(), e.message()));
                                0
                            }
                        };
                        n += 1;
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    /// Stops the clients; (calls answered, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

async fn reload(admin: std::net::SocketAddr, headers: &str) -> (u16, serde_json::Value, String) {
    let headers = headers.to_string();
    let (code, body) = tokio::task::spawn_blocking(move || http_post(admin, "/reload", &headers)).await.unwrap();
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null), body)
}

fn set_version(bundle: &std::path::Path, version: &str) {
    let path = bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.starts_with("version = ")).unwrap().to_string();
    std::fs::write(&path, text.replacen(&line, &format!("version = \"{version}\""), 1)).unwrap();
}

async fn version(client: &mut proto::sentry_client::SentryClient<Channel>, model: &str) -> Result<String, tonic::Code> {
    client.get_model(GetModelRequest { name: model.into() }).await.map(|r| r.into_inner().version).map_err(|e| e.code())
}

async fn class_mix_score(client: &mut proto::sentry_client::SentryClient<Channel>, id: &str) -> f32 {
    let resp = client.screen(request(id)).await.unwrap().into_inner();
    resp.screening.and_then(|s| s.campaign).expect("the bundle has a campaign monitor").class_mix_score
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_adds_replaces_and_removes_bundles_without_failed_calls() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let mnist = copy_bundle(&models, MNIST);
    let policy = write_policy(dir.path(), "");
    let server = TestServer::ready(&["--models-dir", models.to_str().unwrap(), "--policy", &policy]).await;
    let mut client = server.client().await;
    let one_observation = class_mix_score(&mut client, "first").await;

    // A bundle added and the policy changed while clients call.
    let load = Load::start(&client, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    copy_bundle(&models, DERM);
    write_policy(dir.path(), &format!("[models.\"{MNIST}\"]\nflag_on = \"suspicious\"\n"));
    let (code, changes, body) = reload(server.admin, "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(changes["added"], serde_json::json!([DERM]), "{body}");
    assert_eq!(changes["policy_changed"], serde_json::json!([MNIST]), "{body}");
    let listed = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(listed.len(), 2);
    assert_eq!(server.health_status(DERM).await, 1, "an added model is SERVING once warm");
    let (answered, failures) = load.finish().await;
    assert!(failures.is_empty() && answered > 0, "{answered} answered, failures: {failures:?}");

    // The same classifier in a changed bundle: new workers, the campaign windows go on.
    let before = class_mix_score(&mut client, "before").await;
    assert!(before > 5.0 * one_observation, "windows filled by the load: {before} vs {one_observation}");
    set_version(&mnist, "1.0.1-reload");
    let (code, changes, body) = reload(server.admin, "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(changes["replaced"], serde_json::json!([MNIST]), "{body}");
    assert_eq!(changes["campaign_kept"], serde_json::json!([MNIST]), "{body}");
    assert_eq!(version(&mut client, MNIST).await.unwrap(), "1.0.1-reload");
    let after = class_mix_score(&mut client, "after").await;
    assert!(after >= before, "class-mix window kept across the reload: {after} < {before}");

    // Replaced again under load; then a bundle that no longer verifies is refused.
    let load = Load::start(&client, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_version(&mnist, "1.0.2-reload");
    let (code, changes, body) = reload(server.admin, "").await;
    assert_eq!((code, &changes["replaced"]), (200, &serde_json::json!([MNIST])), "{body}");
    let before_bad = server.admin_get("/metrics").1;
    let mut detector = std::fs::read(mnist.join("detector_logreg.json")).unwrap();
    detector.push(b' ');
    std::fs::write(mnist.join("detector_logreg.json"), &detector).unwrap();
    let (code, _, body) = reload(server.admin, "").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("detector_logreg.json") && body.contains("still serving"), "{body}");
    let after_bad = server.admin_get("/metrics").1;
    assert_eq!(delta(&before_bad, &after_bad, "medsentry_reloads_total", &[("result", "failed")]), 1.0);
    assert_eq!(metric(&after_bad, "medsentry_last_reload_successful", &[]), 0.0);
    assert_eq!(version(&mut client, MNIST).await.unwrap(), "1.0.2-reload", "the previous bundle keeps serving");
    let (answered, failures) = load.finish().await;
    assert!(failures.is_empty() && answered > 0, "{answered} answered, failures: {failures:?}");

    // Repaired, and the added bundle taken away again.
    detector.pop();
    std::fs::write(mnist.join("detector_logreg.json"), &detector).unwrap();
    std::fs::remove_dir_all(models.join(DERM)).unwrap();
    let (code, changes, body) = reload(server.admin, "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!((&changes["removed"], &changes["unchanged"]), (&serde_json::json!([DERM]), &serde_json::json!([MNIST])), "{body}");
    assert_eq!(version(&mut client, DERM).await, Err(tonic::Code::NotFound));
    assert_eq!(server.health_status(DERM).await, -1, "a removed model is unknown to health");
    assert_eq!(metric(&server.admin_get("/metrics").1, "medsentry_last_reload_successful", &[]), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_caller_the_policy_names_for_reload_may_reload() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_bundle(&models, MNIST);
    let d = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let policy = write_policy(
        dir.path(),
        &format!(
            "[access]\nrequire_caller = true\n\n[[access.callers]]\nname = \"ops\"\ntoken_sha256 = [\"{}\"]\nrpcs = [\"Reload\"]\n\n\
             [[access.callers]]\nname = \"pacs\"\ntoken_sha256 = [\"{}\"]\nrpcs = [\"*\"]\n",
            d("ops-token"),
            d("pacs-token")
        ),
    );
    let server = TestServer::ready(&["--models-dir", models.to_str().unwrap(), "--policy", &policy]).await;
    assert_eq!(reload(server.admin, "").await.0, 401, "no token, and the policy requires a caller");
    assert_eq!(reload(server.admin, "Authorization: Bearer nope\r\n").await.0, 401);
    assert_eq!(reload(server.admin, "Authorization: Bearer pacs-token\r\n").await.0, 403, "`*` does not include Reload");
    let (code, changes, body) = reload(server.admin, "Authorization: Bearer ops-token\r\n").await;
    assert_eq!((code, &changes["unchanged"]), (200, &serde_json::json!([MNIST])), "{body}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_bundle(&models, MNIST);
    let server = common::capped::CappedServer::start_in(&models, 8 << 30, &[]).await;
    let mut client = server.client().await;
    copy_bundle(&models, DERM);
    server.signal(libc::SIGHUP);
    let mut listed = 0;
    for _ in 0..600 {
        listed = client.list_models(ListModelsRequest {}).await.expect("the server keeps serving through SIGHUP").into_inner().models.len();
        if listed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, 2, "SIGHUP added the new bundle");
    assert_eq!(metric(&http_get(server.admin, "/metrics").1, "medsentry_reloads_total", &[("result", "ok")]), 1.0);
    client.screen(request("after-hup")).await.expect("screens after the reload");
}

/// Reloads under load for MEDSENTRY_RELOAD_SOAK_SECS (15 in the suite; the README runs it
/// for 10 minutes on the release build): every second the bundle is replaced (a new version:
/// new workers, warmed, swapped) or the policy flipped, while 8 callers screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_soak_answers_every_call() {
    let _serial = serial().await;
    let secs: u64 = std::env::var("MEDSENTRY_RELOAD_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let mnist = copy_bundle(&models, MNIST);
    let policy = write_policy(dir.path(), "");
    let server = TestServer::ready(&["--models-dir", models.to_str().unwrap(), "--policy", &policy]).await;
    let load = Load::start(&server.client().await, 8);
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut reloads = 0;
    while std::time::Instant::now() < until {
        if reloads % 2 == 0 {
            set_version(&mnist, &format!("2.0.{reloads}"));
        } else {
            write_policy(dir.path(), if reloads % 4 == 1 { "[default]\nflag_on = \"suspicious\"\n" } else { "" });
        }
        let (code, _, body) = reload(server.admin, "").await;
        assert_eq!(code, 200, "{body}");
        reloads += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (answered, failures) = load.finish().await;
    eprintln!("reload soak: {secs} s, {reloads} reloads, {answered} calls answered, {} failed", failures.len());
    assert!(failures.is_empty() && answered > 0, "{answered} answered, failures: {:?}", &failures[..failures.len().min(5)]);
    server.stop().await.unwrap();
}
