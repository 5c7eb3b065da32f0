use super::*;

fn header(photometric: &str, samples: u32, bits_stored: u32, signed: bool) -> Header {
    let photometric = photometric.to_string();
    Header { rows: 1, cols: 2, frames: 1, samples, bits_allocated: 16, bits_stored, signed, photometric }
}

fn bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// Renders 16-bit stored values (unsigned, all 16 bits stored).
fn render(obj: &InMemDicomObject, stored: &[u16], invert: bool) -> Vec<f32> {
    let data = bytes(stored);
    let h = header("MONOCHROME2", 1, 16, false);
    render_monochrome(obj, &Samples::new(&data, stored.len(), &h).unwrap(), invert).unwrap()
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

fn test_obj(photometric: &str) -> InMemDicomObject {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from(photometric)));
    obj
}

#[test]
fn monochrome1_is_inverted_after_min_max() {
    let obj = test_obj("MONOCHROME1");
    assert_eq!(render(&obj, &[0, 50, 100], true), vec![1.0, 0.5, 0.0]);
    assert_eq!(render(&obj, &[0, 50, 100], false), vec![0.0, 0.5, 1.0]);
    // A constant image maps to 0 (1 once inverted), never NaN.
    assert_eq!(render(&obj, &[7, 7], true), vec![1.0, 1.0]);
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
    assert_eq!(render(&obj, &[5, 10, 11, 12, 99], false), vec![0.0, 0.0, 0.2, 1.0, 1.0]);
}

#[test]
fn stored_values_are_masked_and_sign_extended() {
    let data = bytes(&[0xFFFF, 0xF7FF]);
    let read = |h: &Header| {
        let s = Samples::new(&data, 2, h).unwrap();
        (0..s.len()).map(|i| s.get(i)).collect::<Vec<_>>()
    };
    assert_eq!(read(&header("MONOCHROME2", 1, 12, true)), vec![-1, 2047]);
    assert_eq!(read(&header("MONOCHROME2", 1, 12, false)), vec![4095, 2047]);
    assert!(Samples::new(&data[..3], 2, &header("MONOCHROME2", 1, 12, true)).is_err());
}

#[test]
fn colour_layouts() {
    // Planar RGB, 8 bits stored: R plane, G plane, B plane.
    let out = render_colour(&bytes(&[255, 0, 0, 51, 0, 255]), 2, 2, &header("RGB", 3, 8, false), false, true);
    assert_eq!(out.unwrap(), vec![1.0, 0.0, 0.0, 0.2, 0.0, 1.0]);
    // Native YBR_FULL_422: Y1 Y2 Cb Cr, neutral chroma -> grey.
    let out = render_colour(&bytes(&[255, 0, 128, 128]), 2, 2, &header("YBR_FULL_422", 3, 8, false), false, false);
    assert_eq!(out.unwrap(), vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    assert_eq!(ybr_to_rgb([76.0, 85.0, 255.0], 255.0), [254.0, 0.0, 0.0]); // pure red, BT.601
}
