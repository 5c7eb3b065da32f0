//! DICOM Part 10 -> [`DecodedImage`] in [0, 1].
//!
//! Turns one single-frame DICOM image into the intensities the classifier sees, following
//! the DICOM display pipeline so that a radiograph looks here as it does on a viewer:
//! stored values -> modality rescale -> VOI (window, VOI LUT or min-max) -> MONOCHROME1
//! inversion. Colour images (RGB, YBR_FULL, YBR_FULL_422) become RGB / (2^bits - 1).
//! The reference rendering is `models/training/medsentry_training/dicom_reference.py`
//! (pydicom); `tests/dicom_decode.rs` checks both agree on real files.
//!
//! The header is read and checked (transfer syntax, size limits, frames, photometric
//! interpretation) before any codec runs, so refusals are cheap and allocation-free.

use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTable, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::{DecodeError, DecodeLimits, DecodedImage};

/// Decode one DICOM Part 10 object (with or without the 128-byte preamble).
pub fn decode_dicom(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    // The codecs behind dicom-pixeldata index slices with sizes taken from the codestream
    // (e.g. a JPEG larger than Rows x Columns panics in the adapter); a request must never
    // take the server down, so any panic becomes a refusal. (Needs panic = "unwind".)
    catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits))).unwrap_or_else(|_| {
        Err(DecodeError::MalformedDicom("the pixel data codec failed on this input".into()))
    })
}

fn decode_inner(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    let body = match bytes {
        b if b.len() >= 132 && &b[128..132] == b"DICM" => &b[128..],
        b if b.starts_with(b"DICM") => b,
        _ => return Err(malformed("no DICM marker at offset 128 or 0")),
    };
    // Read the meta group alone first: with a transfer syntax we cannot decode, parsing
    // the data set may itself fail, and the precise refusal is more useful to a PACS admin.
    // dicom-rs allocates whatever an element header declares: check every length first.
    let data_set_start = super::dicom_guard::check_meta(body).map_err(malformed)?;
    let meta = FileMetaTable::from_reader(body).map_err(|e| malformed(format!("file meta group: {e}")))?;
    let uid = meta.transfer_syntax().to_string();
    check_transfer_syntax(&uid)?;
    super::dicom_guard::check_data_set(body, data_set_start, &uid).map_err(malformed)?;

    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| malformed(format!("data set: {e}")))?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(DecodeError::NoPixelData);
    }
    let h = Header::read(&obj)?;
    limits.check(u64::from(h.cols), u64::from(h.rows))?;
    if h.frames > 1 {
        return Err(DecodeError::MultiFrame(h.frames));
    }

    let px = obj.decode_pixel_data().map_err(|e| decode_failure(&uid, e))?;
    let (w, hgt) = (h.cols as usize, h.rows as usize);
    let n = w * hgt;
    if h.samples == 1 {
        let stored = stored_values(px.data(), n, &h)?;
        let data = render_monochrome(&obj, &stored, h.photometric == "MONOCHROME1")?;
        return Ok(DecodedImage { width: w, height: hgt, channels: 1, data });
    }
    // JPEG and JPEG 2000 codecs return interleaved RGB whatever the header says (they undo
    // the YCbCr / ICT transform themselves); native and RLE data keep the header's colour space.
    let codec_rgb = uid.starts_with("1.2.840.10008.1.2.4.");
    let planar = !codec_rgb && px.planar_configuration() as u16 == 1;
    let data = render_colour(px.data(), n, w, &h, codec_rgb, planar)?;
    Ok(DecodedImage { width: w, height: hgt, channels: 3, data })
}

/// Refuse, from the registry alone, transfer syntaxes this build has no decoder for
/// (JPEG-LS: the `charls` feature is off; MPEG/HEVC video; private or unknown UIDs).
fn check_transfer_syntax(uid: &str) -> Result<(), DecodeError> {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) if ts.can_decode_all() => Ok(()),
        Some(ts) => Err(unsupported(uid, ts.name())),
        None => Err(unsupported(uid, "unknown transfer syntax")),
    }
}

