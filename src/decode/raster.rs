//! PNG / JPEG decoding with the `image` crate, size-checked from the header first.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};

use super::{DecodeError, DecodeLimits, DecodedImage};

/// Decodes PNG or JPEG bytes to RGB (3 channels) or gray (1 channel) intensities in [0, 1].
pub fn decode_raster(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnrecognizedFormat)?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(DecodeError::UnrecognizedFormat);
    }
    // Read the header alone: a 60000x60000 claim must be refused before any allocation.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    limits.check(width as u64, height as u64)?;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(width);
    image_limits.max_image_height = Some(height);
    reader.limits(image_limits);
    let img = reader.decode().map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = w * h;
    if img.color().has_color() {
        let rgb = img.to_rgb8();
        let mut data = vec![0f32; 3 * n];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                data[c * n + i] = px.0[c] as f32 / 255.0;
            }
        }
        Ok(DecodedImage { width: w, height: h, channels: 3, data })
    } else {
        // 16-bit PNGs keep their precision; 8-bit ones divide by 255.
        let gray = img.to_luma32f();
        Ok(DecodedImage { width: w, height: h, channels: 1, data: gray.into_raw() })
    }
}
