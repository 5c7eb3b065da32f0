//! npy: reads the NumPy `.npy` files the Python pipeline saves its adversarial sets and
//! scores in (format versions 1.0, 2.0 and 3.0; little-endian float32/float64 and uint8,
//! C order, any rank), and writes float32 ones for tests and tools.
//!
//! Values come back as f32 as stored: uint8 pixels are not scaled to [0, 1] (the caller
//! knows whether the file holds 0..255 pixels or labels), and float64 values outside the
//! f32 range become infinite.
//!
//! Hand-written on purpose: npyz 0.8.4, tried in its place, panics on a 40-byte header whose
//! shape's product overflows (`attempt to multiply with overflow` in its header parser; release
//! builds wrap instead), writes no version 2.0 header (it asserts when one is needed) and
//! pads headers differently from NumPy. This reader checks every size before it allocates.

use thiserror::Error;

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Debug, Error, PartialEq)]
pub enum NpyError {
    #[error("not a .npy file: it does not start with \\x93NUMPY")]
    BadMagic,
    #[error(".npy format version {0}.{1} is not supported (supported: 1.0, 2.0, 3.0)")]
    UnsupportedVersion(u8, u8),
    #[error(".npy file is truncated: its header needs {needed} bytes, the file has {actual}")]
    Truncated { needed: usize, actual: usize },
    #[error(".npy header could not be parsed: {0}")]
    Header(String),
    #[error(".npy dtype '{0}' is not supported (supported: '<f4', '<f8', '|u1')")]
    UnsupportedDtype(String),
    #[error(".npy array is in Fortran order; re-save it in C order (np.ascontiguousarray)")]
    FortranOrder,
    #[error(".npy data is {actual} bytes, but shape {shape:?} of {item_size}-byte values needs {expected}")]
    DataLength { shape: Vec<usize>, item_size: usize, expected: usize, actual: usize },
}

/// An array in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Clone, Copy)]
enum Dtype {
    F32,
    F64,
    U8,
}

impl Dtype {
    fn parse(descr: &str) -> Result<Dtype, NpyError> {
        match descr {
            "<f4" => Ok(Dtype::F32),
            "<f8" => Ok(Dtype::F64),
            // A single byte has no byte order; NumPy writes '|', but '<' and '=' mean the same.
            "|u1" | "<u1" | "=u1" => Ok(Dtype::U8),
            _ => Err(NpyError::UnsupportedDtype(descr.to_string())),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::U8 => 1,
        }
    }
}

/// Parses a whole `.npy` file.
pub fn read_npy(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if !bytes.starts_with(MAGIC) {
        return Err(NpyError::BadMagic);
    }
    if bytes.len() < 8 {
        return Err(NpyError::Truncated { needed: 8, actual: bytes.len() });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(NpyError::UnsupportedVersion(major, minor)),
    };
    let prefix = 8 + len_bytes;
    let truncated = |needed| NpyError::Truncated { needed, actual: bytes.len() };
    let len_field = bytes.get(8..prefix).ok_or_else(|| truncated(prefix))?;
    let header_len = len_field.iter().rev().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let data_start = prefix.checked_add(header_len).ok_or_else(|| truncated(usize::MAX))?;
    let header = bytes.get(prefix..data_start).ok_or_else(|| truncated(data_start))?;
    // Version 3.0 only widens the header to UTF-8; every header this reader accepts is ASCII,
    // so reading bytes as Latin-1 chars serves all three versions.
    let header: String = header.iter().map(|&b| b as char).collect();
    let (descr, fortran_order, shape) = parse_header(&header)?;
    let dtype = Dtype::parse(&descr)?;
    if fortran_order {
        return Err(NpyError::FortranOrder);
    }

    let data = &bytes[data_start..];
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let expected = count.and_then(|n| n.checked_mul(dtype.size()));
    let (Some(count), Some(expected)) = (count, expected) else {
        return Err(NpyError::Header(format!("shape {shape:?} has more elements than fit in memory")));
    };
    if data.len() != expected {
        return Err(NpyError::DataLength { shape, item_size: dtype.size(), expected, actual: data.len() });
    }
    let mut values = Vec::with_capacity(count);
    match dtype {
        Dtype::F32 => values.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F64 => values.extend(data.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)),
        Dtype::U8 => values.extend(data.iter().map(|&b| b as f32)),
    }
    Ok(NpyArray { shape, data: values })
}

