//! DICOM Part 10 -> [`DecodedImage`] in [0, 1].
//!
//! Turns one single-frame DICOM image into the intensities the classifier sees
//! ([`dicom_pixels`](super::dicom_pixels) has the display pipeline). The reference
//! rendering is `models/training/medsentry_training/dicom_reference.py` (pydicom);
//! `tests/dicom_decode.rs` checks both agree on real files.
//!
//! Nothing is allocated on a header's word alone: every element length is checked against
//! the bytes received ([`dicom_guard`](super::dicom_guard)), a deflated data set is
//! inflated in steps that each take their bytes from the request's [`Reservation`] and stop
//! at a bound derived from the pixel limit, an encapsulated frame's codestream must declare
//! the same size and components as Rows/Columns/SamplesPerPixel
//! ([`codestream`](super::codestream)), and the decoded pixels and the output are reserved
//! before the codec runs.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTable, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::budget::{DecodeBudget, Reservation};
use super::dicom_pixels::{render_colour, render_monochrome, Header, Samples};
use super::{codestream, DecodeError, DecodeLimits, DecodedImage, DicomAttributes};

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Inflation proceeds in steps of this many bytes, each reserved before it is written.
const INFLATE_STEP: usize = 4 << 20;
/// What dicom-rs holds per parsed element beyond its value bytes (header, value enum, map
/// entry), reserved per element the guard counted: a file of millions of empty elements
/// costs far more than its size.
const PER_ELEMENT: u64 = 192;

/// Decode one DICOM Part 10 object (with or without the 128-byte preamble), with no
/// memory budget (the command line decodes one file at a time).
pub fn decode_dicom(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    let mut unlimited = DecodeBudget::unlimited().reserve(Default::default(), None);
    decode_dicom_within(bytes, limits, &mut unlimited)
}

/// Decode one DICOM Part 10 object, taking every large allocation from `res` first.
pub fn decode_dicom_within(bytes: &[u8], limits: &DecodeLimits, res: &mut Reservation) -> Result<DecodedImage, DecodeError> {
    // The codecs behind dicom-pixeldata index slices with sizes taken from the codestream;
    // a request must never take the server down, so any panic becomes a refusal.
    // (Needs panic = "unwind".)
    catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits, res)))
        .unwrap_or_else(|_| Err(DecodeError::MalformedDicom("the pixel data codec failed on this input".into())))
}

fn decode_inner(bytes: &[u8], limits: &DecodeLimits, res: &mut Reservation) -> Result<DecodedImage, DecodeError> {
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

    let obj = if uid == DEFLATED {
        let inflated = inflate_bounded(&body[data_set_start..], limits, res)?;
        let elements = super::dicom_guard::check_data_set(&inflated, 0, EXPLICIT_LE).map_err(malformed)?;
        // dicom-rs copies every value it parses.
        res.grow(inflated.len() as u64 + elements * PER_ELEMENT, "parsed data set")?;
        let ts = TransferSyntaxRegistry.get(EXPLICIT_LE).expect("the registry knows Explicit VR Little Endian");
        let data = InMemDicomObject::read_dataset_with_ts(inflated.as_slice(), ts).map_err(|e| malformed(format!("data set: {e}")))?;
        data.with_exact_meta(meta)
    } else {
        let elements = super::dicom_guard::check_data_set(body, data_set_start, &uid).map_err(malformed)?;
        res.grow(body.len() as u64 + elements * PER_ELEMENT, "parsed data set")?;
        OpenFileOptions::new().read_preamble(ReadPreamble::Never).from_reader(body).map_err(|e| malformed(format!("data set: {e}")))?
    };
    res.checkpoint()?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(DecodeError::NoPixelData);
    }
    let h = Header::read(&obj)?;
    limits.check(u64::from(h.cols), u64::from(h.rows))?;
    if h.frames > 1 {
        return Err(DecodeError::MultiFrame(h.frames));
    }
    let codec = check_codestream(&obj, &uid, &h, limits)?;
    res.grow(decode_cost(&h, codec, body.len() as u64), "decoded pixels")?;

    let px = obj.decode_pixel_data().map_err(|e| decode_failure(&uid, e))?;
    res.checkpoint()?;
    let (w, hgt) = (h.cols as usize, h.rows as usize);
    let n = w * hgt;
    if h.samples == 1 {
        let samples = Samples::new(px.data(), n, &h)?;
        let data = render_monochrome(&obj, &samples, h.photometric == "MONOCHROME1")?;
        return Ok(DecodedImage { width: w, height: hgt, channels: 1, data, dicom: Some(attributes(&obj, &h)) });
    }
    // JPEG and JPEG 2000 codecs return interleaved RGB whatever the header says (they undo
    // the YCbCr / ICT transform themselves); native and RLE data keep the header's colour space.
    let codec_rgb = uid.starts_with("1.2.840.10008.1.2.4.");
    let planar = !codec_rgb && px.planar_configuration() as u16 == 1;
    let data = render_colour(px.data(), n, w, &h, codec_rgb, planar)?;
    Ok(DecodedImage { width: w, height: hgt, channels: 3, data, dicom: Some(attributes(&obj, &h)) })
}

