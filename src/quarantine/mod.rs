//! quarantine: flagged inputs kept on disk, de-identified, for the people who investigate
//! an attack. [`stored_form`] turns a request's input into the bytes that are written
//! (DICOM through [`deid`] first, so patient identifiers never touch the disk; PNG/JPEG
//! re-encoded as a PNG of the decoded pixels, so that their metadata (EXIF, text chunks,
//! comments, which may name the patient) does not either); [`store`] writes them durably
//! under a size cap.

pub mod deid;
mod salt;
mod store;

pub use store::{list_records, QuarantineError, QuarantineStore, Record, RecordedScore, Stored};

use crate::decode::looks_like_dicom;
use crate::decode::Input;

/// The bytes of an input as the quarantine keeps them.
pub struct StoredForm {
    pub bytes: Vec<u8>,
    pub ext: &'static str,
    /// dicom | image | tensor
    pub kind: &'static str,
    pub deidentified: bool,
    pub burned_in_annotation: bool,
}

/// `uid_salt`: the store's secret for DICOM UID replacement.
pub fn stored_form(input: &Input, uid_salt: &[u8]) -> Result<StoredForm, QuarantineError> {
    match input {
        Input::Dicom(bytes) => dicom(bytes, uid_salt),
        Input::Image(bytes) if looks_like_dicom(bytes) => dicom(bytes, uid_salt),
        Input::Image(bytes) => {
            let bytes = reencode(bytes)?;
            Ok(StoredForm { bytes, ext: "png", kind: "image", deidentified: true, burned_in_annotation: false })
        }
        Input::Tensor { shape, data } => {
            let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            let bytes = crate::eval::npy::write_npy_f32(&dims, data);
            Ok(StoredForm { bytes, ext: "npy", kind: "tensor", deidentified: false, burned_in_annotation: false })
        }
    }
}

fn dicom(bytes: &[u8], uid_salt: &[u8]) -> Result<StoredForm, QuarantineError> {
    let d = deid::deidentify(bytes, uid_salt).map_err(|e| QuarantineError::Deidentify(e.to_string()))?;
    Ok(StoredForm { bytes: d.bytes, ext: "dcm", kind: "dicom", deidentified: true, burned_in_annotation: d.burned_in_annotation })
}

/// A PNG of the pixels the sidecar decoded from a PNG/JPEG (the ones it screened), and
/// nothing else: 16-bit grey when the source had more than 8 bits, else 8-bit grey / RGB.
fn reencode(bytes: &[u8]) -> Result<Vec<u8>, QuarantineError> {
    use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};
    let fail = |e: String| QuarantineError::Reencode(e);
    // The pipeline decoded these bytes within its limits already.
    let unlimited = crate::decode::DecodeLimits { max_pixels: u64::MAX };
    let img = crate::decode::decode_raster(bytes, &unlimited).map_err(|e| fail(e.to_string()))?;
    let n = img.width * img.height;
    let wide = img.data.iter().any(|&v| ((v * 255.0).round() - v * 255.0).abs() > 1e-3);
    let (samples, colour): (Vec<u8>, ExtendedColorType) = match (img.channels, wide) {
        // The encoder takes 16-bit samples in native byte order.
        (1, true) => (img.data.iter().flat_map(|&v| ((v * 65535.0).round() as u16).to_ne_bytes()).collect(), ExtendedColorType::L16),
        (1, false) => (img.data.iter().map(|&v| (v * 255.0).round() as u8).collect(), ExtendedColorType::L8),
        _ => {
            let data = &img.data;
            ((0..n).flat_map(|i| (0..3).map(move |c| (data[c * n + i] * 255.0).round() as u8)).collect(), ExtendedColorType::Rgb8)
        }
    };
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(&samples, img.width as u32, img.height as u32, colour).map_err(|e| fail(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    #[test]
    fn images_are_kept_as_their_decoded_pixels_without_metadata() {
        // A PNG with a text chunk naming a patient.
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png).write_image(&[0, 64, 128, 255], 2, 2, image::ExtendedColorType::L8).unwrap();
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend(kind);
            c.extend(data);
            let mut h = flate2::Crc::new();
            h.update(kind);
            h.update(data);
            c.extend(h.sum().to_be_bytes());
            c
        };
        let iend = png.len() - 12;
        png.splice(iend..iend, chunk(b"tEXt", b"Comment\0DOE^JANE 1970-01-01"));
        let form = stored_form(&Input::Image(png.clone()), b"salt-salt-salt-salt").unwrap();
        assert!(form.deidentified && form.ext == "png");
        assert!(!form.bytes.windows(8).any(|w| w == b"DOE^JANE"), "metadata dropped");
        let limits = crate::decode::DecodeLimits::default();
        assert_eq!(crate::decode::decode_raster(&form.bytes, &limits).unwrap(), crate::decode::decode_raster(&png, &limits).unwrap(), "same pixels");
        // 16-bit grey keeps its 16 bits, in the right byte order.
        let samples: Vec<u8> = [1u16, 0x0102, 0x8000, 0xFFFF].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut png16 = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png16).write_image(&samples, 2, 2, image::ExtendedColorType::L16).unwrap();
        let kept = stored_form(&Input::Image(png16.clone()), b"salt-salt-salt-salt").unwrap().bytes;
        assert_eq!(crate::decode::decode_raster(&kept, &limits).unwrap(), crate::decode::decode_raster(&png16, &limits).unwrap(), "same 16-bit pixels");
    }
}
