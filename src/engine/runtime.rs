//! ONNX Runtime start-up: finds the shared library (ORT_DYLIB_PATH, else the one the build
//! fetched), loads it once per process and creates the process-wide environment.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;

use super::EngineError;

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The library the build extracted from the onnxruntime wheel (empty when it could not).
const BUNDLED: &str = env!("MEDSENTRY_BUNDLED_ORT");

/// Where the ONNX Runtime library will be loaded from: `explicit` (the `--ort-dylib` flag or
/// ORT_DYLIB_PATH), else the library fetched at build time.
pub fn library_path(explicit: Option<PathBuf>) -> Result<PathBuf, EngineError> {
    let path = explicit.or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)).or_else(|| (!BUNDLED.is_empty()).then(|| PathBuf::from(BUNDLED)));
    match path {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(EngineError::Runtime(format!(
            "ONNX Runtime library {} does not exist; set ORT_DYLIB_PATH to libonnxruntime.so 1.31+ \
             (it ships in the onnxruntime==1.31.1 wheel as onnxruntime/capi/libonnxruntime.so.1.31.1)",
            p.display()
        ))),
        None => Err(EngineError::Runtime(
            "no ONNX Runtime library: the build could not fetch the onnxruntime 1.31.1 wheel and ORT_DYLIB_PATH is \
             not set; run `python3 -m pip download --no-deps onnxruntime==1.31.1`, unzip \
             onnxruntime/capi/libonnxruntime.so.1.31.1 and point ORT_DYLIB_PATH at it"
                .into(),
        )),
    }
}

/// Loads the library and builds the one environment ONNX Runtime allows per process.
/// Later calls return the same environment (or the same error).
pub fn environment(explicit: Option<PathBuf>) -> Result<&'static Environment, EngineError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = library_path(explicit).map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path).map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder.with_name("medsentry").build().map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok(env)
    });
    result.as_ref().map_err(|e| EngineError::Runtime(e.clone()))
}
