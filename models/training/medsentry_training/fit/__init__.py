"""Fit a bundle for an ONNX image classifier this pipeline did not train (the hospital's own).

    python -m medsentry_training.fit --onnx MODEL.onnx --images DIR --out BUNDLE_DIR [...]

graph.py reads and checks the graph and adds the feature output; images.py reads the
labelled images; torch_graph.py converts the graph to PyTorch for white-box attacks;
__main__.py runs the stages.
"""
