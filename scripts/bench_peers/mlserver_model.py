"""MLServer custom runtime serving one ONNX classifier over the Open Inference Protocol.

bench.py writes a settings.json and a model-settings.json naming
`mlserver_model.OnnxClassifier` (this folder is on PYTHONPATH) with the ONNX file as
`parameters.uri` and the rest in `parameters.extra`. As MLServer's custom-runtime docs show:
an MLModel whose predict decodes the request's FP32 tensor with NumpyCodec ([0, 1]
intensities, NCHW at the model's size), normalises it with the bundle's mean/std, runs one
onnxruntime InferenceSession (intra_op_num_threads from extra.threads) and answers the logits.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = params.extra or {}
        self.input_name = extra["input"]
        self.output_name = extra["output"]
        self.mean = np.asarray(extra["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(extra["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("threads", 2))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            params.uri, opts, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        x = ((x - self.mean) / self.std).astype(np.float32, copy=False)
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(self.output_name, logits)],
        )
