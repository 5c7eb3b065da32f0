//! Fuzz target: PNG / JPEG bytes through the header checks, the budget and the decoders,
//! then the quarantine's re-encoding. Seeds: small chest X-ray and dermoscopy JPEGs from
//! ../shared/data and PNGs written by the seed mode.

#[path = "common.rs"]
mod common;

use medsentry::decode::Input;

fn png(width: u32, height: u32, colour: image::ExtendedColorType, samples: &[u8]) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out).write_image(samples, width, height, colour).unwrap();
    out
}

fn main() {
    let ramp: Vec<u8> = (0..=255u8).collect();
    common::write_seeds_if_asked(&[
        ("gray8.png", png(16, 16, image::ExtendedColorType::L8, &ramp)),
        ("gray16.png", png(8, 16, image::ExtendedColorType::L16, &ramp)),
        ("rgb8.png", png(8, 8, image::ExtendedColorType::Rgb8, &ramp[..192])),
        ("rgba8.png", png(8, 8, image::ExtendedColorType::Rgba8, &ramp)),
    ]);
    let (limits, budget) = (common::limits(), common::budget());
    // fuzz_nohook: a codec panic that decode catches (and answers as a refusal) is not a
    // crash; one that escapes is. (With fuzz!, every caught RLE-adapter panic aborted.)
    afl::fuzz_nohook!(|data: &[u8]| {
        let mut res = budget.reserve(Default::default(), None);
        if medsentry::decode::decode_raster_within(data, &limits, &mut res).is_ok() {
            drop(res);
            let _ = medsentry::quarantine::stored_form(&Input::Image(data.to_vec()), b"fuzz-salt-0123456789");
        }
    });
}
