//! Hostile inputs built in the test, byte by byte: a deflate bomb, codestreams that lie
//! about their size, large-but-allowed images. Nothing here goes through the code under
//! test, so that a bug there cannot hide itself.

use flate2::{Compress, Compression, FlushCompress};

/// One explicit VR little-endian element.
pub fn element(group: u16, elem: u16, vr: &[u8; 2], value: &[u8], declared: Option<u32>) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend(group.to_le_bytes());
    e.extend(elem.to_le_bytes());
    e.extend(vr);
    let len = declared.unwrap_or(value.len() as u32);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        e.extend([0, 0]);
        e.extend(len.to_le_bytes());
    } else {
        e.extend((len as u16).to_le_bytes());
    }
    e.extend(value);
    e
}

fn ui(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// Preamble, DICM, a file meta group naming `transfer_syntax`, then `data_set` as given.
pub fn part10(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend(element(0x0002, 0x0001, b"OB", &[0, 1], None));
    meta.extend(element(0x0002, 0x0002, b"UI", &ui("1.2.840.10008.5.1.4.1.1.7"), None));
    meta.extend(element(0x0002, 0x0003, b"UI", &ui("1.2.826.0.1.3680043.2.1125.1"), None));
    meta.extend(element(0x0002, 0x0010, b"UI", &ui(transfer_syntax), None));
    meta.extend(element(0x0002, 0x0012, b"UI", &ui("1.2.826.0.1.3680043.2.1125.2"), None));
    let mut f = vec![0u8; 128];
    f.extend(b"DICM");
    f.extend(element(0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes(), None));
    f.extend(meta);
    f.extend(data_set);
    f
}

/// The Image Pixel attributes of a monochrome 8-bit image (or RGB when `samples` is 3).
pub fn pixel_module(rows: u16, cols: u16, samples: u16) -> Vec<u8> {
    let us = |e: u16, v: u16| element(0x0028, e, b"US", &v.to_le_bytes(), None);
    let photometric: &[u8] = if samples == 3 { b"RGB " } else { b"MONOCHROME2 " };
    let mut d = us(0x0002, samples);
    d.extend(element(0x0028, 0x0004, b"CS", photometric, None));
    if samples == 3 {
        d.extend(us(0x0006, 0));
    }
    for (e, v) in [(0x0010, rows), (0x0011, cols), (0x0100, 8), (0x0101, 8), (0x0102, 7), (0x0103, 0)] {
        d.extend(us(e, v));
    }
    d
}

/// A Deflated Explicit VR Little Endian file whose data set inflates to `inflated_mib` MiB
/// of Pixel Data (zeros) behind a 512x512 header, about 1 KB per inflated MiB: one MiB of
/// zeros is compressed once and its block repeated (it refers only to the zeros before it).
pub fn deflate_bomb(inflated_mib: u32) -> Vec<u8> {
    let mut head = pixel_module(512, 512, 1);
    head.extend(element(0x7FE0, 0x0010, b"OB", &[], Some(inflated_mib << 20)));
    let mut z = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(1 << 20);
    let block = |z: &mut Compress, input: &[u8], flush: FlushCompress| {
        let mut buf = Vec::with_capacity(input.len() / 100 + 4096);
        z.compress_vec(input, &mut buf, flush).unwrap();
        buf
    };
    out.extend(block(&mut z, &head, FlushCompress::Sync));
    let zeros = vec![0u8; 1 << 20];
    out.extend(block(&mut z, &zeros, FlushCompress::Sync));
    let repeated = block(&mut z, &zeros, FlushCompress::Sync);
    for _ in 1..inflated_mib {
        out.extend(&repeated);
    }
    out.extend(block(&mut z, &[], FlushCompress::Finish));
    part10("1.2.840.10008.1.2.1.99", &out)
}

/// An encapsulated single-frame file: basic offset table (empty), one fragment.
pub fn encapsulated(transfer_syntax: &str, rows: u16, cols: u16, samples: u16, fragment: &[u8]) -> Vec<u8> {
    let mut d = pixel_module(rows, cols, samples);
    d.extend(element(0x7FE0, 0x0010, b"OB", &[], Some(0xFFFF_FFFF)));
    let item = |v: &[u8]| {
        let mut i = vec![0xFE, 0xFF, 0x00, 0xE0];
        i.extend((v.len() as u32).to_le_bytes());
        i.extend(v);
        i
    };
    d.extend(item(&[]));
    let mut frag = fragment.to_vec();
    if frag.len() % 2 == 1 {
        frag.push(0);
    }
    d.extend(item(&frag));
    d.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    part10(transfer_syntax, &d)
}

/// A real (tiny) JPEG whose frame header is then rewritten to claim `width` x `height`.
pub fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = jpeg(16, 16, 1, 90.0);
    let sof = jpeg.windows(2).position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2)).expect("a SOF0/1/2 frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// A JPEG 2000 codestream header (SOC + SIZ, one tile, 8-bit samples) claiming
/// `width` x `height`, followed by junk where the tile data would be.
pub fn j2k_claiming(width: u32, height: u32, components: u16) -> Vec<u8> {
    let mut d = vec![0xFF, 0x4F, 0xFF, 0x51];
    d.extend((38 + 3 * components).to_be_bytes());
    d.extend([0, 0]);
    for v in [width, height, 0, 0, width, height, 0, 0] {
        d.extend(v.to_be_bytes());
    }
    d.extend(components.to_be_bytes());
    for _ in 0..components {
        d.extend([7, 1, 1]);
    }
    d.extend([0xFF, 0x90, 0, 10, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0x93]);
    d.extend([0x5A; 64]);
    d.extend([0xFF, 0xD9]);
    d
}

/// A JPEG of a smooth gradient (compresses well, decodes at full cost).
pub fn jpeg(width: usize, height: usize, components: usize, quality: f32) -> Vec<u8> {
    let space = if components == 1 { mozjpeg::ColorSpace::JCS_GRAYSCALE } else { mozjpeg::ColorSpace::JCS_RGB };
    let mut c = mozjpeg::Compress::new(space);
    c.set_size(width, height);
    c.set_quality(quality);
    let mut started = c.start_compress(Vec::new()).unwrap();
    let mut row = vec![0u8; width * components];
    for y in 0..height {
        for (x, v) in row.iter_mut().enumerate() {
            *v = ((x / components + y) % 256) as u8;
        }
        started.write_scanlines(&row).unwrap();
    }
    started.finish().unwrap()
}
