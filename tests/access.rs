//! Callers and what they may do, over real gRPC: the policy's [access] names callers by
//! bearer token (static, or a JWT checked against a local JWKS) or mTLS client certificate; unknown callers get UNAUTHENTICATED when the
//! policy requires one; each caller is held to its models and RPCs (PERMISSION_DENIED
//! naming what it may not call), sees scores only when its rule says so, and is counted
//! by name.

mod common;

use common::certs::{tls_channel, write_pem, Ca};
use common::*;
use medsentry::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use medsentry::proto::{self, sentry_client::SentryClient};
use sha2::{Digest, Sha256};
use tonic::Code;

const CHEST: &str = "chest-xray-pneumonia";
const MNIST: &str = "pneumoniamnist-28";

fn policy() -> String {
    let d = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        "[disclosure]\nscores = \"hidden\"\n\n[access]\nrequire_caller = true\n\n\
         [[access.callers]]\nname = \"pacs\"\ntoken_sha256 = [\"{}\"]\nmodels = [\"{CHEST}\"]\nrpcs = [\"Screen\", \"ListModels\"]\n\n\
         [[access.callers]]\nname = \"research\"\ntoken_sha256 = [\"{}\"]\nscores = true\n\n\
         [[access.callers]]\nname = \"gateway\"\nclient_cert_names = [\"pacs-gateway\"]\nmodels = [\"{MNIST}\"]\n",
        d("pacs-token"),
        d("research-token")
    )
}

