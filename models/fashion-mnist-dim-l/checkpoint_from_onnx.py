"""Rebuilds an evaluation-equivalent dim-train checkpoint (weights.safetensors) from model.onnx.

model.onnx carries each BatchNorm folded into the conv or linear layer before it (weight and
bias). The checkpoint keeps the folded weight and stores the folded bias in a BatchNorm that is
otherwise the identity (scale 1, running mean 0, running variance 1 - eps, so that
sqrt(var + eps) = 1), so the encoder's eval-mode taps equal the ONNX outputs. Training
statistics are not recoverable; use the result only frozen (dim-eval).

Usage: python checkpoint_from_onnx.py model.onnx OUT_DIR   (then copy config.json into OUT_DIR)
Needs only the `onnx` package.
"""

import json
import os
import struct
import sys

import onnx

BATCH_NORM_EPSILON = 1e-5  # dim_models::parameters::BATCH_NORM_EPSILON


def main(model_path, out_dir):
    initializers = {i.name: i for i in onnx.load(model_path).graph.initializer}

    def stored(name):
        tensor = initializers[name]
        if tensor.data_type != onnx.TensorProto.FLOAT or not tensor.raw_data:
            raise SystemExit(f"{name}: expected raw float32 data")
        return list(tensor.dims), tensor.raw_data

    def filled(count, value):
        return [count], struct.pack(f"<{count}f", *([value] * count))

    def bias_as_batch_norm(prefix, bias):
        count = len(bias) // 4
        return {
            f"{prefix}.bn.weight": filled(count, 1.0),
            f"{prefix}.bn.bias": ([count], bias),
            f"{prefix}.bn.running_mean": filled(count, 0.0),
            f"{prefix}.bn.running_var": filled(count, 1.0 - BATCH_NORM_EPSILON),
        }

    tensors = {}
    for layer in ["conv1", "conv2", "conv3"]:
        tensors[f"encoder.{layer}.conv.weight"] = stored(f"{layer}.weight")
        tensors.update(bias_as_batch_norm(f"encoder.{layer}", stored(f"{layer}.bias")[1]))
    shape, fc_bias = stored("fc1.bias")
    tensors["encoder.fc1.linear.weight"] = stored("fc1.weight")
    tensors["encoder.fc1.linear.bias"] = filled(shape[0], 0.0)
    tensors.update(bias_as_batch_norm("encoder.fc1", fc_bias))
    tensors["encoder.y.linear.weight"] = stored("y.weight")
    tensors["encoder.y.linear.bias"] = stored("y.bias")

    header, data = {}, bytearray()
    for name in sorted(tensors):
        shape, raw = tensors[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "weights.safetensors"), "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)))
        out.write(header_bytes)
        out.write(data)


if __name__ == "__main__":
    main(*sys.argv[1:3])