/// Inflates a Deflated Explicit VR Little Endian data set, each step reserved before it is
/// written, up to a bound: the Pixel Data its own Image Pixel attributes declare (read from
/// the first inflated step) plus 16 MiB of other attributes, or, before they are seen, what
/// the largest allowed image could need (6 bytes a pixel: 3 samples of 16 bits). A deflate
/// bomb stops at the bound.
fn inflate_bounded(deflated: &[u8], limits: &DecodeLimits, res: &mut Reservation) -> Result<Vec<u8>, DecodeError> {
    let most = limits.max_pixels.saturating_mul(6);
    let mut bound = most.saturating_add(16 << 20);
    let mut reader = flate2::read::DeflateDecoder::new(deflated);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let step = (bound - out.len() as u64).min(INFLATE_STEP as u64) as usize + 1;
        res.grow(step as u64, "inflated data set")?;
        let start = out.len();
        out.resize(start + step, 0);
        let mut filled = start;
        while filled < out.len() {
            match reader.read(&mut out[filled..]) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) => return Err(malformed(format!("deflated data set: {e}"))),
            }
        }
        out.truncate(filled);
        if let Some(pixels) = super::dicom_guard::pixel_bytes_declared(&out) {
            bound = pixels.min(most).saturating_add(16 << 20);
        }
        if (out.len() as u64) > bound {
            return Err(malformed(format!("the deflated data set inflates past {bound} bytes, more than its Rows x Columns x samples declare (or, before those, an image within the pixel limit of {} needs)", limits.max_pixels)));
        }
        if filled < start + step {
            return Ok(out);
        }
    }
}

/// How the pixel data is stored, for the decode cost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Native,
    Rle,
    Jpeg,
    Jpeg2000,
}

/// Checks that an encapsulated frame's codestream declares the header's size, components
/// and at most its bit depth, before any codec sees it.
fn check_codestream(obj: &DefaultDicomObject, uid: &str, h: &Header, limits: &DecodeLimits) -> Result<Codec, DecodeError> {
    let codec = match uid {
        "1.2.840.10008.1.2.5" => Codec::Rle,
        u if u.starts_with("1.2.840.10008.1.2.4.") => match TransferSyntaxRegistry.get(u).map(|t| t.name()) {
            Some(name) if name.contains("2000") || u.starts_with("1.2.840.10008.1.2.4.20") => Codec::Jpeg2000,
            _ => Codec::Jpeg,
        },
        _ => return Ok(Codec::Native),
    };
    let fragment = match obj.get(tags::PIXEL_DATA).map(|e| e.value()) {
        Some(Value::PixelSequence(seq)) => seq.fragments().first().map(|f| f.as_slice()),
        _ => return Err(malformed("compressed transfer syntax but Pixel Data is not encapsulated")),
    };
    let fragment = fragment.ok_or_else(|| malformed("encapsulated Pixel Data has no fragments"))?;
    let declared = match codec {
        Codec::Jpeg => codestream::jpeg(fragment),
        Codec::Jpeg2000 => codestream::j2k(fragment),
        _ => return Ok(codec),
    }
    .map_err(malformed)?;
    limits.check(declared.width, declared.height)?;
    if (declared.width, declared.height) != (u64::from(h.cols), u64::from(h.rows)) {
        return Err(malformed(format!("the codestream declares {}x{} pixels but Columns x Rows is {}x{}", declared.width, declared.height, h.cols, h.rows)));
    }
    if declared.components != h.samples {
        return Err(malformed(format!("the codestream has {} components but SamplesPerPixel is {}", declared.components, h.samples)));
    }
    if declared.precision > h.bits_allocated {
        return Err(malformed(format!("the codestream has {}-bit samples but BitsAllocated is {}", declared.precision, h.bits_allocated)));
    }
    // JPEG 2000 keeps bookkeeping per tile: a 4096x4096 image in 1x1 tiles is a bomb.
    if declared.tiles > 4096 {
        return Err(malformed(format!("the JPEG 2000 codestream has {} tiles (at most 4096 accepted)", declared.tiles)));
    }
    Ok(codec)
}

