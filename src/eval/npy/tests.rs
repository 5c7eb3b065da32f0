//! Files written by NumPy 2.4 (`np.save`, `np.lib.format.write_array(..., version=...)`),
//! embedded byte for byte so that the tests need no Python.

use super::*;

/// np.array([[1.5, -2.0, 0.25], [3.0, 1e-3, -0.0]], dtype='<f4')
const F32_2X3: &[u8] = b"\x93NUMPY\x01\x00\x76\x00\
    {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \n\
    \x00\x00\xc0\x3f\x00\x00\x00\xc0\x00\x00\x80\x3e\x00\x00\x40\x40\x6f\x12\x83\x3a\x00\x00\x00\x80";
/// np.array([0.1, -1.0, 1e300, 2.5], dtype='<f8')
const F64_4: &[u8] = b"\x93NUMPY\x01\x00\x76\x00\
    {'descr': '<f8', 'fortran_order': False, 'shape': (4,), }                                                            \n\
    \x9a\x99\x99\x99\x99\x99\xb9\x3f\x00\x00\x00\x00\x00\x00\xf0\xbf\x9c\x75\x00\x88\x3c\xe4\x37\x7e\x00\x00\x00\x00\x00\x00\x04\x40";
/// np.array([[0, 1], [254, 255]], dtype='u1')
const U8_2X2: &[u8] = b"\x93NUMPY\x01\x00\x76\x00\
    {'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }                                                          \n\
    \x00\x01\xfe\xff";
/// np.arange(5, dtype='<f4'), format version 2.0
const V2_F32_5: &[u8] = b"\x93NUMPY\x02\x00\x74\x00\x00\x00\
    {'descr': '<f4', 'fortran_order': False, 'shape': (5,), }                                                          \n\
    \x00\x00\x00\x00\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40";
/// np.array([0.5, 4.0], dtype='<f4'), format version 3.0
const V3_F32_2: &[u8] = b"\x93NUMPY\x03\x00\x74\x00\x00\x00\
    {'descr': '<f4', 'fortran_order': False, 'shape': (2,), }                                                          \n\
    \x00\x00\x00\x3f\x00\x00\x80\x40";
/// np.array(7.25, dtype='<f4'): a 0-d array
const F32_SCALAR: &[u8] = b"\x93NUMPY\x01\x00\x76\x00\
    {'descr': '<f4', 'fortran_order': False, 'shape': (), }                                                              \n\
    \x00\x00\xe8\x40";
/// np.asfortranarray(np.arange(6, dtype='<f4').reshape(2, 3))
const F32_FORTRAN: &[u8] = b"\x93NUMPY\x01\x00\x76\x00\
    {'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }                                                           \n\
    \x00\x00\x00\x00\x00\x00\x40\x40\x00\x00\x80\x3f\x00\x00\x80\x40\x00\x00\x00\x40\x00\x00\xa0\x40";
/// np.arange(3, dtype='<i8')
const I64_3: &[u8] = b"\x93NUMPY\x01\x00\x76\x00\
    {'descr': '<i8', 'fortran_order': False, 'shape': (3,), }                                                            \n\
    \x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00";

/// A version 1.0 file with a hand-written header, to probe the header parser.
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn header_error(bytes: &[u8]) -> String {
    match read_npy(bytes) {
        Err(NpyError::Header(msg)) => msg,
        other => panic!("expected a header error, got {other:?}"),
    }
}

#[test]
fn reads_numpy_float32() {
    let a = read_npy(F32_2X3).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, vec![1.5, -2.0, 0.25, 3.0, 1e-3, -0.0]);
    assert!(a.data[5].is_sign_negative());
}

#[test]
fn reads_numpy_float64_as_f32() {
    let a = read_npy(F64_4).unwrap();
    assert_eq!(a.shape, vec![4]);
    assert_eq!(a.data, vec![0.1, -1.0, f32::INFINITY, 2.5]);
}

#[test]
fn reads_numpy_uint8_unscaled() {
    let a = read_npy(U8_2X2).unwrap();
    assert_eq!(a.shape, vec![2, 2]);
    assert_eq!(a.data, vec![0.0, 1.0, 254.0, 255.0]);
}

#[test]
fn reads_format_versions_2_and_3_and_0d_arrays() {
    assert_eq!(read_npy(V2_F32_5).unwrap(), NpyArray { shape: vec![5], data: vec![0.0, 1.0, 2.0, 3.0, 4.0] });
    assert_eq!(read_npy(V3_F32_2).unwrap(), NpyArray { shape: vec![2], data: vec![0.5, 4.0] });
    assert_eq!(read_npy(F32_SCALAR).unwrap(), NpyArray { shape: vec![], data: vec![7.25] });
}

