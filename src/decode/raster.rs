//! PNG / JPEG decoding, size-checked from the header first. JPEG goes through
//! libjpeg-turbo's decoder (the `mozjpeg` crate: islow IDCT, fancy upsampling), the same
//! decoder the training pipeline's Pillow uses, so both see bit-identical pixels; PNG
//! through the `image` crate (lossless, so any correct decoder agrees).

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};

use super::{DecodeError, DecodeLimits, DecodedImage};

/// Decodes PNG or JPEG bytes to RGB (3 channels) or gray (1 channel) intensities in [0, 1].
pub fn decode_raster(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnrecognizedFormat)?;
    match format {
        ImageFormat::Jpeg => return decode_jpeg(bytes, limits),
        ImageFormat::Png => {}
        _ => return Err(DecodeError::UnrecognizedFormat),
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

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error manager).
    let result = std::panic::catch_unwind(|| -> Result<DecodedImage, DecodeError> {
        let io = |e: std::io::Error| DecodeError::Malformed(format!("JPEG: {e}"));
        let header = mozjpeg::Decompress::new_mem(bytes).map_err(io)?;
        let (w, h) = header.size();
        limits.check(w as u64, h as u64)?;
        let n = w * h;
        if header.components().len() == 1 {
            let mut started = header.grayscale().map_err(io)?;
            let gray: Vec<u8> = started.read_scanlines().map_err(io)?;
            started.finish().map_err(io)?;
            check_len(gray.len(), n)?;
            Ok(DecodedImage { width: w, height: h, channels: 1, data: gray.iter().map(|&v| v as f32 / 255.0).collect() })
        } else {
            let mut started = header.rgb().map_err(io)?;
            let rgb: Vec<[u8; 3]> = started.read_scanlines().map_err(io)?;
            started.finish().map_err(io)?;
            check_len(rgb.len(), n)?;
            let mut data = vec![0f32; 3 * n];
            for (i, px) in rgb.iter().enumerate() {
                for c in 0..3 {
                    data[c * n + i] = px[c] as f32 / 255.0;
                }
            }
            Ok(DecodedImage { width: w, height: h, channels: 3, data })
        }
    });
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "libjpeg fatal error".into());
            Err(DecodeError::Malformed(msg))
        }
    }
}

fn check_len(got: usize, want: usize) -> Result<(), DecodeError> {
    if got != want {
        return Err(DecodeError::Malformed(format!("JPEG decoded to {got} pixels, header says {want}")));
    }
    Ok(())
}
