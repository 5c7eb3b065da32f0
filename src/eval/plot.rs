//! plot: ROC figures of `medsentry eval` as 800x600 SVG, drawn with plotters: axes with
//! labelled ticks, the dashed chance diagonal, one coloured line per detector and a legend.
//! SVG keeps text as text, so the sidecar ships no font and the figure opens in a browser.

use plotters::prelude::*;

/// One detector's ROC: (false-positive rate, true-positive rate) points in drawing order, as
/// [`super::roc::roc_curve`] returns them. The label is shown as is in the legend.
#[derive(Debug, Clone)]
pub struct RocCurve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (800, 600);
const CHANCE: RGBColor = RGBColor(150, 150, 150);

/// Tableau's categorical colours without its grey, which the chance diagonal uses; curves past
/// the ninth reuse them in order.
pub const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The ROC figure as an SVG document. Points outside [0, 1] are clipped to the plot area.
pub fn roc_svg(title: &str, curves: &[RocCurve]) -> String {
    let mut svg = String::new();
    // Drawing into a String cannot fail short of running out of memory.
    draw(&mut svg, title, curves).expect("drawing an SVG into memory");
    svg
}

fn draw<'a>(svg: &'a mut String, title: &str, curves: &[RocCurve]) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("false-positive rate")
        .y_desc("true-positive rate")
        .x_labels(6)
        .y_labels(6)
        .max_light_lines(1)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    chart.draw_series(DashedLineSeries::new([(0.0, 0.0), (1.0, 1.0)], 6, 5, CHANCE.stroke_width(1)))?;
    for (i, curve) in curves.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let clipped = curve.points.iter().map(|&(x, y)| (x.clamp(0.0, 1.0), y.clamp(0.0, 1.0)));
        chart
            .draw_series(LineSeries::new(clipped, colour.stroke_width(2)))?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(2)));
    }
    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests;
