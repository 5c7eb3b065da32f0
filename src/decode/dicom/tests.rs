use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_object::FileMetaTableBuilder;

use super::*;

/// A one-frame 8-bit monochrome image of `rows` x `cols` in `transfer_syntax`, with `pixels`
/// as native bytes or, for an encapsulated syntax, as the one fragment.
fn image(transfer_syntax: &str, rows: u16, cols: u16, pixels: Vec<u8>) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
    obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("MONOCHROME2")));
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)));
    obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)));
    obj.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)));
    obj.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)));
    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)));
    if transfer_syntax.starts_with("1.2.840.10008.1.2.4.") {
        let seq = PixelFragmentSequence::new_fragments(vec![pixels]);
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
    } else {
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)));
    }
    let meta = FileMetaTableBuilder::new().transfer_syntax(transfer_syntax);
    let meta = meta.media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7").media_storage_sop_instance_uid("1.2.3");
    let mut buf = Vec::new();
    obj.with_exact_meta(meta.build().unwrap()).write_all(&mut buf).unwrap();
    buf
}

fn tiny_limits() -> DecodeLimits {
    DecodeLimits { max_pixels: 64 * 64 }
}

#[test]
fn garbage_and_truncated_input_are_errors() {
    let limits = DecodeLimits::default();
    assert!(matches!(decode_dicom(b"", &limits), Err(DecodeError::MalformedDicom(_))));
    let mut junk = vec![0x5Au8; 600];
    assert!(decode_dicom(&junk, &limits).is_err());
    junk[128..132].copy_from_slice(b"DICM");
    assert!(matches!(decode_dicom(&junk, &limits), Err(DecodeError::MalformedDicom(_))));
    let buf = image(EXPLICIT_LE, 4, 4, vec![7; 16]);
    for cut in [132, buf.len() / 2, buf.len() - 1] {
        assert!(decode_dicom(&buf[..cut], &limits).is_err(), "cut at {cut}");
    }
    assert_eq!(decode_dicom(&buf, &limits).unwrap().data.len(), 16);
}

#[test]
fn a_deflated_data_set_decodes_and_a_deflate_bomb_stops_at_the_bound() {
    let small = image(DEFLATED, 8, 8, (0..64).collect());
    let native = image(EXPLICIT_LE, 8, 8, (0..64).collect());
    assert!(small.len() < native.len());
    assert_eq!(decode_dicom(&small, &tiny_limits()).unwrap(), decode_dicom(&native, &tiny_limits()).unwrap());
    // 32 MiB of zeros deflate to ~150 KB here; the bound for 64x64 pixels is ~16 MiB.
    let bomb = image(DEFLATED, 4096, 8192, vec![0; 32 << 20]);
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    let err = decode_dicom(&bomb, &tiny_limits()).unwrap_err();
    assert!(err.to_string().contains("inflates past"), "{err}");
    // Within a budget, the inflation stops as soon as the budget is spent.
    let budget = DecodeBudget::new(8 << 20, std::time::Duration::ZERO);
    let mut res = budget.reserve(Default::default(), None);
    let err = decode_dicom_within(&bomb, &DecodeLimits::default(), &mut res).unwrap_err();
    assert!(matches!(err, DecodeError::BudgetExhausted { .. } | DecodeError::OverBudget { .. }), "{err}");
}

fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut d = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8];
    d.extend(height.to_be_bytes());
    d.extend(width.to_be_bytes());
    d.extend([1, 1, 0x11, 0, 0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 0, 0, 0xFF, 0xD9]);
    d
}

#[test]
fn a_codestream_that_lies_about_its_size_is_refused_before_decoding() {
    let bomb = image("1.2.840.10008.1.2.4.50", 64, 64, jpeg_claiming(65500, 65500));
    assert!(bomb.len() < 1000);
    let err = decode_dicom(&bomb, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { width: 65500, height: 65500, .. }), "{err}");
    let err = decode_dicom(&image("1.2.840.10008.1.2.4.50", 64, 64, jpeg_claiming(128, 64)), &DecodeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("declares 128x64 pixels but Columns x Rows is 64x64"), "{err}");
}

#[test]
fn decoding_reserves_what_it_allocates() {
    let file = image(EXPLICIT_LE, 64, 64, vec![1; 4096]);
    let budget = DecodeBudget::new(1 << 30, std::time::Duration::ZERO);
    let mut res = budget.reserve(Default::default(), None);
    decode_dicom_within(&file, &DecodeLimits::default(), &mut res).unwrap();
    // The parsed object (the file and its 9 elements), the decoded copy (4096) and the f32
    // output (16384).
    assert_eq!(res.held(), file.len() as u64 - 128 + 9 * PER_ELEMENT + 4096 + 4 * 4096);
    let tight = DecodeBudget::new(8192, std::time::Duration::ZERO);
    let mut res = tight.reserve(Default::default(), None);
    assert!(matches!(decode_dicom_within(&file, &DecodeLimits::default(), &mut res), Err(DecodeError::OverBudget { .. })));
}
