use super::*;

fn decode(png: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap().to_rgb8()
}

fn at(img: &RgbImage, (x, y): (i64, i64)) -> Rgb<u8> {
    *img.get_pixel(x as u32, y as u32)
}

fn curve(label: &str, points: &[(f64, f64)]) -> RocCurve {
    RocCurve { label: label.into(), points: points.to_vec() }
}

#[test]
fn draws_an_800x600_png_with_the_curves_in_their_colours() {
    let curves = [curve("chance-like", &[(0.0, 0.0), (1.0, 1.0)]), curve("good", &[(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)])];
    let img = decode(&roc_png("ROC", &curves));
    assert_eq!(img.dimensions(), (800, 600));
    assert_eq!(at(&img, to_pixel(0.5, 0.5)), PALETTE[0]);
    assert_eq!(at(&img, to_pixel(0.1, 0.4)), PALETTE[1]);
    assert_eq!(at(&img, to_pixel(0.6, 0.9)), PALETTE[1]);
}

#[test]
fn leaves_empty_space_white_and_writes_the_title() {
    let img = decode(&roc_png("Detector ROC", &[curve("a", &[(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)])]));
    for p in [to_pixel(0.3, 0.9), to_pixel(0.9, 0.3), (795, 300), (400, 596), (3, 3)] {
        assert_eq!(at(&img, p), WHITE, "{p:?}");
    }
    let title_ink = (10..34).flat_map(|y| (300..500).map(move |x| (x, y))).filter(|&p| at(&img, p) != WHITE).count();
    assert!(title_ink > 50, "{title_ink} title pixels");
    let untitled = decode(&roc_png("", &[]));
    assert!((0..40).all(|y| (0..800).all(|x| at(&untitled, (x, y)) == WHITE)));
}

#[test]
fn draws_the_chance_diagonal_dashed_under_the_curves() {
    let img = decode(&roc_png("", &[]));
    // Per pixel column between two grid lines: is the diagonal drawn near its exact height?
    let drawn: Vec<bool> = (150..270)
        .map(|k| {
            let y = BOTTOM - (k * (BOTTOM - TOP) + (RIGHT - LEFT) / 2) / (RIGHT - LEFT);
            (y - 1..=y + 1).any(|y| at(&img, (LEFT + k, y)) == CHANCE)
        })
        .collect();
    assert!(drawn.contains(&true) && drawn.contains(&false), "{drawn:?}");
}

#[test]
fn legend_shows_each_colour_in_the_lower_right() {
    let curves: Vec<RocCurve> = (0..9).map(|i| curve(&format!("detector {i}  AUROC 0.9{i}0"), &[(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)])).collect();
    let img = decode(&roc_png("legend", &curves));
    let corner: Vec<Rgb<u8>> = (BOTTOM - 200..BOTTOM).flat_map(|y| (RIGHT - 300..RIGHT).map(move |x| (x, y))).map(|p| at(&img, p)).collect();
    for colour in PALETTE {
        assert!(corner.contains(&colour), "{colour:?} missing from the legend");
    }
    assert!(corner.contains(&BLACK), "legend labels missing");
}

#[test]
fn survives_awkward_input() {
    let long = "x".repeat(500);
    let curves = vec![
        curve(&long, &[(0.0, 0.0), (f64::NAN, 0.5), (2.0, -1.0), (1.0, 1.0)]),
        curve("empty", &[]),
        curve("single point", &[(0.5, 0.5)]),
        curve("\u{e9}t\u{e9}", &[(0.0, 0.0), (1.0, 1.0)]),
    ];
    let many: Vec<RocCurve> = (0..60).map(|i| curve(&i.to_string(), &[(0.0, 0.0), (1.0, 1.0)])).collect();
    for cs in [curves, many, Vec::new()] {
        assert_eq!(decode(&roc_png(&long, &cs)).dimensions(), (800, 600));
    }
}

/// Writes an example figure to look at: cargo test --lib eval::plot -- --ignored
#[test]
#[ignore]
fn demo_figure() {
    let (neg, pos): (Vec<f64>, Vec<f64>) = ((0..400).map(|i| (i as f64 * 0.37).sin()).collect(), (0..400).map(|i| (i as f64 * 0.53).sin() + 0.8).collect());
    let mahalanobis = super::super::roc::roc_curve(&neg, &pos);
    let auc = super::super::roc::auroc(&neg, &pos).unwrap_or(f64::NAN);
    let curves = vec![
        RocCurve { label: format!("mahalanobis  AUROC {auc:.3}"), points: mahalanobis },
        curve("learned-logistic  AUROC 0.874", &[(0.0, 0.0), (0.05, 0.45), (0.15, 0.7), (0.4, 0.9), (1.0, 1.0)]),
        curve("worse than chance  AUROC 0.3", &[(0.0, 0.0), (0.5, 0.1), (1.0, 1.0)]),
    ];
    let path = std::env::temp_dir().join("roc_demo.png");
    std::fs::write(&path, roc_png("ROC: PGD eps=2/255, chest X-ray (demo data)", &curves)).unwrap();
    println!("wrote {}", path.display());
}
