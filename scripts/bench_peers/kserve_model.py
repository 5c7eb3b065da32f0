"""KServe ModelServer serving one ONNX classifier over the Open Inference Protocol.

Started by bench.py in the kserve venv. A plain kserve.Model subclass, written as KServe's
custom-model docs show (synchronous predict on the V2 InferRequest): the request's FP32
tensor ([0, 1] intensities, NCHW at the model's size) is normalised with the bundle's
mean/std, run through one onnxruntime InferenceSession (intra_op_num_threads from
--threads) and its logits are returned as a raw FP32 output.
"""

import argparse
import json

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server


class OnnxClassifier(Model):
    def __init__(self, name, onnx_path, input_name, output_name, mean, std, threads):
        super().__init__(name)
        self.onnx_path = onnx_path
        self.input_name = input_name
        self.output_name = output_name
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
        self.threads = threads
        self.session = None

    def load(self):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.onnx_path, opts, providers=["CPUExecutionProvider"]
        )
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        x = ((x - self.mean) / self.std).astype(np.float32, copy=False)
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        out = InferOutput(name=self.output_name, shape=list(logits.shape), datatype="FP32")
        out.set_data_from_numpy(logits, binary_data=True)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=True,
        )


if __name__ == "__main__":
    # KServe's own flags (--grpc_port, --http_port, --enable_latency_logging, ...) plus ours.
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--mean", required=True, help="JSON list")
    parser.add_argument("--std", required=True, help="JSON list")
    parser.add_argument("--threads", type=int, default=2)
    args, _ = parser.parse_known_args()
    model = OnnxClassifier(
        args.model_name,
        args.onnx,
        args.input,
        args.output,
        json.loads(args.mean),
        json.loads(args.std),
        args.threads,
    )
    model.load()
    ModelServer(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        enable_latency_logging=False,
    ).start([model])
