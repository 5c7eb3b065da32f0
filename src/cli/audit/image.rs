//! The audit's images: 8-bit pixels at the file's own resolution, as an outside attacker
//! holds them. Every query is encoded as PNG (lossless), so the endpoint's decoding,
//! resizing and quantisation are part of what is tested.

use std::io::Cursor;
use std::path::Path;

use crate::decode::{decode_raster, DecodeLimits};

/// Planar 8-bit image (`channels` planes of `height * width`).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image {
    /// A PNG or JPEG file; a colour file whose three planes are equal (greyscale saved as
    /// RGB, as the chest X-rays are) is kept as one plane so that perturbations stay grey.
    pub fn load(path: &Path) -> anyhow::Result<Image> {
        let bytes = std::fs::read(path)?;
        let d = decode_raster(&bytes, &DecodeLimits::default()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let to_u8 = |v: &f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
        let n = d.width * d.height;
        let grey = d.channels == 3 && (0..n).all(|i| d.data[i] == d.data[n + i] && d.data[i] == d.data[2 * n + i]);
        let (channels, data) = if grey { (1, d.data[..n].iter().map(to_u8).collect()) } else { (d.channels, d.data.iter().map(to_u8).collect()) };
        Ok(Image { width: d.width, height: d.height, channels, data })
    }

    pub fn png(&self) -> Vec<u8> {
        use image::{ImageBuffer, Luma, Rgb};
        let n = self.width * self.height;
        let mut out = Cursor::new(Vec::new());
        let (w, h) = (self.width as u32, self.height as u32);
        let result = if self.channels == 1 {
            ImageBuffer::<Luma<u8>, _>::from_raw(w, h, self.data.clone()).expect("sized buffer").write_to(&mut out, image::ImageFormat::Png)
        } else {
            let interleaved: Vec<u8> = (0..n).flat_map(|i| [self.data[i], self.data[n + i], self.data[2 * n + i]]).collect();
            ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, interleaved).expect("sized buffer").write_to(&mut out, image::ImageFormat::Png)
        };
        result.expect("PNG encoding of an in-memory buffer");
        out.into_inner()
    }

    /// The image at `height` x `width` with `channels` planes, resized by the sidecar's own
    /// area filter and colour conversion and quantised to 8 bits: what a client that
    /// prepares tensors at the model's size sends (`--protocol oip-fp32`).
    pub fn resized(&self, channels: usize, height: usize, width: usize) -> Image {
        use crate::bundle::{ColorMode, InputSpec, Layout};
        let decoded = crate::decode::DecodedImage {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: self.data.iter().map(|v| *v as f32 / 255.0).collect(),
            dicom: None,
        };
        let spec = InputSpec {
            channels: channels as u32,
            height: height as u32,
            width: width as u32,
            color: if channels == 1 { ColorMode::Gray } else { ColorMode::Rgb },
            resize: "area".into(),
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
            layout: Layout::Nchw,
            dicom: None,
            quantize_bits: None,
        };
        let data = crate::preprocess::to_model_space(&decoded, &spec).iter().map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect();
        Image { width, height, channels, data }
    }

    /// The planes as `channels` planes: grey repeated to three, or kept (the audit only asks
    /// for the count the image was resized to, or three from one).
    pub fn planes(&self, channels: usize) -> std::borrow::Cow<'_, [u8]> {
        if channels == self.channels {
            std::borrow::Cow::Borrowed(&self.data)
        } else {
            std::borrow::Cow::Owned(self.data.iter().cycle().take(channels * self.width * self.height).copied().collect())
        }
    }

    /// `self + delta` clipped to 0..=255 (delta in grey levels, same layout).
    pub fn add(&self, delta: &[i16]) -> Image {
        let data = self.data.iter().zip(delta).map(|(&v, &d)| (v as i16 + d).clamp(0, 255) as u8).collect();
        Image { data, ..self.clone() }
    }

    /// Largest absolute difference in grey levels (Linf in 1/255 units).
    pub fn linf(&self, other: &Image) -> u8 {
        self.data.iter().zip(&other.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0)
    }

    /// Root mean square difference, in 1/255 units.
    pub fn rms(&self, other: &Image) -> f64 {
        let s: f64 = self.data.iter().zip(&other.data).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        (s / self.data.len().max(1) as f64).sqrt()
    }
}

/// A model-space perturbation (C x h x w, [0, 1] units, e.g. a bundle's UAP) brought to an
/// image's size by nearest neighbour, in grey levels; channels repeated or averaged.
pub fn resize_perturbation(p: &[f32], shape: &[usize], img: &Image) -> anyhow::Result<Vec<i16>> {
    let [c, h, w] = shape else { anyhow::bail!("perturbation shape {shape:?} is not [C, H, W]") };
    let (c, h, w) = (*c, *h, *w);
    anyhow::ensure!(c * h * w == p.len() && (c == 1 || c == 3), "perturbation shape {shape:?} does not fit {} values", p.len());
    let mut out = Vec::with_capacity(img.data.len());
    for ch in 0..img.channels {
        for y in 0..img.height {
            for x in 0..img.width {
                let (sy, sx) = (y * h / img.height, x * w / img.width);
                let v = if c == img.channels {
                    p[ch * h * w + sy * w + sx]
                } else if c == 1 {
                    p[sy * w + sx]
                } else {
                    (0..3).map(|k| p[k * h * w + sy * w + sx]).sum::<f32>() / 3.0
                };
                out.push((v * 255.0).round() as i16);
            }
        }
    }
    Ok(out)
}

/// Deterministic generator for the attacks' random choices (splitmix64): an audit run is
/// repeatable from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn sign(&mut self) -> i16 {
        if self.next_u64() & 1 == 0 {
            -1
        } else {
            1
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_and_add_clips() {
        let img = Image { width: 3, height: 2, channels: 1, data: vec![0, 10, 250, 255, 128, 7] };
        let back = decode_raster(&img.png(), &DecodeLimits::default()).unwrap();
        let got: Vec<u8> = back.data.iter().take(6).map(|v| (v * 255.0).round() as u8).collect();
        assert_eq!(got, img.data);
        let moved = img.add(&[-5, 5, 10, -300, 0, 0]);
        assert_eq!(moved.data, vec![0, 15, 255, 0, 128, 7]);
        assert_eq!(img.linf(&moved), 255);
    }

    #[test]
    fn perturbation_is_resized_by_nearest_neighbour() {
        let img = Image { width: 4, height: 4, channels: 1, data: vec![100; 16] };
        let d = resize_perturbation(&[0.0, 1.0 / 255.0, 2.0 / 255.0, 3.0 / 255.0], &[1, 2, 2], &img).unwrap();
        assert_eq!(&d[..4], &[0, 0, 1, 1]);
        assert_eq!(&d[8..12], &[2, 2, 3, 3]);
    }
}
