//! dicom_pixels: a decoded DICOM frame's stored values -> intensities in [0, 1].
//!
//! Follows the DICOM display pipeline so that a radiograph looks here as it does on a
//! viewer: stored values -> modality rescale -> VOI (window, VOI LUT or min-max) ->
//! MONOCHROME1 inversion; colour (RGB, YBR_FULL, YBR_FULL_422) becomes RGB / (2^bits - 1).
//! Samples are read from the codec's bytes one at a time and written straight to the f32
//! output: no per-pixel intermediate vectors (they had cost 24 bytes a pixel, 1.3 GB for a
//! 62.7 MB radiograph). The arithmetic is unchanged, so outputs are bit-identical.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::DecodeError;

fn malformed(reason: impl Into<String>) -> DecodeError {
    DecodeError::MalformedDicom(reason.into())
}

/// The Image Pixel module attributes that drive decoding.
pub(super) struct Header {
    pub rows: u32,
    pub cols: u32,
    pub frames: u32,
    pub samples: u32,
    pub bits_allocated: u32,
    pub bits_stored: u32,
    pub signed: bool,
    pub photometric: String,
}

impl Header {
    pub fn read(obj: &DefaultDicomObject) -> Result<Self, DecodeError> {
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

    /// Bytes one decoded sample takes (1-bit data arrives expanded to bytes).
    pub fn sample_bytes(&self) -> u64 {
        u64::from(self.bits_allocated.div_ceil(8))
    }
}

fn int_attr(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<i64>, DecodeError> {
    match obj.get(tag) {
        Some(e) if e.value().multiplicity() > 0 => e.to_int::<i64>().map(Some).map_err(|_| malformed(format!("{name} unreadable"))),
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

/// Stored values read on demand: bits above BitsStored are masked off (they may hold
/// overlays) and signed samples are sign-extended from bit BitsStored-1, as pydicom does.
/// HighBit is assumed to be BitsStored-1 (required by every image IOD in use).
pub(super) struct Samples<'a> {
    data: &'a [u8],
    bytes: usize,
    mask: u64,
    bits: u32,
    signed: bool,
}

impl<'a> Samples<'a> {
    /// The first `count` samples of `data` (native byte order, as dicom-pixeldata hands
    /// them out); an error when there are fewer.
    pub fn new(data: &'a [u8], count: usize, h: &Header) -> Result<Self, DecodeError> {
        let bytes = h.sample_bytes() as usize;
        let data =
            data.get(..count * bytes).ok_or_else(|| malformed(format!("pixel data holds {} bytes, {count} samples of {bytes} bytes expected", data.len())))?;
        let bits = h.bits_stored; // 1..=BitsAllocated, checked in Header::read
        Ok(Samples { data, bytes, mask: (1u64 << bits) - 1, bits, signed: h.signed })
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.bytes
    }

    pub fn get(&self, i: usize) -> i64 {
        let c = &self.data[i * self.bytes..(i + 1) * self.bytes];
        let raw = match c.len() {
            1 => u64::from(c[0]),
            2 => u64::from(u16::from_ne_bytes([c[0], c[1]])),
            _ => u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
        } & self.mask;
        if self.signed && raw >> (self.bits - 1) & 1 == 1 {
            raw as i64 - (1i64 << self.bits)
        } else {
            raw as i64
        }
    }
}

/// Modality rescale -> VOI -> MONOCHROME1 inversion, in f64, one sample at a time.
pub(super) fn render_monochrome(obj: &InMemDicomObject, s: &Samples, invert: bool) -> Result<Vec<f32>, DecodeError> {
    // A Modality LUT Sequence (0028,3000) is ignored: it is rare outside old XA/US objects,
    // and the linear rescale is what CT/MR/CR/DX use.
    let slope = float_attr(obj, tags::RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0);
    let intercept = float_attr(obj, tags::RESCALE_INTERCEPT, "RescaleIntercept")?.unwrap_or(0.0);
    let x = |i: usize| s.get(i) as f64 * slope + intercept;
    let n = s.len();
    let out = |voi: &dyn Fn(f64) -> f64| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let y = voi(x(i));
                (if invert { 1.0 - y } else { y }) as f32
            })
            .collect()
    };

    let center = float_attr(obj, tags::WINDOW_CENTER, "WindowCenter")?;
    let width = float_attr(obj, tags::WINDOW_WIDTH, "WindowWidth")?;
    if let (Some(c), Some(w)) = (center, width) {
        let func = obj.get(tags::VOILUT_FUNCTION).and_then(|e| e.to_str().ok()).unwrap_or("LINEAR".into());
        let func = func.trim().to_ascii_uppercase();
        return Ok(out(&|v| window(v, c, w, &func)));
    }
    if let Some(lut) = voi_lut(obj)? {
        return Ok(out(&lut));
    }
    let (lo, hi) = (0..n).map(x).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if hi > lo {
        Ok(out(&|v| (v - lo) / (hi - lo)))
    } else {
        Ok(out(&|_| 0.0))
    }
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
pub(super) fn render_colour(data: &[u8], n: usize, width: usize, h: &Header, codec_rgb: bool, planar: bool) -> Result<Vec<f32>, DecodeError> {
    let max = ((1u64 << h.bits_stored) - 1) as f64;
    let ybr = !codec_rgb && h.photometric != "RGB";
    // Native YBR_FULL_422 stores Y1 Y2 Cb Cr per horizontal pixel pair (PS3.3 C.7.6.3.1.2).
    let subsampled = !codec_rgb && h.photometric == "YBR_FULL_422";
    let count = if subsampled { n * 2 } else { n * 3 };
    if subsampled && width % 2 == 1 {
        return Err(malformed("YBR_FULL_422 with an odd number of Columns"));
    }
    let samples = Samples::new(data, count, h)?;
    let s = |i: usize| samples.get(i) as f64;
    let mut out = vec![0f32; 3 * n];
    for p in 0..n {
        let mut px = if subsampled {
            let base = (p / 2) * 4;
            [s(base + p % 2), s(base + 2), s(base + 3)]
        } else if planar {
            [s(p), s(n + p), s(2 * n + p)]
        } else {
            [s(3 * p), s(3 * p + 1), s(3 * p + 2)]
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
mod tests;
