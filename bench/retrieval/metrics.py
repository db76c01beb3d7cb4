"""Helpers for bench/retrieval/run (issue 9's retrieval ablation).

  retrieval_metrics.py pixels DIR --pca D --out OUT.json [--size 32] [--channels 1|3]
      Raw-pixel baseline: every PNG under DIR/<class>/ decoded as the model sees it (transparency
      composited over white, grey or RGB, centred on a black SIZE x SIZE canvas when smaller, /255),
      flattened, then scored as embedded and
      after a centring + PCA-whitening to D dimensions fitted on the same rows (eps 1e-6, like
      dim-search), by exact cosine search with every image a query.
  retrieval_metrics.py check EMB_DIR --pca D --out OUT.json
      The same numpy scoring of a dim-embed output directory (labels = each file's folder), to
      check the numpy path against dim-search retrieval.
  retrieval_metrics.py table --out-md MD --out-json JSON META.json [META.json ...]
      Collects the results of every row that META.json (written by bench/retrieval/run, naming
      its runs folder) lists into one report section per META.json.

Measures (as in vectors/src/retrieval.rs): precision@k micro (mean over queries) and macro (mean
over classes of the class mean), k-NN accuracy (majority vote of the k neighbours, a tie going to
the tied label held by the nearest neighbour). The query itself is excluded.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

EPS = 1e-6


def load_folder(root, size=32, channels=1):
    from PIL import Image

    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys = [], []
    for ci, c in enumerate(classes):
        folder = os.path.join(root, c)
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(".png"):
                continue
            img = Image.open(os.path.join(folder, name))
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # As the models' default background: transparent pixels composited over white.
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
            h, w = img.shape[:2]
            if h > size or w > size:
                raise SystemExit(f"{name}: {w}x{h} is larger than {size}x{size}; only padding is implemented")
            canvas = np.zeros((size, size) + img.shape[2:], np.float32)
            top, left = (size - h) // 2, (size - w) // 2
            canvas[top:top + h, left:left + w] = img
            xs.append(canvas.reshape(-1))
            ys.append(ci)
    return np.stack(xs), np.asarray(ys), classes


def pca_whiten(x, dims):
    x = x.astype(np.float64)
    mean = x.mean(0, keepdims=True)
    xc = x - mean
    cov = xc.T @ xc / (len(x) - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dims]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    return ((xc @ vecs) / np.sqrt(vals + EPS)).astype(np.float32)


def neighbours(x, k):
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    n = len(x)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, 1024):
        s = x[start:start + 1024] @ x.T
        rows = np.arange(start, min(start + 1024, n))
        s[rows - start, rows] = -np.inf
        part = np.argpartition(-s, k, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, 1)
        # higher score first, then lower row
        order = np.lexsort((part, -ps), axis=1)
        out[start:start + len(rows)] = np.take_along_axis(part, order, 1)
    return out


def score(nb, labels):
    k = nb.shape[1]
    nl = labels[nb]
    hits = nl == labels[:, None]
    precision = hits.sum(1) / k
    classes = np.unique(labels)
    macro = float(np.mean([precision[labels == c].mean() for c in classes]))
    right = 0
    for q in range(len(labels)):
        counts = np.bincount(nl[q], minlength=classes.max() + 1)
        best = counts.max()
        tied = set(np.flatnonzero(counts == best))
        winner = next(l for l in nl[q] if l in tied)
        right += winner == labels[q]
    return {"precision_at_k_micro": float(precision.mean()), "precision_at_k_macro": macro,
            "knn_accuracy": right / len(labels), "k": k, "queries": len(labels)}


def evaluate(x, labels, dims, k):
    t = time.time()
    result = {"dims": int(x.shape[1]), "as_embedded": score(neighbours(x, k), labels)}
    if dims:
        result["pca"] = {"dims": dims, "whiten": True, **score(neighbours(pca_whiten(x, dims), k), labels)}
    result["seconds"] = time.time() - t
    return result


def cmd_pixels(a):
    t = time.time()
    x, y, classes = load_folder(a.dir, a.size, a.channels)
    res = evaluate(x, y, a.pca, a.k)
    res.update(source=a.dir, classes=classes, total_seconds=time.time() - t)
    json.dump(res, open(a.out, "w"), indent=1)
    print(json.dumps({k: res[k] for k in ("as_embedded", "pca") if k in res}))


def cmd_check(a):
    m = json.load(open(os.path.join(a.emb, "manifest.json")))
    x = np.load(os.path.join(a.emb, "embeddings.npy"))
    folders = [os.path.basename(os.path.dirname(r["path"])) for r in m["rows"]]
    names = sorted(set(folders))
    y = np.asarray([names.index(f) for f in folders])
    res = evaluate(x, y, a.pca, a.k)
    json.dump(res, open(a.out, "w"), indent=1)
    print(json.dumps({k: res[k] for k in ("as_embedded", "pca") if k in res}))


# ---------------------------------------------------------------- report
def dim_search_scores(path):
    """(as embedded, after PCA) scores from a dim-search retrieval --json file."""
    r = json.load(open(path))
    runs = r.get("runs", r)
    found = {}
    for run in runs if isinstance(runs, list) else [runs]:
        s = run.get("scores", run)
        key = "pca" if run.get("pca") or run.get("post_process") else "as_embedded"
        found[key] = {m: s[m] for m in ("precision_at_k_micro", "precision_at_k_macro", "knn_accuracy")}
        found[key]["dims"] = run.get("dims")
        if key == "pca":
            p = run.get("pca") or run.get("post_process")
            found["pca_dims"] = p.get("dims") if isinstance(p, dict) else None
    return found


def fmt(s):
    return f"{s['precision_at_k_micro']:.4f} / {s['precision_at_k_macro']:.4f} / {s['knn_accuracy']:.4f}"


def section(meta):
    rows = []
    runs = meta["runs"]
    for row in meta.get("rows", []):
        d = os.path.join(runs, row["name"])
        entry = dict(row)
        entry["taps"] = {}
        tf = os.path.join(d, "timing.json")
        if os.path.exists(tf):
            entry["timing_s"] = json.load(open(tf))
        for tap in ("conv", "fc", "y"):
            f = os.path.join(d, f"retrieval-{tap}.json")
            if os.path.exists(f):
                entry["taps"][tap] = dim_search_scores(f)
        f = os.path.join(d, "pixels.json")
        if os.path.exists(f):
            p = json.load(open(f))
            entry["taps"]["pixels"] = {"as_embedded": {**p["as_embedded"], "dims": p["dims"]},
                                       "pca": p["pca"], "pca_dims": p["pca"]["dims"]}
        entry["ran"] = bool(entry["taps"]) and "timing_s" in entry
        rows.append(entry)
    return {**{k: v for k, v in meta.items() if k != "rows"}, "rows": rows}


def cmd_table(a):
    sections = [section(json.load(open(m))) for m in a.meta]
    json.dump({"sections": sections}, open(a.out_json, "w"), indent=1)
    out = []
    w = out.append
    w(f"# {a.heading}\n")
    w("Cells: precision@10 micro / precision@10 macro / k-NN accuracy (k = 10, cosine, exact search, "
      "every image of the collection a query, itself excluded). \"whitened\" = centred + PCA-whitened "
      "(eps 1e-6) to the dims shown, fitted on the same collection: dim-search retrieval for model "
      "taps, the same computation in numpy (bench/retrieval/metrics.py) for raw pixels. "
      "Times are wall seconds on a shared machine (other jobs ran at the same time): train = "
      "dim-train (or writing the random checkpoint), total = train + export + embedding and scoring "
      "the three taps.\n")
    for sec in sections:
        w(f"## {sec.get('title', 'Retrieval ablation')}\n")
        for k in ("machine", "command", "started", "finished", "budget", "collection"):
            if k in sec:
                w(f"- {k}: {'`' + sec[k] + '`' if k == 'command' else sec[k]}")
        w("")
        w("| row | tap (dims) | as embedded | whitened | train s | row total s |")
        w("|---|---|---|---|---|---|")
        for e in sec["rows"]:
            if not e["ran"]:
                continue
            t = e.get("timing_s", {})
            first = True
            for tap, s in e["taps"].items():
                dims = s.get("pca_dims")
                wh = (fmt(s["pca"]) + (f" ({dims})" if dims else "")) if "pca" in s else "–"
                tdims = s["as_embedded"].get("dims") or {"pixels": 1024, "conv": 4096, "fc": 1024, "y": 64}.get(tap, "")
                w(f"| {e['label'] if first else ''} | {tap} ({tdims}) | {fmt(s['as_embedded'])} | {wh} | "
                  f"{t.get('train', '–') if first else ''} | {t.get('total', '–') if first else ''} |")
                first = False
        missing = [e for e in sec["rows"] if not e["ran"]]
        if missing:
            w("\nNot run:\n")
            for e in missing:
                w(f"- {e['label']}: {e.get('reason', 'no result (not reached in the time budget)')}")
        w("")
    open(a.out_md, "w").write("\n".join(out) + "\n")
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pixels")
    s.add_argument("dir"); s.add_argument("--pca", type=int, default=256); s.add_argument("--k", type=int, default=10)
    s.add_argument("--size", type=int, default=32); s.add_argument("--out", required=True)
    s.add_argument("--channels", type=int, choices=(1, 3), default=1)
    s = sub.add_parser("check")
    s.add_argument("emb"); s.add_argument("--pca", type=int, default=256); s.add_argument("--k", type=int, default=10)
    s.add_argument("--out", required=True)
    s = sub.add_parser("table")
    s.add_argument("--out-md", required=True); s.add_argument("--out-json", required=True)
    s.add_argument("--heading", default="Retrieval ablation (issue 9), reduced-size")
    s.add_argument("meta", nargs="+", help="meta.json of each runs folder, one report section each")
    a = p.parse_args()
    {"pixels": cmd_pixels, "check": cmd_check, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
