use super::*;

fn curve(label: &str, points: &[(f64, f64)]) -> RocCurve {
    RocCurve { label: label.into(), points: points.to_vec() }
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// The `points` attribute of each polyline drawn in this colour.
fn polylines<'a>(svg: &'a str, colour: &str) -> Vec<&'a str> {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.split('>').next().unwrap().contains(colour))
        .map(|p| p.split("points=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect()
}

/// The contents of the <text> elements, trimmed.
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text").skip(1).map(|t| t.split_once('>').unwrap().1.split("</text>").next().unwrap().trim()).collect()
}

fn parse_points(points: &str) -> Vec<(f64, f64)> {
    points.split_whitespace().map(|p| p.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap())).unwrap()).collect()
}

#[test]
fn an_800x600_svg_with_title_axes_and_legend_as_text() {
    let curves = [curve("mahalanobis linf_4  AUROC 0.912", &[(0.0, 0.0), (1.0, 1.0)]), curve("fused", &[(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)])];
    let svg = roc_svg("ROC: pgd20 vs clean", &curves);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..80]);
    assert!(svg.contains("width=\"800\"") && svg.contains("height=\"600\""));
    let texts = texts(&svg);
    for text in ["ROC: pgd20 vs clean", "false-positive rate", "true-positive rate", "mahalanobis linf_4  AUROC 0.912", "fused", "0.0", "0.4", "1.0"] {
        assert!(texts.contains(&text), "{text} missing from {texts:?}");
    }
}

#[test]
fn each_curve_is_a_line_in_its_colour_through_its_points() {
    let good = [(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)];
    let svg = roc_svg("", &[curve("a", &[(0.0, 0.0), (1.0, 1.0)]), curve("b", &good)]);
    let lines = polylines(&svg, &hex(PALETTE[1]));
    // The curve and its legend sample.
    let drawn = lines.iter().map(|l| parse_points(l)).find(|p| p.len() == 3).expect("curve b drawn with its three points");
    // Pixel coordinates: x grows with fpr, y shrinks with tpr, and the knee sits where 0.2 / 0.8 put it.
    let (x0, y0) = drawn[0];
    let (x2, y2) = drawn[2];
    let (kx, ky) = drawn[1];
    assert!(x2 > x0 && y2 < y0, "{drawn:?}");
    assert!(((kx - x0) / (x2 - x0) - 0.2).abs() < 0.01 && ((y0 - ky) / (y0 - y2) - 0.8).abs() < 0.01, "{drawn:?}");
    assert!(!polylines(&svg, &hex(PALETTE[0])).is_empty());
}

#[test]
fn the_chance_diagonal_is_dashed_and_drawn_without_curves() {
    let svg = roc_svg("", &[]);
    let dashes = svg.matches(&hex(CHANCE)).count();
    assert!(dashes > 20, "{dashes} dash segments");
    assert!(!svg.contains(&hex(PALETTE[0])), "no curve, no legend");
}

#[test]
fn colours_cycle_past_the_palette_and_points_outside_the_unit_square_are_clipped() {
    let many: Vec<RocCurve> = (0..11).map(|i| curve(&format!("d{i}"), &[(0.0, 0.0), (0.5, 0.5 + i as f64 * 0.01), (1.0, 1.0)])).collect();
    let svg = roc_svg("many", &many);
    assert!(polylines(&svg, &hex(PALETTE[0])).len() >= 4, "d0 and d9, each a curve and a legend sample");
    let clipped = roc_svg("", &[curve("out", &[(-1.0, -1.0), (2.0, 3.0)])]);
    let inside = roc_svg("", &[curve("out", &[(0.0, 0.0), (1.0, 1.0)])]);
    assert_eq!(clipped, inside);
}
