"""Writes bench/results/embed.md and embed.json from the measurements bench/embed/run collects
(one JSON line per collection and round).

usage: report.py RESULTS.jsonl MODEL BATCH THREADS

Every ratio is a same-run one: dim-embed against model-only ONNX Runtime and against the Python
pipelines measured right after it, in the same round, with the load average around them."""

import datetime
import json
import os
import subprocess
import sys


def cpu_name():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "unknown")


def entry(row):
    """The rates and ratios of one collection in one round."""
    rust_ips = row["images"] / row["rust_seconds"]
    loop_ips = row["rust_loop_images_per_second"]
    model_ips = row["model_only"]["images_per_second"]
    whole_ips = row["model_only_whole_graph"]["images_per_second"]
    python_ips = row["python"]["images_per_second"]
    result = {
        "round": row["round"],
        "collection": row["collection"],
        "images": row["images"],
        "load_average": row["load_average"],
        "dim_embed_seconds": row["rust_seconds"],
        "dim_embed_images_per_second": rust_ips,
        "dim_embed_loop_images_per_second": loop_ips,
        "model_only_images_per_second": model_ips,
        "model_only_whole_graph_images_per_second": whole_ips,
        "pruned_graph_ratio_vs_whole": model_ips / whole_ips,
        "python_images_per_second": python_ips,
        "ratio_vs_model_only": rust_ips / model_ips,
        "ratio_loop_vs_model_only": loop_ips / model_ips,
        "ratio_vs_python": rust_ips / python_ips,
        "ratio_loop_vs_python": loop_ips / python_ips,
        "agreement": row["agreement"],
    }
    if row["python_draft"] is not None:
        draft_ips = row["python_draft"]["images_per_second"]
        result["python_draft_images_per_second"] = draft_ips
        result["ratio_vs_python_draft"] = rust_ips / draft_ips
        result["ratio_loop_vs_python_draft"] = loop_ips / draft_ips
        result["draft_agreement"] = row["draft_agreement"]
    if row["full_jpeg_seconds"] is not None:
        full_ips = row["images"] / row["full_jpeg_seconds"]
        result["full_jpeg_decode_images_per_second"] = full_ips
        result["reduced_jpeg_ratio_vs_full"] = rust_ips / full_ips
        result["full_jpeg_agreement"] = row["full_jpeg_agreement"]
    return result


def main():
    results_path, model, batch, threads = sys.argv[1:]
    entries = [entry(json.loads(line)) for line in open(results_path)]
    cpu = cpu_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = f"cargo xtask bench embed (DIM_BENCH_MODEL={model})"
    report = {
        "benchmark": "embed",
        "date": date,
        "command": command,
        "machine": {"cpu": cpu, "cores": os.cpu_count()},
        "model": model,
        "batch": int(batch),
        "threads": int(threads),
        "collections": entries,
    }
    lines = [
        "# Embedding benchmark",
        "",
        f"- date: {date}",
        f"- machine: {cpu}, {os.cpu_count()} cores",
        f"- command: `{command}`",
        f"- model: `{model}`, batch {batch}, {threads} threads",
        "- two interleaved rounds: both collections and every pipeline, then all of them again",
        "",
        "| round | collection | images | load average (before, after) | dim-embed images/s end to end; first file to last batch "
        "| model-only images/s: cut graph; whole graph | dim-embed / model-only (end to end; loop) | Python images/s | dim-embed / Python (end to end; loop) "
        "| Python with `draft` images/s | dim-embed / Python `draft` (end to end; loop) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        draft = (
            (f"{e['python_draft_images_per_second']:.0f}", f"{e['ratio_vs_python_draft']:.2f}x; {e['ratio_loop_vs_python_draft']:.2f}x")
            if "python_draft_images_per_second" in e
            else ("", "")
        )
        lines.append(
            f"| {e['round']} | {e['collection']} | {e['images']} | {e['load_average'][0]:.1f}, {e['load_average'][1]:.1f} "
            f"| {e['dim_embed_images_per_second']:.0f}; {e['dim_embed_loop_images_per_second']:.0f} "
            f"| {e['model_only_images_per_second']:.0f}; {e['model_only_whole_graph_images_per_second']:.0f} | {e['ratio_vs_model_only']:.2f}; {e['ratio_loop_vs_model_only']:.2f} "
            f"| {e['python_images_per_second']:.0f} | {e['ratio_vs_python']:.2f}x; {e['ratio_loop_vs_python']:.2f}x "
            f"| {draft[0]} | {draft[1]} |"
        )
    lines += ["", "Agreement with the Python pipeline (cosine between the rows of the same file, mean and minimum):", ""]
    for e in entries:
        if e["round"] != 1:
            continue
        parts = [f"full-decode Python {e['agreement']['mean_cosine']:.4f} (min {e['agreement']['min_cosine']:.4f})"]
        if "draft_agreement" in e:
            parts.append(f"Python `draft` {e['draft_agreement']['mean_cosine']:.4f} (min {e['draft_agreement']['min_cosine']:.4f})")
        if "full_jpeg_agreement" in e:
            a = e["full_jpeg_agreement"]
            parts.append(f"dim-embed `--full-jpeg-decode` to full-decode Python {a['mean_cosine']:.4f} (min {a['min_cosine']:.4f})")
        lines.append(f"- {e['collection']}: dim-embed to " + "; ".join(parts))
    for e in entries:
        if "full_jpeg_decode_images_per_second" in e:
            lines.append(
                f"- round {e['round']}, {e['collection']}: reduced-size JPEG decoding {e['dim_embed_images_per_second']:.0f} "
                f"images/s against {e['full_jpeg_decode_images_per_second']:.0f} with `--full-jpeg-decode` "
                f"({e['reduced_jpeg_ratio_vs_full']:.2f}x)"
            )
    lines += [
        "",
        "dim-embed is timed twice: end to end (process start to exit: loading the model, listing and",
        "stat-ing the files, writing the outputs) and by its own count from its first file to its last",
        "batch, the window the Python pipelines are timed over (they write nothing). Model-only runs the",
        "model on pre-made tensors of the same batch size (no file reading or decoding), on the graph cut",
        "down to the `embedding` output as dim-embed runs it (the ratios use this rate), and on the whole",
        "graph: ONNX Runtime runs every node of a model file whatever outputs a run asks for, so the",
        "Python pipeline pays for the fc and Y layers too.",
    ]
    for e in entries:
        print(
            f"round {e['round']} {e['collection']}: dim-embed {e['dim_embed_images_per_second']:.0f}/s end to end = "
            f"{e['ratio_vs_model_only']:.2f} of model-only, {e['ratio_vs_python']:.2f}x Python"
            + (f", {e['ratio_vs_python_draft']:.2f}x Python draft" if "ratio_vs_python_draft" in e else "")
        )
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/embed.json", "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    with open("bench/results/embed.md", "w") as f:
        f.write("\n".join(lines) + "\n")


main()
