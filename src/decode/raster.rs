//! PNG / JPEG decoding, size-checked from the header first. JPEG goes through
//! libjpeg-turbo's decoder (the `mozjpeg` crate: islow IDCT, fancy upsampling), the same
//! decoder the training pipeline's Pillow uses, so both see bit-identical pixels; PNG
//! through the `image` crate (lossless, so any correct decoder agrees). What the header
//! says the decode will allocate is reserved from the request's [`Reservation`] first.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::budget::{DecodeBudget, Reservation};
use super::{codestream, DecodeError, DecodeLimits, DecodedImage};

/// Decodes PNG or JPEG bytes to RGB (3 channels) or gray (1 channel) intensities in
/// [0, 1], with no memory budget (the command line decodes one file at a time).
pub fn decode_raster(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    let mut unlimited = DecodeBudget::unlimited().reserve(Default::default(), None);
    decode_raster_within(bytes, limits, &mut unlimited)
}

/// Decodes PNG or JPEG bytes, taking every large allocation from `res` first.
pub fn decode_raster_within(bytes: &[u8], limits: &DecodeLimits, res: &mut Reservation) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match image::guess_format(bytes).map_err(|_| DecodeError::UnrecognizedFormat)? {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits, res),
        ImageFormat::Png => decode_png(bytes, limits, res),
        _ => Err(DecodeError::UnrecognizedFormat),
    }
}

fn decode_png(bytes: &[u8], limits: &DecodeLimits, res: &mut Reservation) -> Result<DecodedImage, DecodeError> {
    let malformed = |e: image::ImageError| DecodeError::Malformed(e.to_string());
    // Read the header alone: a 60000x60000 claim must be refused before any allocation.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
    // The image crate's own allocation cap (512 MiB) stays on as a second line.
    reader.limits(Limits::default());
    let decoder = reader.into_decoder().map_err(malformed)?;
    let (width, height) = decoder.dimensions();
    limits.check(width as u64, height as u64)?;
    let pixels = u64::from(width) * u64::from(height);
    let colour = decoder.color_type().has_color();
    // The decoded buffer, an 8-bit RGB copy for colour images, and the f32 output.
    let cost = decoder.total_bytes() + if colour { pixels * 3 + pixels * 12 } else { pixels * 4 };
    res.grow(cost, "decoded pixels")?;
    let img = DynamicImage::from_decoder(decoder).map_err(malformed)?;
    res.checkpoint()?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if colour {
        let rgb = match img {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.to_rgb8(),
        };
        Ok(DecodedImage { width: w, height: h, channels: 3, data: planar(rgb.as_raw(), 3), dicom: None })
    } else {
        // 16-bit PNGs keep their precision; 8-bit ones divide by 255.
        Ok(DecodedImage { width: w, height: h, channels: 1, data: img.to_luma32f().into_raw(), dicom: None })
    }
}

/// Interleaved 8-bit samples -> planar intensities in [0, 1].
fn planar(interleaved: &[u8], channels: usize) -> Vec<f32> {
    let n = interleaved.len() / channels;
    let mut data = vec![0f32; channels * n];
    for (i, px) in interleaved.chunks_exact(channels).enumerate() {
        for c in 0..channels {
            data[c * n + i] = px[c] as f32 / 255.0;
        }
    }
    data
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits, res: &mut Reservation) -> Result<DecodedImage, DecodeError> {
    // libjpeg pads a file cut short with grey rows and only warns: refuse it instead.
    if !codestream::jpeg_is_complete(bytes) {
        return Err(DecodeError::Malformed("JPEG is truncated: no end-of-image marker after its last scan".into()));
    }
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error manager).
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<DecodedImage, DecodeError> {
        let io = |e: std::io::Error| DecodeError::Malformed(format!("JPEG: {e}"));
        let header = mozjpeg::Decompress::new_mem(bytes).map_err(io)?;
        let (w, h) = header.size();
        limits.check(w as u64, h as u64)?;
        let n = w * h;
        let components = header.components().len().max(1) as u64;
        let channels = if components == 1 { 1 } else { 3 };
        // libjpeg's coefficient buffers (progressive files keep the whole image as 16-bit
        // coefficients), the 8-bit output, and the f32 output.
        res.grow(n as u64 * (components * 2 + channels * 5), "decoded pixels")?;
        if channels == 1 {
            let mut started = header.grayscale().map_err(io)?;
            let gray: Vec<u8> = started.read_scanlines().map_err(io)?;
            started.finish().map_err(io)?;
            check_len(gray.len(), n)?;
            Ok(DecodedImage { width: w, height: h, channels: 1, data: gray.iter().map(|&v| v as f32 / 255.0).collect(), dicom: None })
        } else {
            let mut started = header.rgb().map_err(io)?;
            let rgb: Vec<[u8; 3]> = started.read_scanlines().map_err(io)?;
            started.finish().map_err(io)?;
            check_len(rgb.len(), n)?;
            Ok(DecodedImage { width: w, height: h, channels: 3, data: planar(rgb.as_flattened(), 3), dicom: None })
        }
    }));
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
