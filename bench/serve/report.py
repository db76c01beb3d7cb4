"""Writes bench/results/serve.md and .json from the JSON lines bench/serve/run collected.

usage: report.py RESULTS.jsonl COMMAND CURRENT_REV BASELINE_REV
"""

import datetime
import json
import os
import platform
import statistics
import sys


def main():
    results_path, command, current_rev, baseline_rev = sys.argv[1:5]
    lines = [json.loads(line) for line in open(results_path)]
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
        platform.processor(),
    )
    versions = [v for v in ("current", "baseline") if any(r["version"] == v for r in lines)]
    clients = sorted({r["clients"] for r in lines})
    summary = []
    for count in clients:
        row = {"clients": count}
        for version in versions:
            runs = [r for r in lines if r["version"] == version and r["clients"] == count]
            row[version] = {
                "requests_per_second": statistics.mean(r["requests_per_second"] for r in runs),
                "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                "p99_ms": statistics.mean(r["p99_ms"] for r in runs),
                "rounds": len(runs),
            }
        if len(versions) == 2:
            row["rps_ratio_current_over_baseline"] = (
                row["current"]["requests_per_second"] / row["baseline"]["requests_per_second"]
            )
        summary.append(row)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "load_average_at_report": os.getloadavg(),
        "command": command,
        "current": current_rev,
        "baseline": baseline_rev,
    }
    with open("bench/results/serve.json", "w") as out:
        json.dump({**meta, "summary": summary, "runs": lines}, out, indent=2)
        out.write("\n")

    md = [
        "# dim-serve under load",
        "",
        "A bounded load test on localhost: 80 % row queries (`GET /api/search/row/N?k=10`) and 20 % image",
        "uploads (`POST /api/search/image?k=10`, a 28x28 PNG of the collection), the same seeded request",
        "list for every run, from 1, 8 and 32 concurrent clients (Python threads, one keep-alive",
        "connection each), a fixed number of requests stopped at 60 s. The server serves the 10,000",
        "Fashion-MNIST test images indexed by `dim-search build` with the shipped model (PCA 256 +",
        "whitening). Latencies are of answered (200) requests; every status code is counted, 503 being",
        "the server's refusal when its upload slots (4) are busy. Current and baseline builds run",
        "alternately in the same script, two rounds each; cells are the mean of the rounds.",
        "",
        f"- machine: {meta['machine']}",
        f"- command: `{command}`",
        f"- date: {meta['date']}",
        f"- current: {current_rev}; baseline: {baseline_rev}",
        "",
        "| clients | " + " | ".join(f"{v} requests/s | {v} p50 / p99 ms" for v in versions)
        + (" | current / baseline requests/s |" if len(versions) == 2 else " |"),
        "|---|" + "---|---|" * len(versions) + ("---|" if len(versions) == 2 else ""),
    ]
    for row in summary:
        cells = [str(row["clients"])]
        for version in versions:
            v = row[version]
            cells += [f"{v['requests_per_second']:.0f}", f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}"]
        if len(versions) == 2:
            cells.append(f"{row['rps_ratio_current_over_baseline']:.2f}x")
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "Every run (status codes: count):", "", "| version | round | clients | sent | s | requests/s | row p50 / p99 ms | upload p50 / p99 ms | statuses |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "–" if x is None else f"{x:.1f}"
    for r in lines:
        statuses = ", ".join(f"{code}: {count}" for code, count in r["statuses"].items())
        md.append(
            f"| {r['version']} | {r['round']} | {r['clients']} | {r['requests_sent']} | {r['seconds']:.1f} | "
            f"{r['requests_per_second']:.0f} | {fmt(r['row_p50_ms'])} / {fmt(r['row_p99_ms'])} | "
            f"{fmt(r['upload_p50_ms'])} / {fmt(r['upload_p99_ms'])} | {statuses} |"
        )
    with open("bench/results/serve.md", "w") as out:
        out.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
