"""Screen DICOM or PNG/JPEG files with medsentry.v1 from Python: the README's example.

Stubs come from the repository's proto (grpcio-tools):

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/medsentry/v1/sentry.proto
    PYTHONPATH=gen python tests/clients/screen.py --target 127.0.0.1:50051 study/*.dcm

Prints one line per file (verdict, label, probability) and exits 1 if any file was refused.
tests/python_client.rs generates the stubs and runs it against the real server.
"""
import argparse
import os
import sys

import grpc
from medsentry.v1 import sentry_pb2, sentry_pb2_grpc


def screen(stub, path, model="", token=None):
    """One file through Screen: DICOM (the Part 10 preamble) or PNG/JPEG bytes."""
    data = open(path, "rb").read()
    kind = "dicom" if data[128:132] == b"DICM" else "image"
    request = sentry_pb2.ScreenRequest(request_id=os.path.basename(path), model=model, **{kind: data})
    metadata = [("authorization", f"Bearer {token}")] if token else None
    return stub.Screen(request, timeout=60, metadata=metadata)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--model", default="")
    ap.add_argument("--token", default=os.environ.get("MEDSENTRY_TOKEN"))
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    refused = 0
    with grpc.insecure_channel(args.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = sentry_pb2_grpc.SentryStub(channel)
        for path in args.files:
            try:
                r = screen(stub, path, args.model, args.token)
            except grpc.RpcError as e:
                refused += 1
                reason = dict(e.trailing_metadata() or ()).get("medsentry-reason", "")
                print(f"{path}\tREFUSED\t{e.code().name}\t{reason}\t{e.details()}")
                continue
            verdict = sentry_pb2.Verdict.Name(r.screening.verdict).removeprefix("VERDICT_")
            print(f"{path}\t{verdict}\t{r.top_label}\t{r.top_probability:.3f}\t{r.model.name}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
