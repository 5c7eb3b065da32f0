//! quarantine: flagged inputs kept on disk, de-identified, for the people who investigate
//! an attack. [`stored_form`] turns a request's input into the bytes that are written
//! (DICOM through [`deid`] first, so patient identifiers never touch the disk);
//! [`store`] writes them durably under a size cap.

pub mod deid;
mod store;

pub use store::{list_records, QuarantineError, QuarantineStore, Record, RecordedScore, Stored};

use crate::decode::looks_like_dicom;
use crate::pipeline::Input;

/// The bytes of an input as the quarantine keeps them.
pub struct StoredForm {
    pub bytes: Vec<u8>,
    pub ext: &'static str,
    /// dicom | image | tensor
    pub kind: &'static str,
    pub deidentified: bool,
    pub burned_in_annotation: bool,
}

pub fn stored_form(input: &Input) -> Result<StoredForm, QuarantineError> {
    match input {
        Input::Dicom(bytes) => dicom(bytes),
        Input::Image(bytes) if looks_like_dicom(bytes) => dicom(bytes),
        Input::Image(bytes) => {
            // PNG and JPEG are kept as received: their pixels are what was screened.
            let ext = if bytes.starts_with(b"\x89PNG") { "png" } else { "jpg" };
            Ok(StoredForm { bytes: bytes.clone(), ext, kind: "image", deidentified: false, burned_in_annotation: false })
        }
        Input::Tensor { shape, data } => {
            let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            let bytes = crate::eval::npy::write_npy_f32(&dims, data);
            Ok(StoredForm { bytes, ext: "npy", kind: "tensor", deidentified: false, burned_in_annotation: false })
        }
    }
}

fn dicom(bytes: &[u8]) -> Result<StoredForm, QuarantineError> {
    let d = deid::deidentify(bytes).map_err(|e| QuarantineError::Deidentify(e.to_string()))?;
    Ok(StoredForm { bytes: d.bytes, ext: "dcm", kind: "dicom", deidentified: true, burned_in_annotation: d.burned_in_annotation })
}
