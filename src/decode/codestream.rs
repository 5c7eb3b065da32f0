//! codestream: what a JPEG or JPEG 2000 codestream says about itself, read from its marker
//! segments without decoding anything.
//!
//! The codecs allocate at the size the codestream declares, not at the DICOM header's
//! Rows x Columns: a 7 KB DICOM whose JPEG claims 65500x65500 made the decoder allocate
//! gigabytes. Every encapsulated frame is checked here against its header first, and a
//! JPEG is refused when it ends before its last scan (libjpeg would pad the missing rows
//! and the classifier would see grey where the image was cut).

/// Size and components a codestream declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub width: u64,
    pub height: u64,
    pub components: u32,
    /// Bits per sample (JPEG: the frame's precision; JPEG 2000: the largest component's).
    pub precision: u32,
    /// JPEG 2000 tiles (1 for JPEG): each costs the codec its own bookkeeping.
    pub tiles: u64,
}

/// The frame header (SOFn) of a JPEG codestream: exactly one before the first scan.
pub fn jpeg(data: &[u8]) -> Result<Declared, String> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("JPEG codestream does not start with SOI (FFD8)".into());
    }
    let mut pos = 2;
    let mut frame: Option<Declared> = None;
    loop {
        let (marker, at) = next_marker(data, pos).ok_or("JPEG codestream ends before its first scan (no SOS)")?;
        if marker == 0xD8 || marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos = at + 2;
            continue;
        }
        if marker == 0xD9 {
            return Err("JPEG codestream ends (EOI) before its first scan".into());
        }
        let len = be16(data, at + 2).ok_or("JPEG marker segment cut off")? as usize;
        let seg = data.get(at + 4..at + 2 + len).filter(|_| len >= 2).ok_or("JPEG marker segment longer than the data")?;
        match marker {
            0xDA => return frame.ok_or_else(|| "JPEG scan (SOS) before any frame header (SOF)".into()),
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if frame.is_some() {
                    return Err("JPEG codestream has more than one frame header (SOF)".into());
                }
                if seg.len() < 6 {
                    return Err("JPEG frame header (SOF) is cut off".into());
                }
                let height = u64::from(u16::from_be_bytes([seg[1], seg[2]]));
                let width = u64::from(u16::from_be_bytes([seg[3], seg[4]]));
                if height == 0 {
                    // The height would come later in a DNL segment: refuse rather than guess.
                    return Err("JPEG frame header declares height 0 (DNL) which is not supported".into());
                }
                frame = Some(Declared { width, height, components: u32::from(seg[5]), precision: u32::from(seg[0]), tiles: 1 });
            }
            _ => {}
        }
        pos = at + 2 + len;
    }
}

/// The image and tile size (SIZ) of a raw JPEG 2000 codestream, as DICOM encapsulates it
/// (PS3.5 A.4.4). A JP2 file is refused: the codec would decode its `jp2c` box while a SIZ
/// hidden in another box could be the one read here.
pub fn j2k(data: &[u8]) -> Result<Declared, String> {
    if !data.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Err("the JPEG 2000 fragment does not start with SOC + SIZ (a raw codestream, as DICOM requires)".into());
    }
    let s = &data[4..];
    let u32_at = |o: usize| s.get(o..o + 4).map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
    let cut = || "JPEG 2000 SIZ marker segment is cut off".to_string();
    let csiz = be16(s, 36).ok_or_else(cut)? as usize;
    let (xsiz, ysiz, xo, yo) = (u32_at(4).ok_or_else(cut)?, u32_at(8).ok_or_else(cut)?, u32_at(12).ok_or_else(cut)?, u32_at(16).ok_or_else(cut)?);
    let (xt, yt, xto, yto) = (u32_at(20).ok_or_else(cut)?, u32_at(24).ok_or_else(cut)?, u32_at(28).ok_or_else(cut)?, u32_at(32).ok_or_else(cut)?);
    if xo >= xsiz || yo >= ysiz || xt == 0 || yt == 0 || xto > xo || yto > yo || xto + xt <= xo || yto + yt <= yo {
        return Err(format!("JPEG 2000 SIZ is inconsistent (image {xsiz}x{ysiz} offset {xo},{yo}, tiles {xt}x{yt} offset {xto},{yto})"));
    }
    if csiz == 0 {
        return Err("JPEG 2000 SIZ declares no components".into());
    }
    let comps = s.get(38..38 + 3 * csiz).ok_or_else(cut)?;
    let mut precision = 0;
    for c in comps.chunks_exact(3) {
        if c[1] == 0 || c[2] == 0 {
            return Err("JPEG 2000 component with a subsampling factor of 0".into());
        }
        precision = precision.max(u32::from(c[0] & 0x7F) + 1);
    }
    let tiles = (xsiz - xto).div_ceil(xt) * (ysiz - yto).div_ceil(yt);
    Ok(Declared { width: xsiz - xo, height: ysiz - yo, components: csiz as u32, precision, tiles })
}

