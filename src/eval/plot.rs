//! plot: ROC figures of `medsentry eval` as 800x600 PNGs, drawn pixel by pixel so that the
//! sidecar needs no plotting or font library: axes with ticks every 0.2, the dashed chance
//! diagonal, one coloured 2 px polyline per detector, a legend, and a title, in the public-domain
//! 8x8 glyphs of `font8x8`.

use font8x8::legacy::BASIC_LEGACY;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

/// One detector's ROC: (false-positive rate, true-positive rate) points in drawing order, as
/// [`super::roc::roc_curve`] returns them. The label is shown as is in the legend.
#[derive(Debug, Clone)]
pub struct RocCurve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: u32 = 800;
const HEIGHT: u32 = 600;
// The plot area; fpr 0..1 spans LEFT..RIGHT, tpr 0..1 spans BOTTOM..TOP.
const LEFT: i64 = 80;
const RIGHT: i64 = 770;
const TOP: i64 = 60;
const BOTTOM: i64 = 520;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const CHANCE: Rgb<u8> = Rgb([150, 150, 150]);
const LEGEND_BORDER: Rgb<u8> = Rgb([110, 110, 110]);

/// Tableau's categorical colours without its grey, which the chance diagonal uses; curves past
/// the ninth reuse them in order.
const PALETTE: [Rgb<u8>; 9] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];

const GLYPH: i64 = 8;
const LEGEND_ROW: i64 = 16;
const LEGEND_SWATCH: i64 = 24;
const LEGEND_PAD: i64 = 8;

/// The figure as PNG bytes. Points outside [0, 1] are clamped to the frame; a non-finite point
/// breaks its curve there. Labels too long or too many for the plot area are cut off.
pub fn roc_png(title: &str, curves: &[RocCurve]) -> Vec<u8> {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    axes(&mut img);
    line(&mut img, to_pixel(0.0, 0.0), to_pixel(1.0, 1.0), CHANCE, 1, Some((6, 4)));
    for (i, curve) in curves.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut prev: Option<(i64, i64)> = None;
        for &(fpr, tpr) in &curve.points {
            if !(fpr.is_finite() && tpr.is_finite()) {
                prev = None;
                continue;
            }
            let p = to_pixel(fpr, tpr);
            line(&mut img, prev.unwrap_or(p), p, colour, 2, None);
            prev = Some(p);
        }
    }
    legend(&mut img, curves);
    // Scale 2 reads better, but a long title falls back to scale 1 before being cut.
    let scale = if text_width(title, 2) <= WIDTH as i64 - 20 { 2 } else { 1 };
    let title = fit(title, (WIDTH as i64 - 20) / (GLYPH * scale));
    text(&mut img, (WIDTH as i64 - text_width(&title, scale)) / 2, 18, &title, scale, BLACK);

    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(img.as_raw(), WIDTH, HEIGHT, ExtendedColorType::Rgb8)
        .expect("encoding an in-memory 800x600 RGB8 image as PNG cannot fail");
    png
}

fn to_pixel(fpr: f64, tpr: f64) -> (i64, i64) {
    let (fpr, tpr) = (fpr.clamp(0.0, 1.0), tpr.clamp(0.0, 1.0));
    (LEFT + (fpr * (RIGHT - LEFT) as f64).round() as i64, BOTTOM - (tpr * (BOTTOM - TOP) as f64).round() as i64)
}

fn axes(img: &mut RgbImage) {
    for k in 0..=5 {
        let v = k as f64 * 0.2;
        let label = format!("{v:.1}");
        let (x, _) = to_pixel(v, 0.0);
        let (_, y) = to_pixel(0.0, v);
        line(img, (x, TOP), (x, BOTTOM), GRID, 1, None);
        line(img, (LEFT, y), (RIGHT, y), GRID, 1, None);
        line(img, (x, BOTTOM), (x, BOTTOM + 5), BLACK, 1, None);
        line(img, (LEFT - 5, y), (LEFT, y), BLACK, 1, None);
        text(img, x - text_width(&label, 1) / 2, BOTTOM + 10, &label, 1, BLACK);
        text(img, LEFT - 9 - text_width(&label, 1), y - GLYPH / 2, &label, 1, BLACK);
    }
    for (a, b) in [((LEFT, TOP), (RIGHT, TOP)), ((RIGHT, TOP), (RIGHT, BOTTOM)), ((LEFT, BOTTOM), (RIGHT, BOTTOM)), ((LEFT, TOP), (LEFT, BOTTOM))] {
        line(img, a, b, BLACK, 1, None);
    }
    let x_title = "false-positive rate";
    text(img, (LEFT + RIGHT - text_width(x_title, 2)) / 2, BOTTOM + 32, x_title, 2, BLACK);
    let y_title = "true-positive rate";
    text_up(img, 14, (TOP + BOTTOM + text_width(y_title, 2)) / 2, y_title, 2, BLACK);
}

