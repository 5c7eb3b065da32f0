"""NVIDIA's tritonclient (gRPC) against medsentry over TLS and mutual TLS, with a bearer
token where the policy asks for one.

Run by tests/oip_tritonclient.rs against a real medsentry started with --tls-cert/--tls-key
(and --tls-client-ca for mutual TLS):

    python tritonclient_tls.py --url localhost:PORT --ca server-ca.pem [--cert c.pem --key k.pem]
        [--token TOKEN] --reference models/NAME/reference.json [--expect-refused]

Prints "all checks passed" and exits 0, or names the failure and exits 1. With
--expect-refused the first call must fail (no client certificate, or one the server's
client CA did not sign).
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

MODEL = "chest-xray-pneumonia"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--token")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--expect-refused", action="store_true")
    args = ap.parse_args()
    client = triton.InferenceServerClient(
        url=args.url, ssl=True, root_certificates=args.ca, private_key=args.key, certificate_chain=args.cert
    )
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    if args.expect_refused:
        try:
            client.is_server_live(headers=headers)
        except InferenceServerException as e:
            print(f"refused as expected: {e.status()} {e.message()}")
            return 0
        print("FAIL: the server answered a client it should have refused")
        return 1
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    md = client.get_model_metadata(MODEL, headers=headers)
    assert md.name == MODEL, md
    ref = json.load(open(args.reference))
    pixels = np.array([it["pixels"] for it in ref["items"]], dtype=np.float32).reshape(-1, 1, 64, 64)
    expected = np.array([it["probabilities"] for it in ref["items"]], dtype=np.float32)
    inp = triton.InferInput("input", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(pixels)
    result = client.infer(MODEL, [inp], headers=headers, request_id="tls-1")
    worst = float(np.max(np.abs(result.as_numpy("probabilities") - expected)))
    assert worst <= 1e-4, f"probabilities differ by {worst}"
    assert result.as_numpy("verdict").shape == (len(pixels),)
    print(f"{len(pixels)} images over TLS, probabilities within {worst:.2g} of the pipeline's")
    print("all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, InferenceServerException) as e:
        print(f"FAIL: {e!r}")
        sys.exit(1)
