//! The `bundle.toml` schema: the contract between the training pipeline and the sidecar
//! (see DESIGN.md, "The model bundle").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: String,
    /// Class labels in the order of the logits.
    pub labels: Vec<String>,
    /// Largest batch the batcher forms for this model.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Path of the training data's SOURCE.md, relative to the shared data folder.
    pub data_source: String,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    pub hardening: Option<Hardening>,
    #[serde(default)]
    pub detectors: Vec<DetectorSpec>,
    /// Campaign monitor calibration; absent = the monitor does not run for this bundle.
    #[serde(default)]
    pub campaign: Option<CampaignSpec>,
    /// Out-of-distribution model; absent = inputs are never called OUT_OF_DISTRIBUTION
    /// from their pixels.
    #[serde(default)]
    pub ood: Option<OodSpec>,
    /// DICOM attribute values the bundle was trained on; absent = headers are not checked.
    #[serde(default)]
    pub accepts: Option<Accepts>,
    /// sha256 (hex) of every file of the bundle, by file name.
    pub files: BTreeMap<String, String>,
    /// Evaluation figures (accuracy, AUC, ...) as measured by the pipeline.
    #[serde(default)]
    pub figures: BTreeMap<String, f64>,
}

fn default_max_batch() -> usize {
    32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// BT.601 luma of RGB inputs; monochrome inputs as they are.
    Gray,
    /// Three planes; monochrome inputs replicated.
    Rgb,
}

impl ColorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ColorMode::Gray => "gray",
            ColorMode::Rgb => "rgb",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub color: ColorMode,
    /// Only "area" (box filter) exists: the one the pipeline implements identically.
    pub resize: String,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Memory layout of the graph's input; everything before the engine is NCHW.
    #[serde(default)]
    pub layout: Layout,
    /// How DICOM is turned into [0, 1] before the steps above (documentation for users).
    #[serde(default)]
    pub dicom: Option<String>,
    /// Round every model-space value to this many bits (8: multiples of 1/255) before
    /// anything reads it. The bundle's detectors were calibrated on that grid, so an input
    /// sent at the model's size as float or 16-bit pixels is judged as the 8-bit image it
    /// would be; without it a model-size 8-bit image and a full-size upload of the same
    /// picture sit on different grids and the verdict moved by up to 27 points
    /// (models/training/experiments/quantised_inputs.py). Absent: no rounding.
    #[serde(default)]
    pub quantize_bits: Option<u32>,
}

/// Axis order of the graph's input tensor. A hospital's own graph (Keras, TensorFlow
/// exports) may take NHWC; the engine transposes the NCHW batch it is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

/// What the class output holds. Detectors and the answer are computed from logits, so a
/// graph that ends in a softmax is read as logits = ln(p) (softmax(ln p) = p).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    #[default]
    Logits,
    Probabilities,
}

impl InputSpec {
    pub fn len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the graph's input.
    pub input: String,
    pub logits: String,
    pub features: String,
    pub feature_dim: usize,
    /// Whether the output named by `logits` holds logits or probabilities.
    #[serde(default)]
    pub scores: ScoreKind,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hardening {
    pub method: String,
    pub norm: String,
    pub epsilon: f32,
    pub steps: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    pub name: String,
    pub kind: String,
    pub file: String,
    /// Score above which the detector fires (verdict ADVERSARIAL).
    pub threshold: f32,
    /// False-positive rate on clean AdvTrain the threshold was calibrated for.
    pub calibrated_fpr: f32,
    /// Optional looser threshold (e.g. at 5 % FPR) above which the verdict is SUSPICIOUS.
    #[serde(default)]
    pub suspicious_threshold: Option<f32>,
    #[serde(default)]
    pub suspicious_fpr: Option<f32>,
}

/// Written by the pipeline's `campaign` stage (models/training/medsentry_training/campaign.py).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// Recent inputs whose high-pass residuals are correlated pairwise.
    pub residual_window: usize,
    /// Mean pairwise residual correlation above which a shared perturbation is suspected.
    pub residual_threshold: f32,
    /// Recent predictions whose class mix is compared with `reference_class_mix`.
    pub class_mix_window: usize,
    /// Pearson chi-square above which the class mix counts as drifted.
    pub class_mix_threshold: f32,
    /// Predicted-class shares on the clean official test set, in label order.
    pub reference_class_mix: Vec<f32>,
}

/// Written by the pipeline's `ood` stage (models/training/medsentry_training/ood.py).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OodSpec {
    /// The Gaussian model (`kind = "gaussian"`), listed in [files].
    pub file: String,
    /// Squared Mahalanobis distance above which an input is out of distribution.
    pub threshold: f32,
    /// Share of clean training images over `threshold` (out-of-fold).
    pub calibrated_fpr: f32,
}

/// What a DICOM input may say it is. An attribute the input carries with a value not
/// listed here makes it OUT_OF_DISTRIBUTION; an absent attribute or an empty list is not
/// checked. Values are compared upper-cased.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Accepts {
    /// Modality (0008,0060), e.g. ["CR", "DX"].
    #[serde(default)]
    pub modality: Vec<String>,
    /// BodyPartExamined (0018,0015), e.g. ["CHEST"].
    #[serde(default)]
    pub body_part: Vec<String>,
    /// PhotometricInterpretation (0028,0004).
    #[serde(default)]
    pub photometric: Vec<String>,
    /// Grayscale models: a colour image (any format) whose mean chroma (max - min over
    /// R, G, B, in [0, 1]) exceeds this is out of distribution. Grayscale radiographs
    /// stored as RGB have 0; dermoscopy photographs 0.05 and more.
    #[serde(default)]
    pub max_chroma: Option<f32>,
    /// Colour models: an image whose mean chroma is below this (a grayscale file, which
    /// counts as 0, or a colour file with near-equal channels) is out of distribution. A
    /// radiograph sent to a dermoscopy model is told by this before any statistics.
    #[serde(default)]
    pub min_chroma: Option<f32>,
}