/// Bytes decoding a frame takes beyond the parsed object: the codec's own buffers, its
/// output, the f32 intensities, and for encapsulated data the fragments concatenated.
fn decode_cost(h: &Header, codec: Codec, input: u64) -> u64 {
    let pixels = u64::from(h.rows) * u64::from(h.cols);
    let samples = pixels * u64::from(h.samples);
    let decoded = samples * h.sample_bytes();
    let working = match codec {
        Codec::Native => 0,
        Codec::Rle => input,
        // jpeg-decoder keeps one plane per component, then interleaves.
        Codec::Jpeg => input + samples * 2,
        // openjp2 decodes into 32-bit planes, plus code-block buffers of the same order.
        Codec::Jpeg2000 => input + samples * 8,
    };
    let output = pixels * if h.samples == 1 { 1 } else { 3 } * 4;
    decoded + working + output
}

/// Transfer syntaxes accepted: those whose decoding is bounded here. Others the registry
/// could decode are refused too: Deflated Image Frame Compression (1.2.840.10008.1.2.8.1)
/// and JPIP Referenced Deflate (.4.95, .4.205) inflate without a bound inside dicom-rs, and
/// JPIP's pixels are not in the file at all.
const ACCEPTED: &[&str] = &[
    "1.2.840.10008.1.2",       // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",     // Explicit VR Little Endian
    "1.2.840.10008.1.2.1.98",  // Encapsulated Uncompressed Explicit VR Little Endian
    DEFLATED,                  // inflated here, bounded
    "1.2.840.10008.1.2.2",     // Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  // JPEG Baseline
    "1.2.840.10008.1.2.4.51",  // JPEG Extended
    "1.2.840.10008.1.2.4.57",  // JPEG Lossless
    "1.2.840.10008.1.2.4.70",  // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.4.92",  // JPEG 2000 Part 2 multi-component (lossless only)
    "1.2.840.10008.1.2.4.93",  // JPEG 2000 Part 2 multi-component
    "1.2.840.10008.1.2.4.201", // High-Throughput JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.202", // High-Throughput JPEG 2000 with RPCL (lossless only)
    "1.2.840.10008.1.2.4.203", // High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5",     // RLE Lossless
];

/// Refuse, from the header alone, transfer syntaxes outside [`ACCEPTED`] or without a
/// decoder in this build (JPEG-LS: the `charls` feature is off; MPEG/HEVC video; private
/// or unknown UIDs).
fn check_transfer_syntax(uid: &str) -> Result<(), DecodeError> {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) if ts.can_decode_all() && ACCEPTED.contains(&uid) => Ok(()),
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

/// Modality, BodyPartExamined and PhotometricInterpretation, trimmed and upper-cased (the
/// CS value representation is upper case; some writers are not).
fn attributes(obj: &DefaultDicomObject, h: &Header) -> DicomAttributes {
    let text = |tag| {
        obj.get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_ascii_uppercase())
            .filter(|v| !v.is_empty())
    };
    DicomAttributes { modality: text(tags::MODALITY), body_part: text(tags::BODY_PART_EXAMINED), photometric: Some(h.photometric.to_ascii_uppercase()) }
}

fn malformed(reason: impl Into<String>) -> DecodeError {
    DecodeError::MalformedDicom(reason.into())
}

#[cfg(test)]
mod tests;