fn with_token<T>(mut req: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn screen(model: &str) -> proto::ScreenRequest {
    let (_, refs) = references(CHEST);
    let size = if model == MNIST { 28 } else { 64 };
    let pixels = if size == 64 { refs[0].pixels.clone() } else { vec![0.5; 28 * 28] };
    let mut r = tensor_request("access", vec![1, 1, size, size], pixels);
    r.model = model.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_named_by_token_and_held_to_their_rules() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let p = write_policy(dir.path(), &policy());
    let server = TestServer::start(&["--policy", &p]).await;
    let mut client = SentryClient::new(server.channel().await);
    // Health stays open for probes; wait on it.
    server.wait_serving().await;
    let (_, before) = server.admin_get("/metrics");

    let err = client.screen(screen(CHEST)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.metadata().get("medsentry-reason").unwrap(), "unauthenticated");
    let err = client.screen(with_token(tonic::Request::new(screen(CHEST)), "guess")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let ok = client.screen(with_token(tonic::Request::new(screen(CHEST)), "pacs-token")).await.unwrap().into_inner();
    assert!(ok.screening.unwrap().scores_withheld, "pacs may not see scores");
    let err = client.screen(with_token(tonic::Request::new(screen(MNIST)), "pacs-token")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("pacs") && err.message().contains(MNIST), "{}", err.message());
    let err = client.get_model(with_token(tonic::Request::new(proto::GetModelRequest { name: CHEST.into() }), "pacs-token")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "GetModel is not among pacs's RPCs");
    let list = client.list_models(with_token(tonic::Request::new(proto::ListModelsRequest {}), "pacs-token")).await.unwrap().into_inner();
    assert_eq!(list.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), [CHEST], "a caller sees the models it may call");
    let mut oip = GrpcInferenceServiceClient::new(server.channel().await);
    let (_, refs) = references(CHEST);
    let err = oip.model_infer(with_token(tonic::Request::new(infer_request(CHEST, "x", &refs[0].pixels)), "pacs-token")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "ModelInfer is not among pacs's RPCs");

    let research = client.screen(with_token(tonic::Request::new(screen(MNIST)), "research-token")).await.unwrap().into_inner();
    assert!(!research.screening.unwrap().scores_withheld, "research's rule opens scores");

    let (_, after) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_access_refusals_total", &[("reason", "unauthenticated")]), 2.0);
    assert_eq!(delta(&before, &after, "medsentry_access_refusals_total", &[("reason", "not_allowed")]), 3.0);
    assert_eq!(delta(&before, &after, "medsentry_caller_requests_total", &[("caller", "pacs"), ("rpc", "Screen")]), 2.0);
    assert_eq!(delta(&before, &after, "medsentry_caller_requests_total", &[("caller", "research"), ("rpc", "Screen")]), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_caller() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (cert, key) = server_ca.issue(&["localhost"]);
    let w = |n: &str, t: &str| write_pem(dir.path(), n, t);
    let (c, k, ca, p) = (w("c.pem", &cert), w("k.pem", &key), w("ca.pem", &client_ca.pem()), write_policy(dir.path(), &policy()));
    let server = TestServer::start(&["--policy", &p, "--tls-cert", &c, "--tls-key", &k, "--tls-client-ca", &ca]).await;
    let (gw_cert, gw_key) = client_ca.issue(&["pacs-gateway"]);
    let (other_cert, other_key) = client_ca.issue(&["someone-else"]);
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(ch) = tls_channel(server.grpc, &server_ca.pem(), Some((&gw_cert, &gw_key))).await {
            if SentryClient::new(ch).screen(screen(MNIST)).await.is_ok() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "the gateway's certificate names it, and it may screen {MNIST}");
    let ch = tls_channel(server.grpc, &server_ca.pem(), Some((&gw_cert, &gw_key))).await.unwrap();
    assert_eq!(SentryClient::new(ch).screen(screen(CHEST)).await.unwrap_err().code(), Code::PermissionDenied, "but not {CHEST}");
    let ch = tls_channel(server.grpc, &server_ca.pem(), Some((&other_cert, &other_key))).await.unwrap();
    assert_eq!(SentryClient::new(ch).screen(screen(MNIST)).await.unwrap_err().code(), Code::Unauthenticated, "a certificate no rule names");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_records_name_the_caller_on_both_apis() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("quarantine");
    let p = write_policy(dir.path(), &format!("{}\n[default]\naction = \"quarantine\"\n\n[quarantine]\ndir = \"{}\"\n", policy(), store.display()));
    let server = TestServer::ready(&["--policy", &p]).await;
    let (_, flagged) = sample_pair();
    let mut client = SentryClient::new(server.channel().await);
    let mut req = tensor_request("from-pacs", vec![1, 1, 64, 64], flagged.clone());
    req.model = CHEST.into();
    client.screen(with_token(tonic::Request::new(req), "pacs-token")).await.expect("quarantined and annotated");
    // The store is content-addressed: a second copy needs other bytes (one pixel moved by 1e-3).
    let mut other = flagged.clone();
    other[0] = (other[0] + 1e-3).min(1.0) - if other[0] > 0.99 { 2e-3 } else { 0.0 };
    let mut oip = GrpcInferenceServiceClient::new(server.channel().await);
    oip.model_infer(with_token(tonic::Request::new(infer_request(CHEST, "from-research", &other)), "research-token")).await.expect("quarantined and annotated");
    let mut callers: Vec<String> = medsentry::quarantine::list_records(&store).unwrap().into_iter().map(|r| r.caller).collect();
    callers.sort();
    assert_eq!(callers, ["pacs", "research"]);
    server.stop().await.unwrap();
}

/// An RSA signing key made by OpenSSL (as an identity provider's would be), its JWK, and
/// RS256 tokens signed by OpenSSL.
struct Idp {
    key: std::path::PathBuf,
    kid: String,
}

impl Idp {
    fn new(dir: &std::path::Path, kid: &str) -> Idp {
        let key = dir.join(format!("{kid}.pem"));
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Idp { key, kid: kid.into() }
    }

    fn jwk(&self) -> serde_json::Value {
        let out = std::process::Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&self.key).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let modulus = hex::decode(text.trim().trim_start_matches("Modulus=")).unwrap();
        serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": b64url(&modulus), "e": "AQAB"})
    }

    fn token(&self, claims: serde_json::Value) -> String {
        use std::io::Write;
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let message = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
        let sig = child.wait_with_output().unwrap().stdout;
        format!("{message}.{}", b64url(&sig))
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_from_a_local_jwks_name_callers_and_a_reload_rotates_the_keys() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Idp::new(dir.path(), "2026-11"), Idp::new(dir.path(), "2026-12"));
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [old.jwk()]}).to_string()).unwrap();
    let p = write_policy(
        dir.path(),
        &format!(
            "[access]\nrequire_caller = true\n\n[access.jwt]\njwks_file = {:?}\nissuer = \"https://idp.hospital.example/realms/radiology\"\naudience = \"medsentry\"\n\n\
             [[access.callers]]\nname = \"pacs\"\njwt_subjects = [\"service-account-pacs\"]\nmodels = [\"{CHEST}\"]\nrpcs = [\"Screen\"]\n\n\
             [[access.callers]]\nname = \"ops\"\njwt_subjects = [\"service-account-ops\"]\nrpcs = [\"Reload\"]\n",
            jwks.display().to_string()
        ),
    );
    let server = TestServer::ready(&["--policy", &p]).await;
    let client = SentryClient::new(server.channel().await);
    let claims = |patch: serde_json::Value| {
        let mut c = serde_json::json!({"iss": "https://idp.hospital.example/realms/radiology", "aud": ["account", "medsentry"],
            "sub": "service-account-pacs", "iat": now(), "exp": now() + 300});
        c.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        c
    };
    let call = |token: String, model: &str| {
        let mut c = client.clone();
        let req = with_token(tonic::Request::new(screen(model)), &token);
        async move { c.screen(req).await.map(|_| ()).map_err(|e| (e.code(), e.message().to_string())) }
    };
    let (_, before) = server.admin_get("/metrics");
    call(old.token(claims(serde_json::json!({}))), CHEST).await.expect("a valid token names pacs");
    let denied = call(old.token(claims(serde_json::json!({}))), MNIST).await.unwrap_err();
    assert_eq!(denied.0, Code::PermissionDenied, "{denied:?}");
    for (patch, says) in [
        (serde_json::json!({"exp": now() - 3600}), "expired"),
        (serde_json::json!({"aud": "medsentry-test"}), "audience"),
        (serde_json::json!({"iss": "https://elsewhere.example"}), "issuer"),
        (serde_json::json!({"sub": "someone-else"}), "names no caller"),
    ] {
        let (code, message) = call(old.token(claims(patch)), CHEST).await.unwrap_err();
        assert_eq!(code, Code::Unauthenticated, "{message}");
        assert!(message.contains(says), "{says}: {message}");
    }
    let (code, message) = call(new.token(claims(serde_json::json!({}))), CHEST).await.unwrap_err();
    assert!(code == Code::Unauthenticated && message.contains("signature"), "a key the JWKS does not hold: {message}");
    let (_, after) = server.admin_get("/metrics");
    assert_eq!(delta(&before, &after, "medsentry_caller_requests_total", &[("caller", "pacs"), ("rpc", "Screen")]), 2.0);

    // Rotation as identity providers do it: the new key published beside the old one, then
    // the old one withdrawn; each step a reload by the ops account.
    let admin = server.admin;
    let reload = |token: Option<String>| async move {
        let header = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        tokio::task::spawn_blocking(move || http_post(admin, "/reload", &header)).await.unwrap()
    };
    let ops = |idp: &Idp| idp.token(claims(serde_json::json!({"sub": "service-account-ops"})));
    assert_eq!(reload(None).await.0, 401, "the policy requires a caller for Reload too");
    assert_eq!(reload(Some(old.token(claims(serde_json::json!({}))))).await.0, 403, "pacs's rule does not list Reload");
    std::fs::write(&jwks, serde_json::json!({"keys": [old.jwk(), new.jwk()]}).to_string()).unwrap();
    let (code, body) = reload(Some(ops(&old))).await;
    assert_eq!(code, 200, "{body}");
    call(new.token(claims(serde_json::json!({}))), CHEST).await.expect("the new key's tokens are accepted");
    call(old.token(claims(serde_json::json!({}))), CHEST).await.expect("and the old key's, until it is withdrawn");
    std::fs::write(&jwks, serde_json::json!({"keys": [new.jwk()]}).to_string()).unwrap();
    let (code, body) = reload(Some(ops(&new))).await;
    assert_eq!(code, 200, "{body}");
    let (code, message) = call(old.token(claims(serde_json::json!({}))), CHEST).await.unwrap_err();
    assert!(code == Code::Unauthenticated && message.contains("signature"), "the withdrawn key's tokens are refused: {message}");
    server.stop().await.unwrap();
}
