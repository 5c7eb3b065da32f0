"""medsentry's KServe V2 REST binding through NVIDIA's tritonclient.http.

Run by tests/oip_tritonclient.rs against a real medsentry started with --http-listen:

    python tritonclient_http.py --url 127.0.0.1:PORT --reference models/NAME/reference.json --data ../shared/data

Every check runs; each prints "ok NAME" or "FAIL NAME: why"; the exit status is the number
of failures (0: all passed).
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.http as httpclient

from checklist import check, expect_refused, summary

MODEL = "chest-xray-pneumonia"
VERDICTS = {b"CLEAN", b"SUSPICIOUS", b"ADVERSARIAL", b"NOT_SCREENED", b"OUT_OF_DISTRIBUTION"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    ref = json.load(open(args.reference))
    pixels = np.array([it["pixels"] for it in ref["items"]], dtype=np.float32).reshape(-1, 1, 64, 64)
    expected = np.array([it["probabilities"] for it in ref["items"]], dtype=np.float32)
    files = [open(f"{args.data}/{ref['data_root']}/{it['file']}", "rb").read() for it in ref["items"]]
    n = len(pixels)

    def infer(array, datatype="FP32", binary=True, outputs=None, model=MODEL):
        inp = httpclient.InferInput("input", list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary)
        req = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
        return client.infer(model, [inp], outputs=req, request_id="rest-1")

    @check("live_ready_and_metadata")
    def _():
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        md = client.get_server_metadata()
        assert md["name"] == "medsentry" and "medsentry_screening" in md["extensions"], md
        mm = client.get_model_metadata(MODEL)
        assert [(i["name"], i["datatype"], i["shape"]) for i in mm["inputs"]] == [("input", "FP32", [-1, 1, 64, 64])], mm
        assert "probabilities" in [o["name"] for o in mm["outputs"]], mm

    @check("binary_fp32_batch_matches_the_pipeline")
    def _():
        r = infer(pixels)
        got = r.as_numpy("probabilities")
        assert np.max(np.abs(got - expected)) <= 1e-4, np.max(np.abs(got - expected))
        assert set(r.as_numpy("verdict").tolist()) <= VERDICTS, r.as_numpy("verdict")
        assert r.get_response()["parameters"]["medsentry.verdict"], r.get_response()

    @check("json_fp32_with_json_outputs")
    def _():
        r = infer(pixels[:2], binary=False, outputs=["probabilities", "verdict"])
        got = r.as_numpy("probabilities")
        assert np.max(np.abs(got - expected[:2])) <= 1e-4
        outs = r.get_response()["outputs"]
        assert all("data" in o for o in outs), outs

    @check("jpeg_files_as_binary_bytes")
    def _():
        arr = np.array(files, dtype=np.object_)
        r = infer(arr, datatype="BYTES")
        got = r.as_numpy("probabilities")
        assert got.shape == (n, 2), got.shape
        assert np.max(np.abs(got - expected)) <= 0.05, np.max(np.abs(got - expected))

    @check("repository_config_and_statistics")
    def _():
        index = client.get_model_repository_index()
        assert {"name": MODEL, "version": index[0]["version"], "state": "READY", "reason": ""} in index, index
        config = client.get_model_config(MODEL)
        assert config["name"] == MODEL and config["backend"] == "onnxruntime" and config["max_batch_size"] > 0, config
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("input", "TYPE_FP32", [1, 64, 64])], config
        assert "probabilities" in [o["name"] for o in config["output"]], config

        def counts():
            stats = client.get_inference_statistics(MODEL)["model_stats"]
            assert [s["name"] for s in stats] == [MODEL], stats
            s = stats[0]
            return s["inference_count"], s["inference_stats"]["success"]["count"], s["execution_count"]

        before = counts()
        infer(pixels)
        after = counts()
        assert after[0] - before[0] == n and after[1] - before[1] == n, (before, after)
        assert after[2] > before[2], (before, after)
        assert MODEL in [s["name"] for s in client.get_inference_statistics()["model_stats"]]
        expect_refused(lambda: client.get_model_config("no-such-model"), 404)

    @check("errors_map_to_http_codes")
    def _():
        expect_refused(lambda: infer(np.zeros((1, 1, 32, 32), np.float32)), 400, "[N, 1, 64, 64]")
        expect_refused(lambda: infer(pixels[:1], model="no-such-model"), 404)
        expect_refused(lambda: client.get_model_metadata("no-such-model"), 404)
        # Still serving.
        assert np.max(np.abs(infer(pixels[:1]).as_numpy("probabilities") - expected[:1])) <= 1e-4

    return summary()


if __name__ == "__main__":
    sys.exit(main())