/// A white box in the plot's lower right corner, where ROC curves above chance leave room.
fn legend(img: &mut RgbImage, curves: &[RocCurve]) {
    let max_rows = ((BOTTOM - TOP - 20 - 2 * LEGEND_PAD) / LEGEND_ROW) as usize;
    let max_chars = (RIGHT - LEFT - 20 - 3 * LEGEND_PAD - LEGEND_SWATCH) / GLYPH - 1;
    let labels: Vec<String> = curves.iter().take(max_rows).map(|c| fit(&c.label, max_chars)).collect();
    let Some(longest) = labels.iter().map(|l| l.chars().count() as i64).max() else {
        return;
    };
    let width = 3 * LEGEND_PAD + LEGEND_SWATCH + longest * GLYPH;
    let height = 2 * LEGEND_PAD + labels.len() as i64 * LEGEND_ROW - (LEGEND_ROW - GLYPH);
    let (x1, y1) = (RIGHT - 10, BOTTOM - 10);
    let (x0, y0) = (x1 - width, y1 - height);
    for y in y0..=y1 {
        line(img, (x0, y), (x1, y), WHITE, 1, None);
    }
    for (a, b) in [((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1))] {
        line(img, a, b, LEGEND_BORDER, 1, None);
    }
    for (i, label) in labels.iter().enumerate() {
        let y = y0 + LEGEND_PAD + i as i64 * LEGEND_ROW;
        let sx = x0 + LEGEND_PAD;
        line(img, (sx, y + GLYPH / 2 - 1), (sx + LEGEND_SWATCH, y + GLYPH / 2 - 1), PALETTE[i % PALETTE.len()], 2, None);
        text(img, sx + LEGEND_SWATCH + LEGEND_PAD, y, label, 1, BLACK);
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// Bresenham from a to b with a square brush of `width` pixels (growing right and down from
/// the line, so that the line's own pixels always get the colour); `dash` = (on, off) steps.
fn line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), colour: Rgb<u8>, width: i64, dash: Option<(u32, u32)>) {
    let (dx, dy) = ((b.0 - a.0).abs(), -(b.1 - a.1).abs());
    let (sx, sy) = ((b.0 - a.0).signum(), (b.1 - a.1).signum());
    let (mut x, mut y, mut err) = (a.0, a.1, dx + dy);
    for step in 0u32.. {
        if dash.is_none_or(|(on, off)| step % (on + off) < on) {
            for (ox, oy) in (0..width).flat_map(|ox| (0..width).map(move |oy| (ox, oy))) {
                put(img, x + ox, y + oy, colour);
            }
        }
        if (x, y) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * GLYPH * scale
}

fn fit(s: &str, max_chars: i64) -> String {
    s.chars().take(max_chars.max(0) as usize).collect()
}

/// The glyph's lit pixels as (column, row); characters outside ASCII draw as '?'.
fn glyph_pixels(c: char) -> impl Iterator<Item = (i64, i64)> {
    let rows = BASIC_LEGACY[if c.is_ascii() { c as usize } else { '?' as usize }];
    (0..8).flat_map(move |row| (0..8).filter(move |col| rows[row] >> col & 1 == 1).map(move |col| (col as i64, row as i64)))
}

/// Text whose glyphs' top-left corner starts at (x, y), each glyph pixel a scale x scale block.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let gx = x + i as i64 * GLYPH * scale;
        for (col, row) in glyph_pixels(c) {
            for (ox, oy) in (0..scale).flat_map(|ox| (0..scale).map(move |oy| (ox, oy))) {
                put(img, gx + col * scale + ox, y + row * scale + oy, colour);
            }
        }
    }
}

/// Text turned a quarter left, reading upwards from (x, y_bottom), the glyphs' tops facing left.
fn text_up(img: &mut RgbImage, x: i64, y_bottom: i64, s: &str, scale: i64, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let gy = y_bottom - i as i64 * GLYPH * scale;
        for (col, row) in glyph_pixels(c) {
            for (ox, oy) in (0..scale).flat_map(|ox| (0..scale).map(move |oy| (ox, oy))) {
                put(img, x + row * scale + ox, gy - (col + 1) * scale + oy, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests;
