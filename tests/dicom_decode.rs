//! `decode_dicom` against pydicom on the real files of `../shared/data/dicom`.
//!
//! The reference (`tests/fixtures/dicom_reference.json`) is written by
//! `models/training/medsentry_training/dicom_reference.py`, which renders every file with
//! pydicom through the same pipeline (rescale -> VOI -> MONOCHROME1 inversion, or RGB / max)
//! and stores size, mean/min/max and a 16x16 area-downsampled thumbnail.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use medsentry::decode::{decode_dicom, DecodeError, DecodeLimits, DecodedImage};
use serde_json::Value;

const THUMB: usize = 16;
/// Uncompressed and lossless files must match pydicom to this (stats and thumbnail).
const STATS_TOL: f64 = 1e-3;
const THUMB_TOL: f64 = 2e-3;
/// Lossy syntaxes only need to be close: decoders may reconstruct differently. RG1_J2KI (lossy
/// JPEG 2000): OpenJPEG via pylibjpeg-openjpeg and dicom-rs's openjp2 port agree today to 3e-8
/// per pixel, but need not. SC_rgb_jpeg_dcmtk (JPEG baseline): jpeg-decoder and pydicom's
/// decoder differ by 1/255 in 1% of samples (thumbnail 1.3e-3).
const LOSSY_TOL: f64 = 2e-2;
const LOSSY_TS: [&str; 3] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91"];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/dicom")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference() -> serde_json::Map<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Value::Object(map) = serde_json::from_str(&text).expect("fixture is JSON") else { panic!("fixture is not an object") };
    map.into_iter().filter(|(k, _)| !k.starts_with('_')).collect()
}

/// Output pixel i covers source span [i*s, (i+1)*s), s = n_in / n_out, partial overlaps
/// weighted (same as `area_weights` in preprocess.py).
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let s = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| {
            let (start, end) = (i as f64 * s, (i + 1) as f64 * s);
            let mut row = Vec::new();
            let mut j = start.floor() as usize;
            while j < n_in && (j as f64) < end {
                let overlap = end.min(j as f64 + 1.0) - start.max(j as f64);
                if overlap > 0.0 {
                    row.push((j, overlap / s));
                }
                j += 1;
            }
            row
        })
        .collect()
}

