//! decode: turns request bytes (DICOM Part 10, PNG/JPEG, or a float tensor) into a
//! [`DecodedImage`] of intensities in [0, 1], the common currency of the pipeline.
//!
//! Every refusal is a [`DecodeError`] whose message a PACS engineer can act on; sizes are
//! checked against [`DecodeLimits`] from headers before any pixel buffer is allocated, and
//! what the headers say a decode will allocate is taken from the shared [`DecodeBudget`]
//! first, so that what arrives at once cannot exhaust memory.

mod budget;
mod codestream;
mod dicom;
pub(crate) mod dicom_guard;
mod dicom_pixels;
mod error;
mod raster;

pub use budget::{CancelFlag, CancelOnDrop, DecodeBudget, Reservation};
pub use dicom::{decode_dicom, decode_dicom_within};
pub use error::DecodeError;
pub use raster::{decode_raster, decode_raster_within};

/// What a caller sends: the input every API and command hands to the pipeline.
#[derive(Debug, Clone)]
pub enum Input {
    Dicom(Vec<u8>),
    Image(Vec<u8>),
    /// [0, 1] pixels at the model's input size, shape [C, H, W] or [1, C, H, W].
    Tensor {
        shape: Vec<i64>,
        data: Vec<f32>,
    },
}

/// An image with intensities in [0, 1], planar (channel-major), row-major within a plane.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    pub width: usize,
    pub height: usize,
    /// 1 (monochrome) or 3 (RGB).
    pub channels: usize,
    /// `channels * height * width` values in [0, 1].
    pub data: Vec<f32>,
    /// What a DICOM header says the image is (None for PNG/JPEG): the out-of-distribution
    /// check compares it with what the bundle accepts.
    pub dicom: Option<DicomAttributes>,
}

/// The DICOM attributes that say what kind of image this is; each None when absent or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DicomAttributes {
    /// Modality (0008,0060), e.g. CR, DX, MR, CT.
    pub modality: Option<String>,
    /// BodyPartExamined (0018,0015), e.g. CHEST.
    pub body_part: Option<String>,
    /// PhotometricInterpretation (0028,0004).
    pub photometric: Option<String>,
}

impl DecodedImage {
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.data[c * n..(c + 1) * n]
    }
}

/// Bounds checked before allocating; a request over them is refused, not truncated.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width * height accepted (per frame).
    pub max_pixels: u64,
}

/// The default `--max-image-pixels`: 6000 x 6000, above every CR/DX detector and
/// mammogram in use. At that size a 16-bit radiograph reserves about 360 MB, inside the
/// default 512 MiB decode budget; colour images reserve more per pixel and the budget
/// caps them lower (an RGB JPEG at 25 M pixels, a 16-bit RGBA PNG at 23 M; README, "Memory").
pub const DEFAULT_MAX_PIXELS: u64 = 36_000_000;

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: DEFAULT_MAX_PIXELS }
    }
}

impl DecodeLimits {
    pub fn check(&self, width: u64, height: u64) -> Result<(), DecodeError> {
        if width == 0 || height == 0 {
            return Err(DecodeError::Malformed(format!("image has zero size ({width}x{height})")));
        }
        if width.saturating_mul(height) > self.max_pixels {
            return Err(DecodeError::TooLarge { width, height, max_pixels: self.max_pixels });
        }
        Ok(())
    }
}

/// What the server decodes with: the per-image limits and the budget shared by every call.
#[derive(Clone)]
pub struct DecodeConfig {
    pub limits: DecodeLimits,
    pub budget: DecodeBudget,
    /// Decodes that may run at once (twice the cores): the others wait their turn holding
    /// only their request, instead of every caller's decode competing for the cores and
    /// the budget at the same time.
    pub slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl DecodeConfig {
    pub fn new(limits: DecodeLimits, budget: DecodeBudget) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        DecodeConfig { limits, budget, slots: std::sync::Arc::new(tokio::sync::Semaphore::new((2 * cores).clamp(2, 64))) }
    }
}

/// True when the bytes look like DICOM Part 10 (preamble + "DICM").
pub fn looks_like_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}
