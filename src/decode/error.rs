//! Errors of the decode layer. Converted to a gRPC status only in `api::status`.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("the request carries no input bytes")]
    Empty,
    #[error("input is neither DICOM Part 10 (no DICM marker at offset 128) nor a PNG/JPEG image")]
    UnrecognizedFormat,
    #[error("DICOM file is truncated or malformed: {0}")]
    MalformedDicom(String),
    #[error("DICOM object has no Pixel Data (7FE0,0010): nothing to classify (is this a structured report or presentation state?)")]
    NoPixelData,
    #[error(
        "DICOM transfer syntax {name} ({uid}) is not supported by this sidecar; re-send it uncompressed (Explicit VR Little Endian) or in a supported syntax"
    )]
    UnsupportedTransferSyntax { uid: String, name: String },
    #[error("DICOM photometric interpretation {0} is not supported; supported: MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422")]
    UnsupportedPhotometric(String),
    #[error("DICOM object has {0} frames; send one frame per request")]
    MultiFrame(u32),
    #[error("image is {width}x{height} pixels, over the limit of {max_pixels} pixels")]
    TooLarge { width: u64, height: u64, max_pixels: u64 },
    #[error("image could not be decoded: {0}")]
    Malformed(String),
    #[error("tensor is invalid: {0}")]
    BadTensor(String),
    /// One image needs more memory than the whole decode budget: it can never be decoded here.
    #[error("decoding this image needs {needed} bytes for its {what}, more than the whole decode memory budget of {budget} bytes (--decode-memory-mib); send a smaller image")]
    OverBudget { what: String, needed: u64, budget: u64 },
    /// Other decodes hold the budget now: the caller may retry later.
    #[error("the server is decoding too many large images at once ({in_use} of {budget} bytes of decode memory in use, {needed} more needed); retry later")]
    BudgetExhausted { needed: u64, in_use: u64, budget: u64 },
    /// The caller went away while its input was being decoded.
    #[error("the call was cancelled while its input was being decoded")]
    Cancelled,
    #[error("the call's deadline passed while its input was being decoded")]
    DeadlineExceeded,
}

impl DecodeError {
    /// Short, stable label for the `reason` of the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty_input",
            DecodeError::UnrecognizedFormat => "unrecognized_format",
            DecodeError::MalformedDicom(_) => "malformed_dicom",
            DecodeError::NoPixelData => "dicom_no_pixel_data",
            DecodeError::UnsupportedTransferSyntax { .. } => "unsupported_transfer_syntax",
            DecodeError::UnsupportedPhotometric(_) => "unsupported_photometric",
            DecodeError::MultiFrame(_) => "multi_frame",
            DecodeError::TooLarge { .. } => "image_too_large",
            DecodeError::Malformed(_) => "malformed_image",
            DecodeError::BadTensor(_) => "bad_tensor",
            DecodeError::OverBudget { .. } => "image_too_large",
            DecodeError::BudgetExhausted { .. } => "decode_budget_exhausted",
            DecodeError::Cancelled => "cancelled",
            DecodeError::DeadlineExceeded => "deadline_exceeded",
        }
    }
}
