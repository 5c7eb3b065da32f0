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
    #[error("DICOM transfer syntax {name} ({uid}) is not supported by this sidecar; re-send it uncompressed (Explicit VR Little Endian) or in a supported syntax")]
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
        }
    }
}
