"""Checks medsentry's Open Inference Protocol service with NVIDIA's own Python client.

Run by tests/oip_tritonclient.rs against a real medsentry on port 0:

    python tritonclient_checks.py --url 127.0.0.1:PORT --reference models/NAME/reference.json \
        --data ../shared/data

Every check runs; each prints "ok NAME" or "FAIL NAME: why"; the exit status is the number
of failures (0: all passed).
"""

import argparse
import json
import os
import sys
import tomllib

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from checklist import check, expect_refused, summary

MODEL = "chest-xray-pneumonia"
SHAPE = (1, 64, 64)
VERDICTS = {b"CLEAN", b"SUSPICIOUS", b"ADVERSARIAL", b"NOT_SCREENED"}
# The bundle's detectors, in bundle.toml's order (the order of detector_scores' columns).
with open(os.path.join(os.path.dirname(__file__), "..", "..", "models", MODEL, "bundle.toml"), "rb") as _f:
    DETECTORS = [d["name"] for d in tomllib.load(_f)["detectors"]]


def expect_close(got, want, tol, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    worst = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert worst <= tol, f"{what}: largest difference {worst:.3g} > {tol}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()

    client = triton.InferenceServerClient(url=args.url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(args.url))
    ref = json.load(open(args.reference))
    pixels = np.array([it["pixels"] for it in ref["items"]], dtype=np.float32).reshape((-1,) + SHAPE)
    expected = np.array([it["probabilities"] for it in ref["items"]], dtype=np.float32)
    files = [open(f"{args.data}/{ref['data_root']}/{it['file']}", "rb").read() for it in ref["items"]]
    n = len(pixels)

    def infer(array, datatype=None, outputs=None, name="input"):
        datatype = datatype or ("BYTES" if array.dtype == np.object_ else "FP32")
        inp = triton.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        req_out = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
        return client.infer(MODEL, [inp], outputs=req_out, request_id="tc-1")

    @check("live_and_ready")
    def _():
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert not client.is_model_ready("no-such-model")

    @check("server_metadata")
    def _():
        md = client.get_server_metadata()
        assert md.name == "medsentry", md
        assert md.version, md
        assert "medsentry_screening" in md.extensions, md

    @check("model_metadata")
    def _():
        md = client.get_model_metadata(MODEL)
        assert md.name == MODEL and md.versions and md.platform, md
        assert [(i.name, i.datatype, list(i.shape)) for i in md.inputs] == [("input", "FP32", [-1, 1, 64, 64])], md.inputs
        outs = {o.name: (o.datatype, list(o.shape)) for o in md.outputs}
        assert outs["probabilities"] == ("FP32", [-1, 2]), outs
        assert outs["verdict"] == ("BYTES", [-1]), outs
        assert outs["fused_score"] == ("FP32", [-1]), outs
        assert outs["detector_scores"] == ("FP32", [-1, len(DETECTORS)]), outs
        expect_refused(lambda: client.get_model_metadata("no-such-model"), grpc.StatusCode.NOT_FOUND)

    @check("raw_fp32_batch_matches_the_pipeline")
    def _():
        result = infer(pixels)
        expect_close(result.as_numpy("probabilities"), expected, 1e-4, "probabilities")
        verdicts = result.as_numpy("verdict")
        assert verdicts.shape == (n,) and set(verdicts.tolist()) <= VERDICTS, verdicts
        assert result.as_numpy("fused_score").shape == (n,)
        resp = result.get_response()
        assert resp.id == "tc-1" and resp.model_name == MODEL, resp.id
        assert len(resp.raw_output_contents) == len(resp.outputs) == 4, "raw request, raw answer"
        scores = result.as_numpy("detector_scores")
        det = next(o for o in resp.outputs if o.name == "detector_scores")
        names = det.parameters["detectors"].string_param.split(",")
        assert names == DETECTORS and scores.shape == (n, len(DETECTORS)), (names, scores.shape)
        params = resp.parameters
        assert params["medsentry.verdict"].string_param.split(",") == [v.decode() for v in verdicts], params
        fused = [float(x) for x in params["medsentry.fused_score"].string_param.split(",")]
        expect_close(fused, result.as_numpy("fused_score"), 1e-6, "fused_score parameter")
        for j, name in enumerate(names):
            per_item = [float(x) for x in params[f"medsentry.detector.{name}"].string_param.split(",")]
            expect_close(per_item, scores[:, j], 1e-6, f"{name} parameter")
        # Fused score = the deciding score / its threshold: the fused detector's when the
        # bundle has one, else the largest over the detectors.
        thresholds = np.array([float(t) for t in det.parameters["thresholds"].string_param.split(",")])
        ratios = scores / thresholds
        want = ratios[:, names.index("fused")] if "fused" in names else ratios.max(axis=1)
        expect_close(result.as_numpy("fused_score"), want, 1e-4, "fused score")

    @check("raw_fp32_single_item")
    def _():
        result = infer(pixels[4:5])
        expect_close(result.as_numpy("probabilities"), expected[4:5], 1e-4, "probabilities")
        assert result.get_response().parameters["medsentry.verdict"].string_param in {v.decode() for v in VERDICTS}

    @check("typed_fp32_contents_answered_typed")
    def _():
        req = service_pb2.ModelInferRequest(model_name=MODEL, id="typed")
        t = req.inputs.add(name="input", datatype="FP32", shape=[2, 1, 64, 64])
        t.contents.fp32_contents.extend(pixels[:2].ravel().tolist())
        resp = stub.ModelInfer(req)
        assert not resp.raw_output_contents, "typed request, typed answer"
        out = {o.name: o for o in resp.outputs}
        probs = np.array(out["probabilities"].contents.fp32_contents).reshape(list(out["probabilities"].shape))
        expect_close(probs, expected[:2], 1e-4, "probabilities")
        assert set(out["verdict"].contents.bytes_contents) <= VERDICTS
        assert len(out["detector_scores"].contents.fp32_contents) == 2 * len(DETECTORS)
        # Read straight from the protobuf: tritonclient's InferResult.as_numpy reads typed
        # contents of BYTES outputs only (FP32 ones come back empty), and with numpy 2 even
        # that raises (np.array(..., copy=False)).

    @check("uint8_raw_and_typed_equal_fp32_of_the_same_levels")
    def _():
        levels = np.round(pixels[:3] * 255).astype(np.uint8)
        want = infer(levels.astype(np.float32) / 255).as_numpy("probabilities")
        expect_close(infer(levels, "UINT8").as_numpy("probabilities"), want, 1e-5, "UINT8 raw")
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        t = req.inputs.add(name="input", datatype="UINT8", shape=[3, 1, 64, 64])
        t.contents.uint_contents.extend(levels.ravel().tolist())
        out = {o.name: o for o in stub.ModelInfer(req).outputs}
        expect_close(np.array(out["probabilities"].contents.fp32_contents).reshape(3, 2), want, 1e-5, "UINT8 typed")

    @check("jpeg_files_as_bytes_match_the_pipeline")
    def _():
        result = infer(np.array(files, dtype=np.object_))
        expect_close(result.as_numpy("probabilities"), expected, 1e-4, "probabilities of the JPEG files")
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(files[0])
        out = {o.name: o for o in stub.ModelInfer(req).outputs}
        expect_close(out["probabilities"].contents.fp32_contents, expected[0], 1e-4, "typed BYTES")

    @check("dicom_as_bytes")
    def _():
        ct = open(f"{args.data}/dicom/CT_small.dcm", "rb").read()
        cr = open(f"{args.data}/dicom/RG1_UNCR.dcm", "rb").read()
        result = infer(np.array([ct, cr, files[0]], dtype=np.object_).reshape(3, 1))
        probs = result.as_numpy("probabilities")
        assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5), probs
        expect_close(probs[2], expected[0], 1e-4, "the JPEG beside the DICOMs")
        verdicts = result.as_numpy("verdict").tolist()
        # A CT (its Modality) and an adult CR (its image statistics) are not what the
        # pediatric chest model was trained on: OUT_OF_DISTRIBUTION, not an attack (README).
        assert verdicts[:2] == [b"OUT_OF_DISTRIBUTION"] * 2, verdicts
        assert result.get_response().parameters["medsentry.verdict"].string_param.split(",")[:2] == ["OUT_OF_DISTRIBUTION"] * 2

    @check("requested_outputs_only")
    def _():
        resp = infer(pixels[:1], outputs=["verdict", "probabilities"]).get_response()
        assert [o.name for o in resp.outputs] == ["verdict", "probabilities"], resp.outputs
        assert "medsentry.verdict" in resp.parameters
        expect_refused(lambda: infer(pixels[:1], outputs=["logits"]), grpc.StatusCode.INVALID_ARGUMENT, "logits")

    @check("errors")
    def _():
        code = grpc.StatusCode.INVALID_ARGUMENT
        expect_refused(lambda: infer(np.zeros((1, 1, 32, 32), np.float32)), code, "[N, 1, 64, 64]")
        expect_refused(lambda: infer(np.zeros((1, 64, 64), np.float32)), code, "shape")
        expect_refused(lambda: infer(np.zeros((1, 1, 64, 64), np.float64), "FP64"), code, "FP64")
        expect_refused(lambda: infer(np.zeros((1, 1, 64, 64), np.int32), "INT32"), code, "INT32")
        expect_refused(lambda: infer(np.full((1, 1, 64, 64), 2.0, np.float32)), code, "outside [0, 1]")
        expect_refused(lambda: infer(np.zeros((1, 1, 64, 64), np.float32), name="pixels"), code, "input")
        expect_refused(lambda: infer(np.array([b"not an image"], dtype=np.object_)), code)
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 64, 64])
        req.raw_input_contents.append(b"\0" * 1000)
        expect_refused(lambda: stub.ModelInfer(req), code, "16384 raw bytes")
        e = expect_refused(lambda: client.infer("no-such-model", [triton.InferInput("input", [1, 1, 64, 64], "FP32")]), grpc.StatusCode.NOT_FOUND)
        assert "no-such-model" in e.message()
        # Still serving after all that.
        expect_close(infer(pixels[:1]).as_numpy("probabilities"), expected[:1], 1e-4, "after the errors")

    @check("model_config_repository_index_and_statistics")
    def _():
        cfg = client.get_model_config(MODEL).config
        assert cfg.name == MODEL and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size >= 1, cfg
        assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("input", model_config_pb2.TYPE_FP32, [1, 64, 64])], cfg.input
        outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
        assert outs["probabilities"] == (model_config_pb2.TYPE_FP32, [2]) and outs["verdict"] == (model_config_pb2.TYPE_STRING, [1]), outs
        expect_refused(lambda: client.get_model_config("no-such-model"), grpc.StatusCode.NOT_FOUND)
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index[MODEL].state == "READY" and index[MODEL].version, index
        def stats():
            s = client.get_inference_statistics(MODEL).model_stats
            assert len(s) == 1 and s[0].name == MODEL, s
            return s[0]
        before = stats()
        infer(pixels)
        after = stats()
        got = after.inference_count - before.inference_count
        assert got == n, f"inference_count moved by {got}, {n} images were sent"
        st = after.inference_stats
        for part in ("queue", "compute_input", "compute_infer", "compute_output"):
            c = getattr(st, part).count - getattr(before.inference_stats, part).count
            assert c == n, f"{part}.count moved by {c}"
        assert st.success.count == after.inference_count and st.success.ns > st.compute_infer.ns > 0, st
        assert after.execution_count > before.execution_count and after.last_inference > 0, after
        # The request's items (3 rows each with feature squeezing, within the bundle's max
        # batch of 32) enter the batcher as one group and run as one ONNX Runtime call.
        if 3 * n <= 32:
            ran = after.execution_count - before.execution_count
            assert ran == 1, f"{n} items ran as {ran} executions"
        assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count, after.batch_stats
        everyone = client.get_inference_statistics().model_stats
        assert MODEL in {m.name for m in everyone} and len(everyone) >= 2, [m.name for m in everyone]

    return summary()


if __name__ == "__main__":
    sys.exit(main())
