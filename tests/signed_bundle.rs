//! Signed bundles: with --trusted-key the real server serves a bundle signed by
//! `medsentry bundle sign` (or by OpenSSL alone), and refuses at start-up, naming why, an
//! unsigned bundle, a bundle whose model and checksum were edited together after signing,
//! one signed with another key, and the embedded bundle; a reload refuses the same.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use medsentry::bundle::{self, BundleError, TrustedKey};

const MODEL: &str = "pneumoniamnist-28";

fn medsentry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medsentry")).args(args).output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// `bundle keygen`: (private key, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    ok(medsentry(&["bundle", "keygen", "--out", prefix.to_str().unwrap()]));
    (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")))
}

fn sign(key: &Path, bundle: &Path) {
    ok(medsentry(&["bundle", "sign", "--key", key.to_str().unwrap(), bundle.to_str().unwrap()]));
}

async fn start_error(models_dir: &Path, public: &Path) -> String {
    let server = TestServer::start(&["--models-dir", models_dir.to_str().unwrap(), "--trusted-key", public.to_str().unwrap()]).await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), server.task).await.unwrap().unwrap().unwrap_err();
    format!("{err:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bundle_is_served_and_an_unsigned_one_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keygen(keys.path(), "release");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o077, 0, "the private key is readable by its owner only");
    }
    let again = medsentry(&["bundle", "keygen", "--out", keys.path().join("release").to_str().unwrap()]);
    assert!(!again.status.success(), "keygen never overwrites a key");

    let models = tempfile::tempdir().unwrap();
    let dir = copy_bundle(models.path(), MODEL);
    let unsigned = start_error(models.path(), &public).await;
    assert!(unsigned.contains(MODEL) && unsigned.contains("not signed"), "{unsigned}");

    sign(&private, &dir);
    let verified = ok(medsentry(&["bundle", "verify", "--trusted-key", public.to_str().unwrap(), dir.to_str().unwrap()]));
    assert!(verified.contains("signature verified"), "{verified}");
    let server = TestServer::ready(&["--models-dir", models.path().to_str().unwrap(), "--trusted-key", public.to_str().unwrap()]).await;
    let mut client = server.client().await;
    let mut request = image_request("signed", std::fs::read(data("chest_xray_kermany/images/test/NORMAL/IM-0001-0001.jpeg")).unwrap());
    request.model = MODEL.into();
    let reply = client.screen(request).await.expect("a signed bundle serves").into_inner();
    assert_eq!(reply.model.map(|m| m.name).as_deref(), Some(MODEL));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_and_checksum_edited_together_after_signing_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keygen(keys.path(), "release");
    let models = tempfile::tempdir().unwrap();
    let dir = copy_bundle(models.path(), MODEL);
    sign(&private, &dir);
    // What the checksums alone cannot catch: a new model and its sha256 written together.
    let mut onnx = std::fs::read(dir.join("classifier.onnx")).unwrap();
    let last = onnx.len() - 1;
    onnx[last] ^= 0x01;
    let old = sha256_hex(&std::fs::read(dir.join("classifier.onnx")).unwrap());
    std::fs::write(dir.join("classifier.onnx"), &onnx).unwrap();
    let toml = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    assert!(toml.contains(&old));
    std::fs::write(dir.join("bundle.toml"), toml.replace(&old, &sha256_hex(&onnx))).unwrap();
    assert!(bundle::Bundle::load_dir(&dir, &[]).is_ok(), "without a trusted key the edit passes the checksums");

    let err = start_error(models.path(), &public).await;
    assert!(err.contains("signature refused") && err.contains("changed after signing"), "{err}");
    let cli = medsentry(&["bundle", "verify", "--trusted-key", public.to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(!cli.status.success(), "bundle verify fails on the edited bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_with_another_key_is_refused_and_rotation_trusts_both() {
    let keys = tempfile::tempdir().unwrap();
    let (old_private, old_public) = keygen(keys.path(), "old");
    let (_, new_public) = keygen(keys.path(), "new");
    let models = tempfile::tempdir().unwrap();
    let dir = copy_bundle(models.path(), MODEL);
    sign(&old_private, &dir);
    let err = start_error(models.path(), &new_public).await;
    assert!(err.contains("signature refused") && err.contains("new.pub"), "{err}");
    let both = [TrustedKey::load(&new_public).unwrap(), TrustedKey::load(&old_public).unwrap()];
    let b = bundle::Bundle::load_dir(&dir, &both).expect("trusted by the old key while both are trusted");
    assert_eq!(b.signed_by.as_deref(), Some(both[1].fingerprint().as_str()));
}

#[test]
fn keys_and_signatures_made_by_openssl_alone_are_accepted() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = (keys.path().join("key.pem"), keys.path().join("pub.pem"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl is on the machine");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", private.to_str().unwrap()]);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let models = tempfile::tempdir().unwrap();
    let dir = copy_bundle(models.path(), MODEL);
    let trusted = [TrustedKey::load(&public).unwrap()];
    let manifest = dir.join("bundle.toml");
    let sig = dir.join(bundle::SIGNATURE_FILE);
    openssl(&["pkeyutl", "-sign", "-rawin", "-inkey", private.to_str().unwrap(), "-in", manifest.to_str().unwrap(), "-out", sig.to_str().unwrap()]);
    bundle::Bundle::load_dir(&dir, &trusted).expect("an OpenSSL signature verifies");
    // And the other way round: our signature with OpenSSL's key verifies under OpenSSL.
    std::fs::remove_file(&sig).unwrap();
    sign(&private, &dir);
    openssl(&[
        "pkeyutl",
        "-verify",
        "-rawin",
        "-pubin",
        "-inkey",
        public.to_str().unwrap(),
        "-in",
        manifest.to_str().unwrap(),
        "-sigfile",
        sig.to_str().unwrap(),
    ]);
}

#[test]
fn the_embedded_bundle_is_refused_when_keys_are_trusted() {
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keygen(keys.path(), "release");
    let missing = keys.path().join("no-models-here");
    let err = bundle::load_all(&missing, &[TrustedKey::load(&public).unwrap()]).unwrap_err();
    assert!(matches!(err, BundleError::EmbeddedUnsigned), "{err}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_an_unsigned_bundle_and_keeps_serving() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keygen(keys.path(), "release");
    let models = tempfile::tempdir().unwrap();
    sign(&private, &copy_bundle(models.path(), MODEL));
    let server = TestServer::ready(&["--models-dir", models.path().to_str().unwrap(), "--trusted-key", public.to_str().unwrap()]).await;

    // Added unsigned, then signed: refused, then served.
    let derm = copy_bundle(models.path(), "dermoscopy-isic2018");
    let admin = server.admin;
    let post = move || tokio::task::spawn_blocking(move || http_post(admin, "/reload", ""));
    let (code, body) = post().await.unwrap();
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("dermoscopy-isic2018") && body.contains("not signed"), "{body}");
    let mut client = server.client().await;
    let listed = client.list_models(medsentry::proto::ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(listed.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), [MODEL], "the refused reload changed nothing");
    sign(&private, &derm);
    let (code, body) = post().await.unwrap();
    assert!(code == 200 && body.contains("dermoscopy-isic2018"), "{code} {body}");
    // Edited after signing: refused at reload too.
    let toml = derm.join("bundle.toml");
    std::fs::write(&toml, std::fs::read_to_string(&toml).unwrap().replacen("version = ", "# edited\nversion = ", 1)).unwrap();
    let (code, body) = post().await.unwrap();
    assert!(code == 500 && body.contains("signature"), "{code} {body}");
    server.stop().await.unwrap();
}
