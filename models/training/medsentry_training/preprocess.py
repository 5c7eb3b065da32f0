"""The preprocessing contract shared with the Rust sidecar (src/preprocess.rs).

Both sides must produce the same input tensor for the same file within 1e-5, so the
operations are spelled out here instead of borrowed from a library whose resampling
differs from the Rust one:

1. decode to 8-bit RGB (JPEG/PNG) -> intensity in [0, 1] (value / 255);
2. colour: "gray" = ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B computed in float,
   "rgb" = the three planes as they are;
3. area ("box") resize to the bundle's height x width: every output pixel is the mean of
   the source area it covers, fractional source pixels weighted by their overlap;
4. with the bundle's `[input] quantize_bits` (8 on the 64 and 28 px bundles since
   2026-12-04): round to that grid, quantize() (src/preprocess.rs `quantize`, in f32 on
   both sides so the same f32 input gives the same bits);
5. normalise (x - mean) / std per channel. The ONNX graph takes the normalised tensor.

Adversarial examples and tensor requests live in the [0, 1] space of step 3; what the
sidecar reads of them is step 4's grid, so every stage that scores inputs rounds them
first (ood.Classifier.served).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

LUMA = (0.299, 0.587, 0.114)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: row i averages source span [i*s, (i+1)*s), s = n_in/n_out."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start, end = i * scale, (i + 1) * scale
        j = int(np.floor(start))
        while j < n_in and j < end:
            overlap = min(end, j + 1) - max(start, j)
            if overlap > 0:
                w[i, j] = overlap / scale
            j += 1
    return w


def area_resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-resize one float64 plane (H, W) to (height, width)."""
    wy = area_weights(plane.shape[0], height)
    wx = area_weights(plane.shape[1], width)
    return wy @ plane @ wx.T


def decode_rgb01(path: str) -> np.ndarray:
    """File -> float64 (3, H, W) in [0, 1]."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return rgb.transpose(2, 0, 1)


def to_model_space(rgb01: np.ndarray, color: str, height: int, width: int) -> np.ndarray:
    """(3, H, W) [0, 1] -> float32 (C, height, width) in [0, 1], before normalisation."""
    if color == "gray":
        gray = LUMA[0] * rgb01[0] + LUMA[1] * rgb01[1] + LUMA[2] * rgb01[2]
        planes = [gray]
    elif color == "rgb":
        planes = [rgb01[0], rgb01[1], rgb01[2]]
    else:
        raise ValueError(f"unknown colour mode {color!r}")
    return np.stack([area_resize(p, height, width) for p in planes]).astype(np.float32)


def quantize(x: np.ndarray, bits: int | None) -> np.ndarray:
    """[0, 1] model-space values rounded to multiples of 1 / (2^bits - 1), half up, in
    float32 (src/preprocess.rs `quantize`); `bits` None: x as float32, unchanged."""
    x = np.asarray(x, dtype=np.float32)
    if bits is None:
        return x
    levels = np.float32(2 ** bits - 1)
    return (np.floor(x * levels + np.float32(0.5)) / levels).astype(np.float32)


def load_image(path: str, color: str, height: int, width: int) -> np.ndarray:
    return to_model_space(decode_rgb01(path), color, height, width)
