//! eval: offline evaluation of the detectors on a directory of clean and adversarial inputs.

pub mod npy;
pub mod plot;
pub mod roc;
