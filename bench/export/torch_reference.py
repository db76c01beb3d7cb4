"""Reference ONNX export of a dim-toolkit basic32x32 checkpoint by PyTorch's own exporter.

Rebuilds the basic32x32 encoder in PyTorch (conv 64/128/256 4x4/2 each with BatchNorm and ReLU,
FC1024 + BatchNorm + ReLU, FC64 = Y), loads the checkpoint's `weights.safetensors`, and exports
it with `torch.onnx.export` with the same contract as dim-export: input `image` [N, C, 32, 32] in
[0, 1] scaled to [-1, 1] inside the graph; outputs `conv`, `fc`, `y` and the L2-normalised
`embedding` of the chosen tap. Also checks that PyTorch's outputs match the given ONNX model of
dim-export, so the benchmark compares two graphs that compute the same thing.

usage: torch_reference.py CHECKPOINT_DIR OUT.onnx --embedding-source conv [--compare OURS.onnx]
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

BATCH_NORM_EPSILON = 1e-5
NORM_FLOOR = 1e-12


def read_safetensors(path):
    """Reads every F32 tensor of a safetensors file (8-byte header length, JSON header, data)."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        begin, end = info["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPSILON)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    def __init__(self, in_features, out_features, batch_norm_relu):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features, eps=BATCH_NORM_EPSILON) if batch_norm_relu else None

    def forward(self, x):
        x = self.linear(x)
        return torch.relu(self.bn(x)) if self.bn is not None else x


class Basic32x32(nn.Module):
    """Module names follow the checkpoint's parameter names (`conv1.conv.weight`, ...)."""

    def __init__(self, in_channels, embedding_source):
        super().__init__()
        self.conv1 = ConvBlock(in_channels, 64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 256)
        self.fc1 = LinearBlock(256 * 4 * 4, 1024, True)
        self.y = LinearBlock(1024, 64, False)
        self.embedding_source = embedding_source

    def forward(self, image):
        x = image * 2 - 1
        conv = self.conv3(self.conv2(self.conv1(x))).flatten(1)
        fc = self.fc1(conv)
        y = self.y(fc)
        source = {"conv": conv, "fc": fc, "y": y}[self.embedding_source]
        norm = torch.linalg.vector_norm(source, dim=1, keepdim=True).clamp_min(NORM_FLOOR)
        return conv, fc, y, source / norm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--embedding-source", choices=["conv", "fc", "y"], default="conv")
    parser.add_argument("--compare", type=Path, help="dim-export model whose outputs must match")
    args = parser.parse_args()

    config = json.loads((args.checkpoint / "config.json").read_text())
    if config["encoder"]["preset"] != "basic32x32":
        sys.exit(f"this reference rebuilds basic32x32 only, not {config['encoder']['preset']}")
    model = Basic32x32(config["encoder"]["in_channels"], args.embedding_source)
    tensors = read_safetensors(args.checkpoint / "weights.safetensors")
    state = {name[len("encoder.") :]: t for name, t in tensors.items() if name.startswith("encoder.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # num_batches_tracked is PyTorch bookkeeping that inference never reads.
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"checkpoint does not fit basic32x32: missing {missing}, unexpected {unexpected}")
    model.eval()

    channels = config["encoder"]["in_channels"]
    example = torch.rand(2, channels, 32, 32)
    outputs = ["conv", "fc", "y", "embedding"]
    torch.onnx.export(
        model,
        (example,),
        str(args.out),
        input_names=["image"],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )

    if args.compare:
        import onnxruntime as ort

        probe = torch.rand(5, channels, 32, 32)
        with torch.no_grad():
            expected = [t.numpy() for t in model(probe)]
        for path in [args.out, args.compare]:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            found = session.run(outputs, {"image": probe.numpy()})
            for name, e, f in zip(outputs, expected, found):
                diff = float(np.abs(e - f).max())
                if diff > 1e-4:
                    sys.exit(f"{path}: output {name} differs from PyTorch by {diff:g}")
        print(f"PyTorch, its export and {args.compare.name} agree on all outputs (max diff <= 1e-4)")


if __name__ == "__main__":
    main()