/// Whether a JPEG file has its end-of-image marker after its last scan (a file cut short
/// has not). Markers cannot occur inside entropy-coded data (0xFF is stuffed as FF00), and
/// a thumbnail's EOI inside an APP segment lies before the first scan.
pub fn jpeg_is_complete(data: &[u8]) -> bool {
    let last_scan = data.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = data.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_scan, last_eoi), (Some(s), Some(e)) if e > s)
}

/// The next marker at or after `pos` (skipping fill bytes): (marker byte, offset of its FF).
fn next_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    while pos + 1 < data.len() {
        if data[pos] == 0xFF && data[pos + 1] != 0xFF && data[pos + 1] != 0x00 {
            return Some((data[pos + 1], pos));
        }
        pos += 1;
    }
    None
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sof(width: u16, height: u16, components: u8) -> Vec<u8> {
        let mut d = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0];
        d.extend([0xFF, 0xC0, 0, 8 + 3 * components, 8]);
        d.extend(height.to_be_bytes());
        d.extend(width.to_be_bytes());
        d.push(components);
        for c in 0..components {
            d.extend([c + 1, 0x11, 0]);
        }
        d.extend([0xFF, 0xDA, 0, 2, 0x12, 0x34, 0xFF, 0x00, 0xFF, 0xD9]);
        d
    }

    #[test]
    fn jpeg_frame_header_is_read() {
        let d = jpeg(&sof(65500, 60000, 3)).unwrap();
        assert_eq!((d.width, d.height, d.components, d.precision), (65500, 60000, 3, 8));
        assert!(jpeg_is_complete(&sof(4, 4, 1)));
    }

    #[test]
    fn jpeg_without_frame_or_cut_short_is_refused() {
        assert!(jpeg(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).unwrap_err().contains("before any frame"));
        assert!(jpeg(b"not a jpeg").is_err());
        let full = sof(4, 4, 1);
        assert!(jpeg(&full[..12]).is_err());
        assert!(!jpeg_is_complete(&full[..full.len() - 2]));
        let mut two = sof(4, 4, 1);
        let at = two.len() - 10;
        two.splice(at..at, [0xFF, 0xC1, 0, 8, 8, 0, 4, 0, 4, 0]);
        assert!(jpeg(&two).unwrap_err().contains("more than one"));
    }

    fn siz(w: u32, h: u32, tile: u32, comps: u16) -> Vec<u8> {
        let mut d = vec![0xFF, 0x4F, 0xFF, 0x51];
        d.extend((38 + 3 * comps).to_be_bytes());
        d.extend([0, 0]);
        for v in [w, h, 0, 0, tile, tile, 0, 0] {
            d.extend(v.to_be_bytes());
        }
        d.extend(comps.to_be_bytes());
        for _ in 0..comps {
            d.extend([15, 1, 1]);
        }
        d
    }

    #[test]
    fn j2k_size_and_tiles_are_read() {
        let d = j2k(&siz(65500, 65500, 1, 1)).unwrap();
        assert_eq!((d.width, d.height, d.components, d.precision, d.tiles), (65500, 65500, 1, 16, 65500 * 65500));
        let d = j2k(&siz(512, 256, 512, 3)).unwrap();
        assert_eq!((d.width, d.height, d.components, d.tiles), (512, 256, 3, 1));
        // A JP2 file could hide a SIZ in another box than the one the codec decodes.
        let mut jp2 = b"\0\0\0\x0cjP  \r\n\x87\n".to_vec();
        jp2.extend(siz(512, 256, 512, 3));
        assert!(j2k(&jp2).unwrap_err().contains("raw codestream"));
        assert!(j2k(&siz(512, 256, 0, 1)).is_err());
        assert!(j2k(&siz(512, 256, 512, 3)[..40]).is_err());
    }
}
