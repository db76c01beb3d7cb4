"""Writes bench/results/index.md and index.json from the work directory of bench/index/run.

usage: report.py WORK MODEL THREADS ROUNDS LOAD_BEFORE NAME:ARGS [NAME:ARGS ...]
For every configuration and ef, the best queries/s of each side over the interleaved rounds, the
recall of that round, and their ratio; the build time is the best round's on each side.
"""

import datetime
import json
import math
import os
import subprocess
import sys


def best_round(rounds, key):
    return max(rounds, key=key)


def at_recall(curve, recall):
    """faiss's queries/s at `recall`, interpolated linearly in log queries/s between the two of its
    (recall, queries/s) points around it; None outside the recalls it measured."""
    curve = sorted(curve)
    for (r0, q0), (r1, q1) in zip(curve, curve[1:]):
        if r0 <= recall <= r1:
            fraction = 0.0 if r1 == r0 else (recall - r0) / (r1 - r0)
            return math.exp(math.log(q0) + fraction * (math.log(q1) - math.log(q0)))
    return None


def main():
    work, model, threads, rounds, load_before = sys.argv[1:6]
    configs = [c.split(":", 1) for c in sys.argv[6:]]
    rounds = int(rounds)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "unknown")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    report = {"benchmark": "index", "date": date, "command": f"bench/index/run (DIM_BENCH_MODEL={model})",
              "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_average_before": load_before,
                          "load_average_after": load_after},
              "model": model, "threads": int(threads), "rounds": rounds, "configurations": []}
    lines = ["# Index benchmark", "", f"- date: {date}", f"- machine: {cpu}, {os.cpu_count()} cores",
             f"- load average (1, 5, 15 min) before / after: {load_before} / {load_after}",
             f"- command: `{report['command']}`",
             f"- {threads} threads on both sides; {rounds} interleaved rounds (build, dim-search eval, faiss), "
             "best round per side shown, every round in the JSON", ""]
    for name, args in configs:
        d = f"{work}/{name}"
        infos = [json.load(open(f"{d}/index_info.{r}.json")) for r in range(1, rounds + 1)]
        ours = [json.load(open(f"{d}/eval.{r}.json")) for r in range(1, rounds + 1)]
        theirs = [json.load(open(f"{d}/faiss.{r}.json")) for r in range(1, rounds + 1)]
        walls = [float(open(f"{d}/build_wall.{r}").read()) for r in range(1, rounds + 1)]
        query_runs = [float(open(f"{d}/query_run.{r}").read()) for r in range(1, rounds + 1)]
        info = infos[0]
        p = info["params"]
        pca = info.get("post_process")
        dim = pca["dims"] if pca else info["model"]["dim"]
        vectors = f"{dim}-d" + (f" (PCA {pca['dims']}{' whitened' if pca['whiten'] else ''} of the "
                                f"{pca['input_dim']}-d `{info['model']['feature']}`)" if pca
                                else f" `{info['model']['feature']}` as embedded")
        ours_build = min(i["build_seconds"] for i in infos)
        faiss_build = min(t["build_seconds"] for t in theirs)
        config = {"name": name, "build_arguments": args, "vectors": {"indexed": info["count"],
                  "held_out_queries": len(info["held_out"]), "dim": dim, "feature": info["model"]["feature"],
                  "post_process": pca, "metric": p["metric"]},
                  "params": {"m": p["m"], "ef_construction": p["ef_construction"], "k": ours[0][0]["k"]},
                  "build": {"dim_search_seconds": ours_build, "faiss_seconds": faiss_build,
                            "build_ratio": faiss_build / ours_build,
                            "dim_search_rounds": [i["build_seconds"] for i in infos],
                            "dim_search_command_rounds": walls,
                            "faiss_rounds": [t["build_seconds"] for t in theirs]},
                  "query_run_seconds_including_load": min(query_runs), "searches": []}
        lines += [f"## {name}: {vectors}", "",
                  f"- {info['count']} indexed + {len(info['held_out'])} held-out queries, {p['metric']}; "
                  f"M {p['m']}, ef_construction {p['ef_construction']}; "
                  + (f"`dim-search build {args}`" if args else "`dim-search build` with no post-processing flag"),
                  f"- build: dim-search {ours_build:.2f} s (graph and its self-check; whole command "
                  f"{min(walls):.2f} s), faiss {faiss_build:.2f} s: **dim-search {faiss_build / ours_build:.2f}x "
                  "faiss's speed**",
                  f"- a `dim-search query --row 0` run, loading the saved index: {min(query_runs):.2f} s", "",
                  "| ef | dim-search recall@10 | dim-search queries/s | faiss recall@10 | faiss queries/s | "
                  "queries/s ratio dim-search / faiss (same ef) | faiss queries/s at dim-search's recall | "
                  "ratio at equal recall |", "|---|---|---|---|---|---|---|---|"]
        efs = [s["ef"] for s in ours[0]]
        bests = [(best_round([o[i] for o in ours], key=lambda s: s["queries_per_second"]),
                  best_round([t["searches"][i] for t in theirs], key=lambda s: s["queries_per_second"]))
                 for i in range(len(efs))]
        faiss_curve = [(base["recall_at_k"], base["queries_per_second"]) for _, base in bests]
        for i, (ef, (mine, base)) in enumerate(zip(efs, bests)):
            ratio = mine["queries_per_second"] / base["queries_per_second"]
            faiss_equal = at_recall(faiss_curve, mine["recall_at_k"])
            search = {
                "ef": ef, "dim_search": mine, "faiss": base, "queries_per_second_ratio": ratio,
                "dim_search_rounds": [o[i]["queries_per_second"] for o in ours],
                "faiss_rounds": [t["searches"][i]["queries_per_second"] for t in theirs]}
            if faiss_equal is not None:
                search["faiss_queries_per_second_at_equal_recall"] = faiss_equal
                search["equal_recall_ratio"] = mine["queries_per_second"] / faiss_equal
            config["searches"].append(search)
            equal = (f"{faiss_equal:.0f} | {mine['queries_per_second'] / faiss_equal:.2f}" if faiss_equal is not None
                     else "outside faiss's measured recalls | ")
            lines.append(f"| {ef} | {mine['recall_at_k']:.4f} | {mine['queries_per_second']:.0f} | "
                         f"{base['recall_at_k']:.4f} | {base['queries_per_second']:.0f} | {ratio:.2f} | {equal} |")
            print(f"{name} ef {ef}: dim-search recall {mine['recall_at_k']:.4f} at {mine['queries_per_second']:.0f} q/s; "
                  f"faiss recall {base['recall_at_k']:.4f} at {base['queries_per_second']:.0f} q/s; ratio {ratio:.2f}")
        print(f"{name} build: dim-search {ours_build:.2f} s, faiss {faiss_build:.2f} s, ratio {faiss_build / ours_build:.2f}")
        lines.append("")
        report["configurations"].append(config)
    lines += ["Queries are the held-out rows (never inserted); recall is against exact brute force over the",
              "indexed rows. Both libraries search all queries in one parallel call; queries/s is the best of",
              "three runs within a round, and the best round is shown. The equal-recall columns interpolate",
              "faiss's queries/s at dim-search's recall, linearly in log queries/s between faiss's two ef",
              "points around it (no extrapolation). dim-search's build time includes its",
              "search of every indexed row for itself (the rows it cannot reach are listed and scored exactly);",
              "faiss's does not."]
    os.makedirs("bench/results", exist_ok=True)
    open("bench/results/index.json", "w").write(json.dumps(report, indent=2) + "\n")
    open("bench/results/index.md", "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
