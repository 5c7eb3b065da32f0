"""Reference renderings of the shared DICOM files, made with pydicom, for the Rust decoder.

`tests/dicom_decode.rs` decodes the same files with `medsentry::decode::decode_dicom` and
compares against the JSON written here, so the two sides must follow the same pipeline
(see src/decode/dicom.rs):

  monochrome: stored values (pydicom masks unused bits / sign-extends) -> modality rescale
              -> VOI: first WindowCenter/WindowWidth pair with the PS3.3 C.11.2.1.2 function
                 (LINEAR unless VOILUTFunction says LINEAR_EXACT or SIGMOID) mapped to [0, 1];
                 else the first VOI LUT Sequence item / (2^bits - 1); else min-max of the image
              -> MONOCHROME1: 1 - v
  colour:     pixel_array (pydicom converts YBR_* to RGB) / (2^BitsStored - 1)

Windowing is written out here rather than taken from `pydicom.pixels.apply_windowing`,
whose output range is the stored-value range, not [0, 1].

Usage (from models/training, with requirements-dicom.txt installed):
    .venv/bin/python -m medsentry_training.dicom_reference
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi

from medsentry_training.preprocess import area_resize

REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dicom"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "dicom_reference.json"
THUMB = 16

# Transfer syntaxes the sidecar refuses: it is built without CharLS (no JPEG-LS decoder).
REFUSED_TS = {
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless Image Compression",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Lossy (Near-Lossless) Image Compression",
}


def window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 VOI LUT functions with output range [0, 1] (mirrors dicom.rs)."""
    if function == "SIGMOID" and width > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function in ("LINEAR_EXACT", "SIGMOID"):
        if width <= 0:
            return (x > center).astype(np.float64)
        lo, hi, c, w = center - width / 2, center + width / 2, center, width
    else:  # LINEAR
        c, w = center - 0.5, width - 1.0
        if w <= 0:
            return (x > c).astype(np.float64)
        lo, hi = c - w / 2, c + w / 2
    y = (x - c) / w + 0.5
    return np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))


def first_value(v) -> float:
    return float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)


def render(ds: pydicom.Dataset) -> np.ndarray:
    """Dataset -> float64 (C, H, W) in [0, 1]."""
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame")
    if ds.SamplesPerPixel == 3:
        return arr.astype(np.float64).transpose(2, 0, 1) / (2.0 ** ds.BitsStored - 1)
    x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is not None and ww is not None and wc != "" and ww != "":
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        y = window(x, first_value(wc), first_value(ww), func)
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        y = np.asarray(apply_voi(x, ds, index=0), dtype=np.float64) / (2.0**bits - 1)
    else:
        lo, hi = x.min(), x.max()
        y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1.0 - y
    return y[None]


def summarize(img: np.ndarray) -> dict:
    c, h, w = img.shape
    thumb = np.stack([area_resize(img[i], THUMB, THUMB) for i in range(c)])
    return {
        "width": w,
        "height": h,
        "channels": c,
        "mean": round(float(img.mean()), 6),
        "std": round(float(img.std()), 6),
        "min": round(float(img.min()), 6),
        "max": round(float(img.max()), 6),
        "thumb": [round(float(v), 6) for v in thumb.ravel()],
    }


def reference(path: Path) -> dict:
    ds = pydicom.dcmread(path)
    uid = str(ds.file_meta.TransferSyntaxUID)
    if uid in REFUSED_TS:
        entry = {
            "status": "refused",
            "expect": "refused",
            "reason": f"transfer syntax {REFUSED_TS[uid]} ({uid}) has no decoder in the sidecar",
            "transfer_syntax": uid,
            "transfer_syntax_name": REFUSED_TS[uid],
        }
        try:  # still record what pydicom sees, for when a JPEG-LS decoder is added
            pydicom_view = summarize(render(ds))
            pydicom_view.pop("thumb")
            entry["pydicom"] = pydicom_view
        except Exception as exc:  # noqa: BLE001 - a missing pydicom plugin is not fatal here
            entry["pydicom_error"] = str(exc)
        return entry
    return {"status": "ok", "transfer_syntax": uid, **summarize(render(ds))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out = {
        "_about": "pydicom rendering of shared/data/dicom, see "
        "models/training/medsentry_training/dicom_reference.py; thumb = 16x16 area mean, "
        "channel-major, row-major",
        "_pydicom": pydicom.__version__,
    }
    for path in sorted(args.data.glob("*.dcm")):
        out[path.name] = reference(path)
        print(path.name, out[path.name]["status"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