fn thumb(img: &DecodedImage) -> Vec<f64> {
    let (wy, wx) = (area_weights(img.height, THUMB), area_weights(img.width, THUMB));
    let mut out = Vec::with_capacity(img.channels * THUMB * THUMB);
    for c in 0..img.channels {
        let plane = img.plane(c);
        for ry in &wy {
            for rx in &wx {
                let mut acc = 0.0;
                for &(y, fy) in ry {
                    for &(x, fx) in rx {
                        acc += fy * fx * plane[y * img.width + x] as f64;
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

#[test]
fn matches_pydicom_reference() {
    let reference = reference();
    let mut on_disk: Vec<String> = std::fs::read_dir(data_dir())
        .expect("shared DICOM data")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".dcm"))
        .collect();
    on_disk.sort();
    let mut in_fixture: Vec<String> = reference.keys().cloned().collect();
    in_fixture.sort();
    assert_eq!(on_disk, in_fixture, "fixture out of date: rerun dicom_reference.py");

    let limits = DecodeLimits::default();
    let mut failures = Vec::new();
    for (name, want) in &reference {
        let result = decode_dicom(&read(name), &limits);
        if want["status"] == "refused" {
            let uid = want["transfer_syntax"].as_str().unwrap();
            let ts_name = want["transfer_syntax_name"].as_str().unwrap();
            match result {
                Err(e @ DecodeError::UnsupportedTransferSyntax { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(uid) && msg.contains(ts_name), "{name}: {msg}");
                    println!("{name}: refused as expected ({msg})");
                }
                other => failures.push(format!("{name}: expected UnsupportedTransferSyntax, got {other:?}")),
            }
            continue;
        }
        let img = match result {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let dims = (img.width, img.height, img.channels);
        let want_dims = ["width", "height", "channels"].map(|k| want[k].as_u64().unwrap() as usize);
        if dims != want_dims.into() {
            failures.push(format!("{name}: size {dims:?}, pydicom {want_dims:?}"));
            continue;
        }
        let lossy = LOSSY_TS.contains(&want["transfer_syntax"].as_str().unwrap_or_default());
        let (stats_tol, thumb_tol) = if lossy { (LOSSY_TOL, LOSSY_TOL) } else { (STATS_TOL, THUMB_TOL) };
        let n = img.data.len() as f64;
        let mean = img.data.iter().map(|&v| v as f64).sum::<f64>() / n;
        let min = img.data.iter().fold(f64::INFINITY, |a, &v| a.min(v as f64));
        let max = img.data.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let stats_diff = [(mean, "mean"), (min, "min"), (max, "max")].iter().map(|&(got, k)| (got - want[k].as_f64().unwrap()).abs()).fold(0.0, f64::max);
        let want_thumb: Vec<f64> = want["thumb"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got_thumb = thumb(&img);
        assert_eq!(got_thumb.len(), want_thumb.len(), "{name}: thumbnail size");
        let thumb_diff = got_thumb.iter().zip(&want_thumb).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{name}: max |diff| stats {stats_diff:.2e}, thumb {thumb_diff:.2e}");
        if stats_diff > stats_tol || thumb_diff > thumb_tol {
            failures.push(format!("{name}: stats diff {stats_diff:.3e} (tol {stats_tol}), thumb diff {thumb_diff:.3e} (tol {thumb_tol})"));
        }
        assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)), "{name}: values outside [0, 1]");
    }
    assert!(failures.is_empty(), "mismatches against pydicom:\n{}", failures.join("\n"));
}

#[test]
fn preamble_is_optional() {
    let bytes = read("MR_small.dcm");
    let limits = DecodeLimits::default();
    let with = decode_dicom(&bytes, &limits).unwrap();
    let without = decode_dicom(&bytes[128..], &limits).unwrap();
    assert_eq!(with, without);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let limits = DecodeLimits::default();
    assert!(decode_dicom(&[], &limits).is_err());
    // Deterministic pseudo-random bytes, with and without a DICM marker.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(decode_dicom(&random, &limits).is_err());
    random[128..132].copy_from_slice(b"DICM");
    assert!(decode_dicom(&random, &limits).is_err());
    // dicom-rs's RLE adapter panics (index out of bounds) on some cuts: decode_dicom catches
    // it, but the panic message still shows up in the test output.
    for name in ["MR_small.dcm", "MR_small_RLE.dcm", "JPEG-LL.dcm", "693_J2KR.dcm", "SC_rgb_jpeg_dcmtk.dcm"] {
        let bytes = read(name);
        // The compressed files end with [codestream, 1 pad byte, 8-byte sequence delimiter];
        // dicom-rs tolerates losing the delimiter and the pad (the codestream is whole), so
        // len - 10 is the first cut that really loses pixel data in every file.
        for cut in [140, bytes.len() / 2, bytes.len() - 10] {
            assert!(decode_dicom(&bytes[..cut], &limits).is_err(), "{name} truncated to {cut} bytes decoded");
        }
    }
}

/// MR_small.dcm with some attributes replaced (or removed when `value` is None), re-encoded.
fn edited(edits: &[(dicom_core::Tag, VR, Option<PrimitiveValue>)]) -> Vec<u8> {
    let mut obj = dicom_object::OpenFileOptions::new().open_file(data_dir().join("MR_small.dcm")).unwrap();
    for (tag, vr, value) in edits {
        match value {
            Some(v) => {
                obj.put(DataElement::new(*tag, *vr, v.clone()));
            }
            None => {
                obj.remove_element(*tag);
            }
        }
    }
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

#[test]
fn oversized_header_is_refused_before_decoding() {
    // The pixel data is still the 8 KiB of a 64x64 image: only the header says 60000x60000.
    let bytes = edited(&[(tags::ROWS, VR::US, Some(PrimitiveValue::from(60000u16))), (tags::COLUMNS, VR::US, Some(PrimitiveValue::from(60000u16)))]);
    match decode_dicom(&bytes, &DecodeLimits::default()) {
        Err(DecodeError::TooLarge { width: 60000, height: 60000, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn multi_frame_and_missing_pixel_data_are_refused() {
    let bytes = edited(&[(tags::NUMBER_OF_FRAMES, VR::IS, Some(PrimitiveValue::from("2")))]);
    assert!(matches!(decode_dicom(&bytes, &DecodeLimits::default()), Err(DecodeError::MultiFrame(2))));
    let bytes = edited(&[(tags::PIXEL_DATA, VR::OW, None)]);
    assert!(matches!(decode_dicom(&bytes, &DecodeLimits::default()), Err(DecodeError::NoPixelData)));
    let bytes = edited(&[(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, Some(PrimitiveValue::from("PALETTE COLOR")))]);
    match decode_dicom(&bytes, &DecodeLimits::default()) {
        Err(DecodeError::UnsupportedPhotometric(p)) => assert_eq!(p, "PALETTE COLOR"),
        other => panic!("expected UnsupportedPhotometric, got {other:?}"),
    }
}
