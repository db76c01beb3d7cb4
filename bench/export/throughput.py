"""Measures ONNX Runtime throughput of two models of the same encoder (dim-export's and PyTorch's
export) with identical SessionOptions, and writes the comparison as Markdown and JSON.

Rounds alternate between the models so that load from other processes on the machine affects
both alike; the median over rounds is reported.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def images_per_second(sess, batch, min_seconds):
    """Runs whole batches for at least `min_seconds` and returns images per second."""
    shape = [batch] + [d for d in sess.get_inputs()[0].shape[1:]]
    feed = {"image": np.random.default_rng(batch).random(shape, dtype=np.float32)}
    runs = 0
    start = time.perf_counter()
    while True:
        sess.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return runs * batch / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ours", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per model, batch size and round")
    parser.add_argument("--results", type=Path, required=True, help="output path without extension")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--date", required=True)
    args = parser.parse_args()

    sessions = {"ours": session(args.ours, args.threads), "pytorch": session(args.reference, args.threads)}
    rows = []
    for batch in args.batches:
        for sess in sessions.values():
            images_per_second(sess, batch, 0.5)  # warm-up: allocations, kernel selection
        samples = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                samples[name].append(images_per_second(sess, batch, args.seconds))
        ours, pytorch = statistics.median(samples["ours"]), statistics.median(samples["pytorch"])
        rows.append(
            {
                "batch": batch,
                "ours_images_per_s": round(ours, 1),
                "pytorch_images_per_s": round(pytorch, 1),
                "ratio_ours_over_pytorch": round(ours / pytorch, 3),
                "ours_rounds": [round(s, 1) for s in samples["ours"]],
                "pytorch_rounds": [round(s, 1) for s in samples["pytorch"]],
            }
        )
        print(f"batch {batch:>4}: ours {ours:10.1f} img/s, PyTorch export {pytorch:10.1f} img/s, ratio {ours / pytorch:.3f}x")

    report = {
        "benchmark": "export",
        "what": "ONNX Runtime throughput of dim-export's basic32x32 graph vs torch.onnx.export of the same weights",
        "machine": args.machine,
        "command": args.command,
        "date": args.date,
        "onnxruntime": ort.__version__,
        "session_options": {
            "intra_op_num_threads": args.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "provider": "CPUExecutionProvider",
        },
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "results": rows,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# export: dim-export graph vs PyTorch's ONNX export, ONNX Runtime throughput",
        "",
        f"- machine: {args.machine}",
        f"- command: `{args.command}`",
        f"- date: {args.date}",
        f"- onnxruntime {ort.__version__}, CPU provider, intra-op threads {args.threads}, inter-op 1, "
        "sequential, ORT_ENABLE_ALL (identical for both models)",
        f"- model: basic32x32, 3 channels, random weights; median of {args.rounds} alternating rounds "
        f"of {args.seconds:g} s per model and batch size",
        "",
        "| batch | dim-export (img/s) | torch.onnx.export (img/s) | ratio ours/PyTorch |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch']} | {row['ours_images_per_s']:.1f} | {row['pytorch_images_per_s']:.1f} | "
            f"{row['ratio_ours_over_pytorch']:.3f}x |"
        )
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