#[test]
fn writes_what_numpy_writes() {
    assert_eq!(write_npy_f32(&[2, 3], &[1.5, -2.0, 0.25, 3.0, 1e-3, -0.0]), F32_2X3);
    assert_eq!(write_npy_f32(&[], &[7.25]), F32_SCALAR);
}

#[test]
fn round_trips_any_rank() {
    let cases: [(&[usize], usize); 5] = [(&[], 1), (&[5], 5), (&[3, 1, 4, 4], 48), (&[0, 3], 0), (&[2, 0], 0)];
    for (shape, n) in cases {
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = write_npy_f32(shape, &data);
        let header_end = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!(header_end % 64, 0, "{shape:?}: data not aligned");
        assert_eq!(read_npy(&bytes).unwrap(), NpyArray { shape: shape.to_vec(), data }, "{shape:?}");
    }
}

#[test]
fn writes_version_2_when_the_padded_header_outgrows_u16() {
    // Around 21,830 dimensions the padded header crosses 65,535 bytes.
    let mut versions = Vec::new();
    for n in 21_790..21_850 {
        let shape = vec![1usize; n];
        let bytes = write_npy_f32(&shape, &[2.0]);
        let header_end = match bytes[6] {
            1 => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
            _ => 12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        };
        assert_eq!(header_end % 64, 0, "{n} dimensions: data not aligned");
        assert_eq!(read_npy(&bytes).unwrap(), NpyArray { shape, data: vec![2.0] }, "{n} dimensions");
        versions.push(bytes[6]);
    }
    assert!(versions.contains(&1) && versions.contains(&2));
    assert!(versions.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn header_parser_tolerates_spacing_and_quotes() {
    let data = [0u8, 0, 0x80, 0x3f, 0, 0, 0, 0x40];
    let headers = [
        "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,)}\n",
        "{ 'shape' : ( 2 , ) ,  'fortran_order' : False , 'descr' : '<f4' , }   \n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2L), }\n",
        "{'descr':'<f4','fortran_order':False,'shape':(2,1,1)}",
    ];
    for h in headers {
        let a = read_npy(&with_header(h, &data)).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert_eq!(a.data, vec![1.0, 2.0], "{h}");
    }
}

#[test]
fn refuses_malformed_headers_with_reasons() {
    let bad = |h: &str| header_error(&with_header(h, &[]));
    assert!(bad("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (0,), }").contains("True or False"));
    assert!(bad("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }").contains("dimension"));
    assert!(bad("{'descr': '<f4', 'fortran_order': False, }").contains("no \"shape\""));
    assert!(bad("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), 'x': 1}").contains("unexpected key"));
    assert!(bad("{'descr': '<f4, 'fortran_order': False, 'shape': (0,)}").contains("expected '}'"));
    assert!(bad("{'descr': '<f4', 'fortran_order': False, 'shape': (0,)} junk").contains("after the dict"));
    assert!(bad("['<f4']").contains("expected '{'"));
    assert!(bad("{'descr': '<f4'").contains("found the end"));
    let huge = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", usize::MAX, 2);
    assert!(bad(&huge).contains("more elements"));
}

#[test]
fn refuses_fortran_order_and_other_dtypes() {
    assert_eq!(read_npy(F32_FORTRAN), Err(NpyError::FortranOrder));
    assert_eq!(read_npy(I64_3), Err(NpyError::UnsupportedDtype("<i8".into())));
    assert!(NpyError::UnsupportedDtype("<i8".into()).to_string().contains("'<i8'"));
    let mut big_endian = F32_2X3.to_vec();
    let at = big_endian.windows(3).position(|w| w == b"<f4").unwrap();
    big_endian[at] = b'>';
    assert_eq!(read_npy(&big_endian), Err(NpyError::UnsupportedDtype(">f4".into())));
}

#[test]
fn refuses_other_files_and_truncation() {
    assert_eq!(read_npy(b""), Err(NpyError::BadMagic));
    assert_eq!(read_npy(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Err(NpyError::BadMagic));
    let mut v4 = F32_2X3.to_vec();
    v4[6] = 4;
    assert_eq!(read_npy(&v4), Err(NpyError::UnsupportedVersion(4, 0)));
    assert_eq!(read_npy(&F32_2X3[..7]), Err(NpyError::Truncated { needed: 8, actual: 7 }));
    assert_eq!(read_npy(&F32_2X3[..9]), Err(NpyError::Truncated { needed: 10, actual: 9 }));
    assert_eq!(read_npy(&F32_2X3[..50]), Err(NpyError::Truncated { needed: 128, actual: 50 }));
    let short = read_npy(&F32_2X3[..F32_2X3.len() - 1]);
    assert_eq!(short, Err(NpyError::DataLength { shape: vec![2, 3], item_size: 4, expected: 24, actual: 23 }));
    let mut long = F32_2X3.to_vec();
    long.push(0);
    assert!(matches!(read_npy(&long), Err(NpyError::DataLength { actual: 25, .. })));
}