/// A `.npy` file (version 1.0, or 2.0 for a header over 64 KiB) holding `data` as
/// little-endian float32 of `shape`, padded as NumPy pads it so that the data is 64-byte aligned.
///
/// # Panics
/// If `data.len()` is not the product of `shape`: such a file would not read back.
pub fn write_npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let count: usize = shape.iter().product();
    assert_eq!(data.len(), count, "write_npy_f32: {} values do not fill shape {shape:?}", data.len());
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // The padding, not just the dict, must fit version 1.0's u16 length field.
    let prefix = |len_bytes: usize| MAGIC.len() + 2 + len_bytes;
    let padded_len = |len_bytes: usize| (prefix(len_bytes) + header.len() + 1).next_multiple_of(64) - prefix(len_bytes);
    let (version, len_bytes) = if padded_len(2) <= u16::MAX as usize { (1u8, 2) } else { (2u8, 4) };
    let padding = padded_len(len_bytes) - header.len() - 1;
    header.extend(std::iter::repeat_n(' ', padding));
    header.push('\n');

    let mut out = Vec::with_capacity(prefix(len_bytes) + header.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes()[..len_bytes]);
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The header is a Python dict literal; a full literal parser is not needed because NumPy
/// writes only strings, booleans and tuples of ints in it.
fn parse_header(text: &str) -> Result<(String, bool, Vec<usize>), NpyError> {
    let mut p = Parser { chars: text.chars().collect(), pos: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect('{')?;
    loop {
        if p.eat('}') {
            break;
        }
        let key = p.string()?;
        p.expect(':')?;
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            _ => return Err(NpyError::Header(format!("unexpected key {key:?}"))),
        }
        if !p.eat(',') {
            p.expect('}')?;
            break;
        }
    }
    p.skip_space();
    if p.pos != p.chars.len() {
        return Err(NpyError::Header(format!("unexpected text after the dict at character {}", p.pos)));
    }
    let missing = |k: &str| NpyError::Header(format!("the header has no {k:?}"));
    Ok((descr.ok_or_else(|| missing("descr"))?, fortran.ok_or_else(|| missing("fortran_order"))?, shape.ok_or_else(|| missing("shape"))?))
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn skip_space(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        let hit = self.chars.get(self.pos) == Some(&c);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect(&mut self, c: char) -> Result<(), NpyError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {c:?}")))
        }
    }

    fn error(&self, what: &str) -> NpyError {
        let found = self.chars.get(self.pos).map_or("the end".to_string(), |c| format!("{c:?}"));
        NpyError::Header(format!("{what} at character {}, found {found}", self.pos))
    }

    fn string(&mut self) -> Result<String, NpyError> {
        self.skip_space();
        let quote = match self.chars.get(self.pos) {
            Some(&q) if q == '\'' || q == '"' => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        let start = self.pos + 1;
        let len = self.chars[start..].iter().position(|&c| c == quote).ok_or_else(|| self.error("unterminated string"))?;
        self.pos = start + len + 1;
        Ok(self.chars[start..start + len].iter().collect())
    }

    fn word(&mut self) -> String {
        self.skip_space();
        let start = self.pos;
        while self.chars.get(self.pos).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_') {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn boolean(&mut self) -> Result<bool, NpyError> {
        let at = self.pos;
        match self.word().as_str() {
            "True" => Ok(true),
            "False" => Ok(false),
            _ => {
                self.pos = at;
                Err(self.error("expected True or False"))
            }
        }
    }

    /// `()`, `(5,)`, `(3, 1, 64, 64)`; Python 2's `5L` longs are accepted too.
    fn tuple(&mut self) -> Result<Vec<usize>, NpyError> {
        self.expect('(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(dims);
            }
            self.skip_space();
            let at = self.pos;
            let word = self.word();
            let digits = word.strip_suffix('L').unwrap_or(&word);
            match digits.parse::<usize>() {
                Ok(d) => dims.push(d),
                Err(_) => {
                    self.pos = at;
                    return Err(self.error("expected a dimension (a non-negative integer)"));
                }
            }
            if !self.eat(',') {
                self.expect(')')?;
                return Ok(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests;
