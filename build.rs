//! Build script: generates the gRPC code from proto/ (medsentry.v1, the Open Inference
//! Protocol and OTLP traces), fetches the ONNX Runtime library the sidecar loads at run time, and embeds
//! the default model bundle into the binary.
//!
//! ONNX Runtime: `ort` is used with `load-dynamic`, so the library is opened at start-up.
//! Unless `ORT_DYLIB_PATH` is set, the library is taken from the `onnxruntime` wheel of the
//! Python package index (fetched once with pip, extracted under `target/`), and its path is
//! compiled in as the default. When that fails the build still succeeds with a warning and
//! the sidecar refuses to start with a message that says how to provide the library.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const ORT_VERSION: &str = "1.31.1";
const DEFAULT_BUNDLE: &str = "chest-xray-pneumonia";

fn main() {
    compile_protos();
    let ort = locate_onnxruntime();
    println!("cargo:rustc-env=MEDSENTRY_BUNDLED_ORT={}", ort.map(|p| p.display().to_string()).unwrap_or_default());
    embed_default_bundle();
}

fn compile_protos() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // SAFETY: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("medsentry_descriptor.bin"))
        .compile_protos(&["proto/medsentry/v1/sentry.proto"], &["proto"])
        .expect("compiling proto/medsentry/v1/sentry.proto");
    // Open Inference Protocol: server (api::oip) and client (proxy mode's upstream).
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_protos(&["proto/inference/grpc_predict_v2.proto"], &["proto"])
        .expect("compiling proto/inference/grpc_predict_v2.proto");
    // OpenTelemetry's OTLP trace service (proto/opentelemetry, the project's official
    // protobufs, unchanged): the client exports spans (trace::export); tests run the server
    // as their receiver.
    tonic_prost_build::configure()
        .compile_protos(&["proto/opentelemetry/proto/collector/trace/v1/trace_service.proto"], &["proto"])
        .expect("compiling the OTLP trace service protos");
    println!("cargo:rerun-if-changed=proto");
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("target"),
    }
}

fn locate_onnxruntime() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    println!("cargo:rerun-if-env-changed=MEDSENTRY_SKIP_ORT_FETCH");
    let dir = target_dir().join(format!("onnxruntime-{ORT_VERSION}"));
    let lib = dir.join(format!("libonnxruntime.so.{ORT_VERSION}"));
    println!("cargo:rerun-if-changed={}", lib.display());
    if lib.exists() {
        return Some(lib);
    }
    if env::var_os("MEDSENTRY_SKIP_ORT_FETCH").is_some() {
        return None;
    }
    match fetch_wheel(&dir) {
        Ok(()) if lib.exists() => Some(lib),
        Ok(()) => {
            println!("cargo:warning=onnxruntime wheel fetched but {} is missing; set ORT_DYLIB_PATH", lib.display());
            None
        }
        Err(e) => {
            println!(
                "cargo:warning=could not fetch ONNX Runtime {ORT_VERSION} ({e}); set ORT_DYLIB_PATH to a libonnxruntime.so 1.31+ before starting medsentry"
            );
            None
        }
    }
}

/// `pip download` the CPU wheel and extract `onnxruntime/capi/libonnxruntime.so*` into `dir`.
fn fetch_wheel(dir: &Path) -> Result<(), String> {
    let wheels = dir.join("wheel");
    fs::create_dir_all(&wheels).map_err(|e| e.to_string())?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(&wheels)
        .status()
        .map_err(|e| format!("running python3 -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download exited with {status}"));
    }
    let script = "import sys, zipfile, glob, os\n\
        whl = glob.glob(os.path.join(sys.argv[1], 'onnxruntime-*.whl'))[0]\n\
        z = zipfile.ZipFile(whl)\n\
        for n in z.namelist():\n\
        \x20   b = os.path.basename(n)\n\
        \x20   if n.startswith('onnxruntime/capi/') and b.startswith('libonnxruntime'):\n\
        \x20       open(os.path.join(sys.argv[2], b), 'wb').write(z.read(n))\n";
    let status = Command::new("python3").args(["-c", script]).arg(&wheels).arg(dir).status().map_err(|e| format!("running python3 to unzip: {e}"))?;
    if !status.success() {
        return Err(format!("extracting the wheel exited with {status}"));
    }
    let _ = fs::remove_dir_all(&wheels);
    Ok(())
}

/// The file names listed in the `[files]` table of a bundle.toml (the files the sidecar
/// loads and checks); read line by line to keep the build script free of a TOML parser.
fn listed_files(toml: &str) -> Vec<String> {
    let mut in_files = false;
    let mut names = Vec::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_files = line == "[files]";
        } else if in_files {
            if let Some((key, _)) = line.split_once('=') {
                names.push(key.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

/// Writes `embedded_bundle.rs`: the default bundle's bundle.toml and every file it lists,
/// as `(name, bytes)` pairs.
fn embed_default_bundle() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("models").join(DEFAULT_BUNDLE);
    println!("cargo:rerun-if-changed={}", root.display());
    let mut code = String::from("/// Files of the default bundle, compiled in by build.rs.\npub const EMBEDDED_FILES: &[(&str, &[u8])] = &[\n");
    let toml = fs::read_to_string(root.join("bundle.toml")).unwrap_or_default();
    let mut files = vec!["bundle.toml".to_string()];
    files.extend(listed_files(&toml));
    let complete = !toml.is_empty() && files.iter().all(|f| root.join(f).exists());
    if complete {
        for f in &files {
            let path = root.join(f);
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(code, "    ({f:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
        }
    } else {
        println!("cargo:warning=default bundle models/{DEFAULT_BUNDLE} is incomplete; the binary embeds no model");
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded_bundle.rs");
    fs::write(out, code).unwrap();
}
