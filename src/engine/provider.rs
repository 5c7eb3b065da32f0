//! Execution provider choice: CPU, or CUDA with an explicit policy for when CUDA is not
//! there (refuse to start, or fall back to CPU, logged and exported as a metric).

use ort::session::builder::SessionBuilder;

use super::EngineError;

/// What the operator asked for (`--device`, `--cuda-fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda { device_id: i32, fallback_to_cpu: bool },
}

/// What a session really runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    /// CUDA was asked for, could not be registered, and the policy allowed CPU.
    CpuFallback,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::CpuFallback => "cpu_fallback",
        }
    }
}

pub(super) fn register(builder: SessionBuilder, device: Device, model: &str) -> Result<(SessionBuilder, ExecutionProvider), EngineError> {
    let Device::Cuda { device_id, fallback_to_cpu } = device else {
        return Ok((builder, ExecutionProvider::Cpu));
    };
    let failure = match try_cuda(builder, device_id) {
        Ok(b) => return Ok((b, ExecutionProvider::Cuda)),
        Err((b, reason)) => (b, reason),
    };
    let (builder, reason) = failure;
    if fallback_to_cpu {
        tracing::warn!(model, %reason, "CUDA execution provider unavailable; falling back to CPU (--cuda-fallback=cpu)");
        Ok((builder, ExecutionProvider::CpuFallback))
    } else {
        Err(EngineError::Device(format!(
            "model {model}: CUDA execution provider unavailable ({reason}); refusing to start \
             (pass --cuda-fallback=cpu to run on CPU instead)"
        )))
    }
}

#[cfg(feature = "cuda")]
// The error hands the builder back so the caller can fall back to CPU; called once per
// session open, so its size does not matter.
#[allow(clippy::result_large_err)]
fn try_cuda(builder: SessionBuilder, device_id: i32) -> Result<SessionBuilder, (SessionBuilder, String)> {
    use ort::ep::{ExecutionProvider as _, CUDA};
    match CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => return Err((builder, "the loaded ONNX Runtime library has no CUDA provider (use the onnxruntime-gpu library via ORT_DYLIB_PATH)".into())),
        Err(e) => return Err((builder, e.to_string())),
    }
    let mut builder = builder;
    let ep = CUDA::default().with_device_id(device_id);
    match ep.register(&mut builder) {
        Ok(()) => Ok(builder),
        Err(e) => Err((builder, format!("registering CUDA (are the CUDA 13 and cuDNN 9 libraries on the library path?): {e}"))),
    }
}

#[cfg(not(feature = "cuda"))]
#[allow(clippy::result_large_err)]
fn try_cuda(builder: SessionBuilder, _device_id: i32) -> Result<SessionBuilder, (SessionBuilder, String)> {
    Err((builder, "this binary was built without the `cuda` cargo feature".into()))
}