/// dicom-pixeldata's error type is opaque; a missing adapter is only recognisable by its
/// message ("Unsupported TransferSyntax ..." / "Unknown transfer syntax ...").
fn decode_failure(uid: &str, e: dicom_pixeldata::Error) -> DecodeError {
    let msg = e.to_string();
    if msg.to_ascii_lowercase().replace(' ', "").contains("transfersyntax") {
        let name = TransferSyntaxRegistry.get(uid).map_or("unknown transfer syntax", |ts| ts.name());
        return unsupported(uid, name);
    }
    let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
    malformed(format!("pixel data could not be decoded: {msg}{cause}"))
}

fn unsupported(uid: &str, name: &str) -> DecodeError {
    DecodeError::UnsupportedTransferSyntax { uid: uid.to_string(), name: name.to_string() }
}

fn malformed(reason: impl Into<String>) -> DecodeError {
    DecodeError::MalformedDicom(reason.into())
}

/// The Image Pixel module attributes that drive decoding.
struct Header {
    rows: u32,
    cols: u32,
    frames: u32,
    samples: u32,
    bits_allocated: u32,
    bits_stored: u32,
    signed: bool,
    photometric: String,
}

impl Header {
    fn read(obj: &DefaultDicomObject) -> Result<Self, DecodeError> {
        let get = |tag, name, default: Option<u32>| match (int_attr(obj, tag, name)?, default) {
            (Some(v), _) => u32::try_from(v).map_err(|_| malformed(format!("{name} is {v}"))),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(malformed(format!("{name} is missing"))),
        };
        let bits_allocated = get(tags::BITS_ALLOCATED, "BitsAllocated", None)?;
        let photometric = match obj.get(tags::PHOTOMETRIC_INTERPRETATION).map(|e| e.to_str()) {
            Some(Ok(p)) => p.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string(),
            _ => return Err(malformed("PhotometricInterpretation is missing")),
        };
        let h = Header {
            rows: get(tags::ROWS, "Rows", None)?,
            cols: get(tags::COLUMNS, "Columns", None)?,
            frames: get(tags::NUMBER_OF_FRAMES, "NumberOfFrames", Some(1))?,
            samples: get(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", Some(1))?,
            bits_stored: get(tags::BITS_STORED, "BitsStored", Some(bits_allocated))?,
            signed: get(tags::PIXEL_REPRESENTATION, "PixelRepresentation", Some(0))? == 1,
            bits_allocated,
            photometric,
        };
        match (h.photometric.as_str(), h.samples) {
            ("MONOCHROME1" | "MONOCHROME2", 1) | ("RGB" | "YBR_FULL" | "YBR_FULL_422", 3) => {}
            ("MONOCHROME1" | "MONOCHROME2" | "RGB" | "YBR_FULL" | "YBR_FULL_422", s) => {
                return Err(malformed(format!("{} with SamplesPerPixel {s}", h.photometric)))
            }
            (other, _) => return Err(DecodeError::UnsupportedPhotometric(other.to_string())),
        }
        if !matches!(h.bits_allocated, 1 | 8 | 16 | 32) || h.bits_stored == 0 || h.bits_stored > h.bits_allocated {
            return Err(malformed(format!("BitsAllocated {} / BitsStored {}", h.bits_allocated, h.bits_stored)));
        }
        Ok(h)
    }
}

fn int_attr(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<i64>, DecodeError> {
    match obj.get(tag) {
        Some(e) if e.value().multiplicity() > 0 => {
            e.to_int::<i64>().map(Some).map_err(|_| malformed(format!("{name} unreadable")))
        }
        _ => Ok(None),
    }
}

/// First value of a (possibly multi-valued) decimal attribute; None when absent or empty.
fn float_attr(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<f64>, DecodeError> {
    match obj.get(tag).map(|e| e.to_multi_float64()) {
        None => Ok(None),
        Some(Ok(v)) if v.is_empty() => Ok(None),
        Some(Ok(v)) if v[0].is_finite() => Ok(Some(v[0])),
        _ => Err(malformed(format!("{name} unreadable"))),
    }
}

/// Stored values as signed integers: bits above BitsStored are masked off (they may hold
/// overlays) and signed samples are sign-extended from bit BitsStored-1, as pydicom does.
/// HighBit is assumed to be BitsStored-1 (required by every image IOD in use).
fn stored_values(data: &[u8], samples: usize, h: &Header) -> Result<Vec<i64>, DecodeError> {
    let bytes = (h.bits_allocated as usize).div_ceil(8); // 1-bit data arrives expanded to bytes
    let data = data.get(..samples * bytes).ok_or_else(|| {
        malformed(format!("pixel data holds {} bytes, {samples} samples of {bytes} bytes expected", data.len()))
    })?;
    let bits = h.bits_stored; // 1..=BitsAllocated, checked in Header::read
    let mask = (1u64 << bits) - 1;
    Ok(data
        .chunks_exact(bytes)
        .map(|c| {
            // dicom-pixeldata hands out samples in native byte order.
            let raw = match c.len() {
                1 => u64::from(c[0]),
                2 => u64::from(u16::from_ne_bytes([c[0], c[1]])),
                _ => u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
            } & mask;
            if h.signed && raw >> (bits - 1) & 1 == 1 { raw as i64 - (1i64 << bits) } else { raw as i64 }
        })
        .collect())
}

/// Modality rescale -> VOI -> MONOCHROME1 inversion, in f64.
fn render_monochrome(obj: &InMemDicomObject, stored: &[i64], invert: bool) -> Result<Vec<f32>, DecodeError> {
    // A Modality LUT Sequence (0028,3000) is ignored: it is rare outside old XA/US objects,
    // and the linear rescale is what CT/MR/CR/DX use.
    let slope = float_attr(obj, tags::RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0);
    let intercept = float_attr(obj, tags::RESCALE_INTERCEPT, "RescaleIntercept")?.unwrap_or(0.0);
    let x: Vec<f64> = stored.iter().map(|&v| v as f64 * slope + intercept).collect();

    let center = float_attr(obj, tags::WINDOW_CENTER, "WindowCenter")?;
    let width = float_attr(obj, tags::WINDOW_WIDTH, "WindowWidth")?;
    let mut y: Vec<f64> = if let (Some(c), Some(w)) = (center, width) {
        let func = obj.get(tags::VOILUT_FUNCTION).and_then(|e| e.to_str().ok()).unwrap_or("LINEAR".into());
        let func = func.trim().to_ascii_uppercase();
        x.iter().map(|&v| window(v, c, w, &func)).collect()
    } else if let Some(lut) = voi_lut(obj)? {
        x.iter().map(|&v| lut(v)).collect()
    } else {
        let (lo, hi) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if hi > lo { x.iter().map(|&v| (v - lo) / (hi - lo)).collect() } else { vec![0.0; x.len()] }
    };
    if invert {
        y.iter_mut().for_each(|v| *v = 1.0 - *v);
    }
    Ok(y.into_iter().map(|v| v as f32).collect())
}

/// VOI LUT function of PS3.3 C.11.2.1.2 with output range [0, 1]: LINEAR (the default, and
/// the fallback for unknown names), LINEAR_EXACT and SIGMOID. A width below the function's
/// minimum (invalid per the standard) degenerates to a threshold instead of dividing by 0.
pub(crate) fn window(x: f64, center: f64, width: f64, function: &str) -> f64 {
    let (c, w) = match function {
        "SIGMOID" if width > 0.0 => return 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
        "LINEAR_EXACT" | "SIGMOID" => (center, width),
        _ => (center - 0.5, width - 1.0),
    };
    if x <= c - w.max(0.0) / 2.0 {
        0.0
    } else if w <= 0.0 || x > c + w / 2.0 {
        1.0
    } else {
        (x - c) / w + 0.5
    }
}

/// First item of the VOI LUT Sequence (0028,3010) as a function into [0, 1]: inputs below the
/// first mapped value take the first entry, inputs past the table the last.
fn voi_lut(obj: &InMemDicomObject) -> Result<Option<impl Fn(f64) -> f64>, DecodeError> {
    let Some(item) = obj.get(tags::VOILUT_SEQUENCE).and_then(|e| e.items()).and_then(|i| i.first()) else {
        return Ok(None);
    };
    let bad = || malformed("VOI LUT Sequence item has no usable LUTDescriptor / LUTData");
    let desc = item.get(tags::LUT_DESCRIPTOR).and_then(|e| e.to_multi_int::<i64>().ok()).ok_or_else(bad)?;
    let data = item.get(tags::LUT_DATA).and_then(|e| e.to_multi_int::<i64>().ok()).ok_or_else(bad)?;
    let [entries, first, bits] = desc[..] else { return Err(bad()) };
    if data.is_empty() || !(1..=16).contains(&bits) {
        return Err(bad());
    }
    // 0 entries means 65536; the first mapped value is SS (read here as US) for signed images.
    let entries = if entries == 0 { 65536 } else { entries as usize };
    let signed = obj.get(tags::PIXEL_REPRESENTATION).and_then(|e| e.to_int::<u16>().ok()) == Some(1);
    let first = if signed && first > 32767 { first - 65536 } else { first } as f64;
    let max_out = ((1u32 << bits) - 1) as f64;
    let table: Vec<f64> = data.iter().take(entries).map(|&v| (v as f64 / max_out).clamp(0.0, 1.0)).collect();
    Ok(Some(move |x: f64| table[(x - first).floor().clamp(0.0, (table.len() - 1) as f64) as usize]))
}

/// Colour samples -> planar RGB / (2^BitsStored - 1).
fn render_colour(data: &[u8], n: usize, width: usize, h: &Header, codec_rgb: bool, planar: bool) -> Result<Vec<f32>, DecodeError> {
    let max = ((1u64 << h.bits_stored) - 1) as f64;
    let ybr = !codec_rgb && h.photometric != "RGB";
    // Native YBR_FULL_422 stores Y1 Y2 Cb Cr per horizontal pixel pair (PS3.3 C.7.6.3.1.2).
    let subsampled = !codec_rgb && h.photometric == "YBR_FULL_422";
    let count = if subsampled { n * 2 } else { n * 3 };
    if subsampled && width % 2 == 1 {
        return Err(malformed("YBR_FULL_422 with an odd number of Columns"));
    }
    let s: Vec<f64> = stored_values(data, count, h)?.into_iter().map(|v| v as f64).collect();
    let mut out = vec![0f32; 3 * n];
    for p in 0..n {
        let mut px = if subsampled {
            let base = (p / 2) * 4;
            [s[base + p % 2], s[base + 2], s[base + 3]]
        } else if planar {
            [s[p], s[n + p], s[2 * n + p]]
        } else {
            [s[3 * p], s[3 * p + 1], s[3 * p + 2]]
        };
        if ybr {
            px = ybr_to_rgb(px, max);
        }
        for c in 0..3 {
            out[c * n + p] = (px[c] / max) as f32;
        }
    }
    Ok(out)
}

/// YBR_FULL -> RGB as pydicom does it (ITU-R BT.601 full range, rounded, clipped).
fn ybr_to_rgb([y, cb, cr]: [f64; 3], max: f64) -> [f64; 3] {
    let half = (max + 1.0) / 2.0;
    let (cb, cr) = (cb - half, cr - half);
    let r = y + 1.402 * cr;
    let g = y - (0.114 * 1.772 / 0.587) * cb - (0.299 * 1.402 / 0.587) * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(photometric: &str, samples: u32, bits_stored: u32, signed: bool) -> Header {
        let photometric = photometric.to_string();
        Header { rows: 1, cols: 2, frames: 1, samples, bits_allocated: 16, bits_stored, signed, photometric }
    }

    #[test]
    fn linear_window_follows_ps3_3() {
        // c = 40, w = 100 (head CT brain window): edges at c - 0.5 -+ (w - 1) / 2.
        assert_eq!(window(-10.0, 40.0, 100.0, "LINEAR"), 0.0);
        assert_eq!(window(-9.99, 40.0, 100.0, "LINEAR"), (-9.99 - 39.5) / 99.0 + 0.5);
        assert!((window(39.5, 40.0, 100.0, "LINEAR") - 0.5).abs() < 1e-12);
        assert!((window(89.0, 40.0, 100.0, "LINEAR") - 1.0).abs() < 1e-12);
        assert_eq!(window(89.01, 40.0, 100.0, "LINEAR"), 1.0);
        // Width 1 is a threshold at c - 0.5; widths the standard forbids give no NaN.
        assert_eq!((window(0.4, 1.0, 1.0, "LINEAR"), window(0.6, 1.0, 1.0, "LINEAR")), (0.0, 1.0));
        assert!(window(5.0, 1.0, 0.0, "LINEAR").is_finite() && window(5.0, 1.0, 0.0, "SIGMOID").is_finite());
        assert!((window(40.0, 40.0, 100.0, "LINEAR_EXACT") - 0.5).abs() < 1e-12);
        assert!((window(40.0, 40.0, 100.0, "SIGMOID") - 0.5).abs() < 1e-12);
    }

    fn test_obj(photometric: &str) -> DefaultDicomObject {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from(photometric)));
        let meta = dicom_object::FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1");
        let meta = meta.media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7").media_storage_sop_instance_uid("1.2.3");
        obj.with_exact_meta(meta.build().unwrap())
    }

    #[test]
    fn monochrome1_is_inverted_after_min_max() {
        let obj = test_obj("MONOCHROME1");
        assert_eq!(render_monochrome(&obj, &[0, 50, 100], true).unwrap(), vec![1.0, 0.5, 0.0]);
        assert_eq!(render_monochrome(&obj, &[0, 50, 100], false).unwrap(), vec![0.0, 0.5, 1.0]);
        // A constant image maps to 0 (1 once inverted), never NaN.
        assert_eq!(render_monochrome(&obj, &[7, 7], true).unwrap(), vec![1.0, 1.0]);
    }

    #[test]
    fn voi_lut_sequence_applies_when_there_is_no_window() {
        use dicom_core::{value::DataSetSequence, DataElement, PrimitiveValue, VR};
        let us = |v: [u16; 3]| PrimitiveValue::U16(v.into_iter().collect());
        let item = InMemDicomObject::from_element_iter([
            DataElement::new(tags::LUT_DESCRIPTOR, VR::US, us([3, 10, 8])),
            DataElement::new(tags::LUT_DATA, VR::US, us([0, 51, 255])),
        ]);
        let mut obj = test_obj("MONOCHROME2");
        obj.put(DataElement::new(tags::VOILUT_SEQUENCE, VR::SQ, DataSetSequence::from(vec![item])));
        // Below the first mapped value (10) -> entry 0, past the table -> last entry.
        assert_eq!(render_monochrome(&obj, &[5, 10, 11, 12, 99], false).unwrap(), vec![0.0, 0.0, 0.2, 1.0, 1.0]);
    }

    #[test]
    fn stored_values_are_masked_and_sign_extended() {
        let data: Vec<u8> = [0xFFFFu16, 0xF7FF].iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(stored_values(&data, 2, &header("MONOCHROME2", 1, 12, true)).unwrap(), vec![-1, 2047]);
        assert_eq!(stored_values(&data, 2, &header("MONOCHROME2", 1, 12, false)).unwrap(), vec![4095, 2047]);
        assert!(stored_values(&data[..3], 2, &header("MONOCHROME2", 1, 12, true)).is_err());
    }

    #[test]
    fn colour_layouts() {
        let bytes = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_ne_bytes()).collect() };
        // Planar RGB, 8 bits stored: R plane, G plane, B plane.
        let out = render_colour(&bytes(&[255, 0, 0, 51, 0, 255]), 2, 2, &header("RGB", 3, 8, false), false, true);
        assert_eq!(out.unwrap(), vec![1.0, 0.0, 0.0, 0.2, 0.0, 1.0]);
        // Native YBR_FULL_422: Y1 Y2 Cb Cr, neutral chroma -> grey.
        let out = render_colour(&bytes(&[255, 0, 128, 128]), 2, 2, &header("YBR_FULL_422", 3, 8, false), false, false);
        assert_eq!(out.unwrap(), vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(ybr_to_rgb([76.0, 85.0, 255.0], 255.0), [254.0, 0.0, 0.0]); // pure red, BT.601
    }

    #[test]
    fn garbage_and_truncated_input_are_errors() {
        let limits = DecodeLimits::default();
        assert!(matches!(decode_dicom(b"", &limits), Err(DecodeError::MalformedDicom(_))));
        let mut junk = vec![0x5Au8; 600];
        assert!(decode_dicom(&junk, &limits).is_err());
        junk[128..132].copy_from_slice(b"DICM");
        assert!(matches!(decode_dicom(&junk, &limits), Err(DecodeError::MalformedDicom(_))));
        let mut buf = Vec::new();
        test_obj("MONOCHROME2").write_all(&mut buf).unwrap();
        for cut in [132, buf.len() / 2, buf.len() - 1] {
            assert!(decode_dicom(&buf[..cut], &limits).is_err(), "cut at {cut}");
        }
        assert!(matches!(decode_dicom(&buf, &limits), Err(DecodeError::NoPixelData)));
    }
}
