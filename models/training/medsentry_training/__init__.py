"""Offline training and attack pipeline for medsentry model bundles.

Everything the sidecar runs is Rust; this package only produces the bundles under
models/NAME/ (classifier ONNX, detector artefacts, bundle.toml, REPORT.md).
"""
