"""Renders one or more dim-eval JSON reports as a Markdown table (rows: model/tap, columns: probes).

Usage: eval_table.py NAME=eval.json [NAME=eval.json ...]
The first report's baselines (random encoder, raw pixels) are shown once; later reports add
their checkpoint rows under their NAME.
"""
import json
import sys

PROBES = ["linear", "mlp", "knn"]


def rows_of(report, name, with_baselines):
    table = {}
    for entry in report["entries"]:
        model = entry["model"]
        if model == "checkpoint":
            label = name
        elif with_baselines:
            label = {"random": "random encoder", "raw": "raw pixels"}.get(model, model)
        else:
            continue
        key = (label, entry["tap"], entry["dims"])
        table.setdefault(key, {})[entry["probe"]] = entry["test_accuracy"]
    return table


def main():
    table = {}
    for i, arg in enumerate(sys.argv[1:]):
        name, path = arg.split("=", 1)
        with open(path) as f:
            table.update(rows_of(json.load(f), name, with_baselines=(i == 0)))
    print("| model | tap (dims) | " + " | ".join(f"{p} probe" for p in PROBES) + " |")
    print("|---|---|" + "---|" * len(PROBES))
    for (label, tap, dims), accs in table.items():
        cells = [f"{100 * accs[p]:.2f}" if p in accs else "–" for p in PROBES]
        print(f"| {label} | {tap} ({dims}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
