//! A bounds pre-scan of DICOM element lengths, run before dicom-rs parses anything.
//!
//! dicom-rs allocates and zero-fills whatever length an element header declares before it
//! finds out the bytes are not there: a 39 KB file whose Pixel Data claims 4 GiB cost
//! 4.2 GB of memory and two minutes of CPU before the parser gave up. Here every defined
//! length, in the meta group and the data set, nested sequences included, must fit in the
//! bytes actually received; walking the headers is cheap and allocates nothing.

const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 32;
/// VRs whose explicit header is 12 bytes with a 32-bit length.
const LONG_VRS: &[&[u8; 2]] = &[b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"];
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

#[derive(Clone, Copy)]
enum Encoding {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
}

/// Checks the file meta group of `body` (starting at "DICM"); returns where the data set
/// starts. Run before the meta group is parsed.
pub(crate) fn check_meta(body: &[u8]) -> Result<usize, String> {
    let mut w = Walker { buf: body, pos: 4, enc: Encoding::ExplicitLe, elements: 0 };
    while w.pos + 4 <= body.len() && w.u16_at(w.pos) == 0x0002 {
        let (_, _, _, len, hdr) = w.header()?;
        w.pos += hdr;
        w.skip(len)?;
    }
    Ok(w.pos)
}

/// Checks the data set of `body`, from `start` (see [`check_meta`]), in the encoding of
/// `transfer_syntax`; returns how many elements and items it holds (each costs the parser
/// far more memory than its header's bytes).
pub(crate) fn check_data_set(body: &[u8], start: usize, transfer_syntax: &str) -> Result<u64, String> {
    let mut w = Walker { buf: body, pos: start, enc: Encoding::ExplicitLe, elements: 0 };
    w.enc = match transfer_syntax {
        "1.2.840.10008.1.2" => Encoding::ImplicitLe,
        "1.2.840.10008.1.2.2" => Encoding::ExplicitBe,
        // Deflated data sets cannot be walked without inflating them: parsed as they are.
        "1.2.840.10008.1.2.1.99" => return Ok(0),
        _ => Encoding::ExplicitLe,
    };
    w.walk(body.len(), 0, true)?;
    Ok(w.elements)
}

/// Bytes the Pixel Data of the explicit-VR little-endian data set starting in `prefix`
/// needs (Rows x Columns x SamplesPerPixel x BitsAllocated / 8, one frame), read from the
/// top-level Image Pixel attributes that precede it; None when the prefix ends (or the
/// Pixel Data starts) before all four are seen. Lets an inflating decoder bound a deflated
/// data set by what its own header declares.
pub(crate) fn pixel_bytes_declared(prefix: &[u8]) -> Option<u64> {
    let mut w = Walker { buf: prefix, pos: 0, enc: Encoding::ExplicitLe, elements: 0 };
    let (mut rows, mut cols, mut samples, mut bits) = (None, None, None, None);
    while let Ok((group, elem, _, len, hdr)) = w.header() {
        if (group, elem) == PIXEL_DATA || len == UNDEFINED {
            break;
        }
        let value = prefix.get(w.pos + hdr..w.pos + hdr + len as usize)?;
        if group == 0x0028 && len == 2 {
            let v = Some(u64::from(u16::from_le_bytes([value[0], value[1]])));
            match elem {
                0x0002 => samples = v,
                0x0010 => rows = v,
                0x0011 => cols = v,
                0x0100 => bits = v,
                _ => {}
            }
        }
        if let (Some(r), Some(c), Some(s), Some(b)) = (rows, cols, samples, bits) {
            return Some(r * c * s * b.div_ceil(8));
        }
        w.pos += hdr + len as usize;
    }
    None
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    enc: Encoding,
    /// Element and item headers walked so far.
    elements: u64,
}

impl Walker<'_> {
    fn u16_at(&self, at: usize) -> u16 {
        let b = [self.buf[at], self.buf[at + 1]];
        if matches!(self.enc, Encoding::ExplicitBe) {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = [self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]];
        if matches!(self.enc, Encoding::ExplicitBe) {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// (group, element, is_sequence, length, header size) of the element at `pos`.
    fn header(&self) -> Result<(u16, u16, bool, u32, usize), String> {
        let at = self.pos;
        let need = |n: usize| if at + n <= self.buf.len() { Ok(()) } else { Err(format!("element header at byte {at} is cut off")) };
        need(8)?;
        let (group, elem) = (self.u16_at(at), self.u16_at(at + 2));
        if group == 0xFFFE || matches!(self.enc, Encoding::ImplicitLe) {
            return Ok((group, elem, false, self.u32_at(at + 4), 8));
        }
        let vr = [self.buf[at + 4], self.buf[at + 5]];
        if LONG_VRS.contains(&&vr) {
            need(12)?;
            Ok((group, elem, &vr == b"SQ", self.u32_at(at + 8), 12))
        } else {
            let len = if matches!(self.enc, Encoding::ExplicitBe) {
                u16::from_be_bytes([self.buf[at + 6], self.buf[at + 7]])
            } else {
                u16::from_le_bytes([self.buf[at + 6], self.buf[at + 7]])
            };
            Ok((group, elem, false, len as u32, 8))
        }
    }

    /// Where a value of `len` bytes starting at `pos` ends, if it fits in the input.
    fn end_of(&self, len: u32) -> Result<usize, String> {
        let left = self.buf.len() - self.pos;
        if len == UNDEFINED || len as usize > left {
            return Err(format!("an element at byte {} declares {len} bytes but only {left} follow", self.pos));
        }
        Ok(self.pos + len as usize)
    }

    fn skip(&mut self, len: u32) -> Result<(), String> {
        self.pos = self.end_of(len)?;
        Ok(())
    }

    /// Walks elements up to `end` or the next delimiter item. `datasets`: whether items met
    /// here hold data sets (sequences) or raw bytes (encapsulated pixel data fragments).
    fn walk(&mut self, end: usize, depth: usize, datasets: bool) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        while self.pos < end {
            let (group, elem, is_sq, len, hdr) = self.header()?;
            self.elements += 1;
            self.pos += hdr;
            if group == 0xFFFE {
                match elem {
                    0xE00D | 0xE0DD => return Ok(()),
                    0xE000 if len == UNDEFINED && datasets => self.walk(end, depth + 1, true)?,
                    0xE000 if datasets => {
                        let item_end = self.end_of(len)?;
                        self.walk(item_end, depth + 1, true)?;
                        self.pos = item_end;
                    }
                    0xE000 => self.skip(len)?,
                    _ => return Err(format!("unexpected item tag (FFFE,{elem:04X}) at byte {}", self.pos - hdr)),
                }
                continue;
            }
            if len == UNDEFINED {
                // A sequence, or encapsulated pixel data (whose items are raw fragments).
                let fragments = (group, elem) == PIXEL_DATA;
                self.walk(end, depth + 1, !fragments)?;
            } else if is_sq {
                let seq_end = self.end_of(len)?;
                self.walk(seq_end, depth + 1, true)?;
                self.pos = seq_end;
            } else {
                self.skip(len)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(tag: (u16, u16), vr: &[u8; 2], value: &[u8], declared: Option<u32>) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend(tag.0.to_le_bytes());
        e.extend(tag.1.to_le_bytes());
        e.extend(vr);
        if LONG_VRS.contains(&vr) {
            e.extend([0, 0]);
            e.extend(declared.unwrap_or(value.len() as u32).to_le_bytes());
        } else {
            e.extend((declared.unwrap_or(value.len() as u32) as u16).to_le_bytes());
        }
        e.extend(value);
        e
    }

    fn check(body: &[u8]) -> Result<(), String> {
        let start = check_meta(body)?;
        check_data_set(body, start, "1.2.840.10008.1.2.1").map(|_| ())
    }

    #[test]
    fn an_overrun_in_the_meta_group_is_refused() {
        let mut body = b"DICM".to_vec();
        body.extend(element((0x0002, 0x0001), b"OB", &[0, 1], Some(0x7FFF_FFFF)));
        assert!(check_meta(&body).unwrap_err().contains("declares"));
    }

    fn file(data_set: &[u8]) -> Vec<u8> {
        let mut f = b"DICM".to_vec();
        f.extend(element((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0", None));
        f.extend(data_set);
        f
    }

    #[test]
    fn lengths_within_the_input_pass_and_overruns_are_refused() {
        let ok = file(&element((0x0010, 0x0010), b"PN", b"DOE^J ", None));
        assert!(check(&ok).is_ok());
        let huge = file(&element((0x7FE0, 0x0010), b"OW", &[0; 16], Some(0xFFFF_FFF0)));
        let err = check(&huge).unwrap_err();
        assert!(err.contains("declares 4294967280 bytes"), "{err}");
    }

    #[test]
    fn the_declared_pixel_bytes_are_read_from_a_prefix() {
        let us = |e: u16, v: u16| element((0x0028, e), b"US", &v.to_le_bytes(), None);
        let mut d = [us(0x0002, 1), us(0x0010, 512), us(0x0011, 256)].concat();
        assert_eq!(pixel_bytes_declared(&d), None, "BitsAllocated not seen yet");
        d.extend(us(0x0100, 16));
        assert_eq!(pixel_bytes_declared(&d), Some(512 * 256 * 2));
        assert_eq!(pixel_bytes_declared(&d[..d.len() - 3]), None, "cut inside an element");
    }

    #[test]
    fn an_overrun_nested_in_a_sequence_is_found() {
        let inner = element((0x0008, 0x0100), b"UT", &[b'x'; 4], Some(1 << 30));
        let mut item = Vec::new();
        item.extend(0xFFFEu16.to_le_bytes());
        item.extend(0xE000u16.to_le_bytes());
        item.extend((inner.len() as u32).to_le_bytes());
        item.extend(&inner);
        let seq = element((0x0008, 0x1140), b"SQ", &item, None);
        let err = check(&file(&seq)).unwrap_err();
        assert!(err.contains("1073741824"), "{err}");
    }
}
