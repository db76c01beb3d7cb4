"""Times dim_toolkit.Embedder for bench/python/run, and writes the report.

usage: measure.py MODEL DIR BATCH THREADS CLI_OUT     one JSON line: files and arrays rates, and
                                                      the largest difference from dim-embed's rows
       measure.py --report RESULTS.jsonl MODEL BATCH THREADS DIR
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def measure(model, folder, batch, threads, cli_out):
    import dim_toolkit
    from PIL import Image

    started = time.perf_counter()
    embedder = dim_toolkit.Embedder(model, batch_size=batch, threads=threads)
    load_seconds = time.perf_counter() - started
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".png"))
    started = time.perf_counter()
    from_files = embedder.embed(files)
    files_seconds = time.perf_counter() - started
    started = time.perf_counter()
    arrays = [np.asarray(Image.open(f)) for f in files]
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    from_arrays = embedder.embed(arrays)
    arrays_seconds = time.perf_counter() - started
    manifest = json.load(open(os.path.join(cli_out, "manifest.json")))
    cli = dict(zip((r["path"] for r in manifest["rows"]), np.load(os.path.join(cli_out, "embeddings.npy"))))
    cli_rows = np.stack([cli[os.path.abspath(f)] for f in files])
    return {
        "images": len(files),
        "load_seconds": load_seconds,
        "files_images_per_second": len(files) / files_seconds,
        "arrays_images_per_second": len(files) / arrays_seconds,
        "pil_decode_images_per_second": len(files) / decode_seconds,
        "max_abs_difference_from_cli": float(np.abs(from_files - cli_rows).max()),
        "max_abs_difference_arrays_from_files": float(np.abs(from_arrays - from_files).max()),
    }


def report(results_path, model, batch, threads, folder):
    rounds = [json.loads(line) for line in open(results_path)]
    cpu = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True,
                         text=True).stdout.strip()
    rows = []
    for r in rounds:
        p, plain = r["package"], r["plain"]["images_per_second"]
        rows.append({
            "round": r["round"],
            "load_average": r["load_average"],
            "images": p["images"],
            "package_files_images_per_second": p["files_images_per_second"],
            "package_arrays_images_per_second": p["arrays_images_per_second"],
            "cli_loop_images_per_second": r["cli_loop_images_per_second"],
            "cli_end_to_end_images_per_second": p["images"] / r["cli_seconds"],
            "plain_python_images_per_second": plain,
            "ratio_package_files_vs_cli_loop": p["files_images_per_second"] / r["cli_loop_images_per_second"],
            "ratio_package_files_vs_plain_python": p["files_images_per_second"] / plain,
            "max_abs_difference_from_cli": p["max_abs_difference_from_cli"],
            "max_abs_difference_arrays_from_files": p["max_abs_difference_arrays_from_files"],
        })
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "command": "cargo xtask bench python",
        "python": platform.python_version(),
        "model": model, "batch": int(batch), "threads": int(threads), "collection": folder,
        "rounds": rows,
    }
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/python.json.tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace("bench/results/python.json.tmp", "bench/results/python.json")
    out = [
        "# Python package benchmark\n",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- command: `{meta['command']}` (Python {meta['python']}, wheel built with `maturin build --release`)",
        f"- model: `{model}`, batch {batch}, {threads} threads; collection: the {rows[0]['images']:,} "
        f"Fashion-MNIST test images as 28x28 PNGs ({folder})",
        "- two interleaved rounds\n",
        "| round | load average (before, after) | `Embedder.embed(paths)` images/s | `Embedder.embed(arrays)` images/s (decoded beforehand) "
        "| dim-embed images/s: loop; end to end | plain PIL + onnxruntime loop images/s "
        "| package / dim-embed loop | package / plain loop | max abs difference from dim-embed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['round']} | {r['load_average'][0]}, {r['load_average'][1]} | {r['package_files_images_per_second']:.0f} | {r['package_arrays_images_per_second']:.0f} "
            f"| {r['cli_loop_images_per_second']:.0f}; {r['cli_end_to_end_images_per_second']:.0f} "
            f"| {r['plain_python_images_per_second']:.0f} | {r['ratio_package_files_vs_cli_loop']:.2f}x "
            f"| {r['ratio_package_files_vs_plain_python']:.2f}x | {r['max_abs_difference_from_cli']:.1e} |"
        )
    out += [
        "",
        "`Embedder.embed(paths)` is timed from the call to the returned array (decoding in Rust, in "
        "parallel, the GIL released); dim-embed's loop rate is its own count from first file to last "
        "batch (it also writes its files), and end to end is process start to exit. The plain loop "
        "(bench/embed/python_pipeline.py) decodes with PIL, preprocesses with numpy and runs the "
        "whole graph with onnxruntime, as a user without the package would. The package's vectors "
        "are dim-embed's (the last column); arrays give the files' vectors to "
        f"{max(r['max_abs_difference_arrays_from_files'] for r in rows):.1e}.",
    ]
    with open("bench/results/python.md.tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace("bench/results/python.md.tmp", "bench/results/python.md")
    print("\n".join(out))


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        report(*sys.argv[2:])
    else:
        model, folder, batch, threads, cli_out = sys.argv[1:]
        print(json.dumps(measure(model, folder, int(batch), int(threads), cli_out)))
