"""Scores near-duplicate pairs found by dim-search against the set's truth and against
perceptual hashes (imagehash's pHash and dHash, 64 bits), computed here in the same run.

usage: evaluate.py SET_DIR DUPLICATES_JSON DIM_SECONDS OUT_JSON METHOD_LABEL

A pair is predicted when its score passes a threshold (cosine >= t for dim-search, Hamming
distance <= d for the hashes) and is a true pair when both files share a group. For every
method the threshold is chosen on the calibration split as the loosest one with pair precision of
at least 0.95 there, and precision and recall are reported on the test split at that threshold;
the hashes are also reported at their customary fixed distances. Every method is also scored,
with the same protocol, on the as-cut labels (`crop`: visually identical crops counted distinct,
see make_set.py), under "as_cut"."""

import itertools
import json
import os
import sys
import time

import imagehash
import numpy as np
from PIL import Image

TARGET_PRECISION = 0.95
CUSTOMARY = {"phash": 8, "dhash": 10}


def split_pairs(truth, split, label):
    names = sorted(n for n, t in truth.items() if t["split"] == split)
    true = {(a, b) for a, b in itertools.combinations(names, 2) if truth[a][label] == truth[b][label]}
    return names, true


def precision_recall(predicted, true):
    hits = len(predicted & true)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(true) if true else 1.0
    return precision, recall


def calibrate(scored, true, closer):
    """The loosest threshold with precision >= TARGET on `scored` ({pair: score}), or None when
    even the strictest misses it; `closer(a, b)` says whether score a is at least as close as b."""
    best = None
    ordered = sorted(set(scored.values()), key=lambda s: s, reverse=closer(1, 0))
    predicted = set()
    by_score = {}
    for pair, score in scored.items():
        by_score.setdefault(score, []).append(pair)
    for score in ordered:
        predicted.update(by_score[score])
        precision, _ = precision_recall(predicted, true)
        if precision >= TARGET_PRECISION:
            best = score
    return best


def evaluate(name, scored_by_split, truth_by_split, closer, fixed=None):
    calibration_scores, calibration_true = scored_by_split["calibration"], truth_by_split["calibration"]
    threshold = calibrate(calibration_scores, calibration_true, closer)
    result = {"method": name, "threshold": threshold}
    for split in ("calibration", "test"):
        scored, true = scored_by_split[split], truth_by_split[split]
        predicted = {p for p, s in scored.items() if threshold is not None and closer(s, threshold)}
        precision, recall = precision_recall(predicted, true)
        result[split] = {"precision": precision, "recall": recall, "predicted": len(predicted), "true": len(true)}
        if fixed is not None:
            predicted = {p for p, s in scored.items() if closer(s, fixed)}
            precision, recall = precision_recall(predicted, true)
            result[f"{split}_at_{fixed}"] = {"precision": precision, "recall": recall, "predicted": len(predicted)}
    result["customary_threshold"] = fixed
    return result


def per_kind_recall(scored, true, truth, threshold, closer):
    found = {}
    for a, b in true:
        kinds = {truth[a]["kind"], truth[b]["kind"]}
        if "original" not in kinds or len(kinds) == 1 or truth[a]["crop"] != truth[b]["crop"]:
            continue
        kind = (kinds - {"original"}).pop()
        hit = threshold is not None and (a, b) in scored and closer(scored[(a, b)], threshold)
        total, hits = found.get(kind, (0, 0))
        found[kind] = (total + 1, hits + int(hit))
    return {kind: hits / total for kind, (total, hits) in sorted(found.items())}


def main():
    set_dir, duplicates_json, dim_seconds, out_json, label = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
    truth = json.load(open(os.path.join(set_dir, "truth.json")))
    splits = {split: split_pairs(truth, split, "group") for split in ("calibration", "test")}
    truth_by_split = {split: true for split, (_, true) in splits.items()}
    as_cut_by_split = {split: split_pairs(truth, split, "crop")[1] for split in splits}

    report = json.load(open(duplicates_json))
    names_by_row = {}
    dim_scores = {}
    for group in report["groups"]:
        for member in group["members"]:
            names_by_row[member["row"]] = os.path.basename(member["path"])
        for pair in group["pairs"]:
            a, b = sorted((names_by_row[pair["a"]], names_by_row[pair["b"]]))
            dim_scores[(a, b)] = pair["score"]
    dim_by_split = {
        split: {p: s for p, s in dim_scores.items() if truth[p[0]]["split"] == split and truth[p[1]]["split"] == split}
        for split in splits
    }
    higher = lambda score, threshold: score >= threshold  # noqa: E731
    lower = lambda distance, threshold: distance <= threshold  # noqa: E731
    results = [evaluate(label, dim_by_split, truth_by_split, higher)]
    results[0]["as_cut"] = evaluate(label, dim_by_split, as_cut_by_split, higher)
    dim_threshold = results[0]["threshold"]
    results[0]["test_recall_by_kind"] = per_kind_recall(
        dim_by_split["test"], truth_by_split["test"], truth, dim_threshold, higher
    )

    hash_seconds = {}
    methods = () if os.environ.get("DIM_SKIP_HASHES") else (("phash", imagehash.phash), ("dhash", imagehash.dhash))
    for method, function in methods:
        started = time.perf_counter()
        hashes = {}
        for name in truth:
            with Image.open(os.path.join(set_dir, "images", name)) as image:
                hashes[name] = function(image).hash.flatten()
        by_split = {}
        for split, (names, _) in splits.items():
            bits = np.array([hashes[n] for n in names], dtype=np.uint8)
            distances = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
            by_split[split] = {
                (names[i], names[j]): int(distances[i, j])
                for i in range(len(names))
                for j in range(i + 1, len(names))
            }
        hash_seconds[method] = time.perf_counter() - started
        result = evaluate(f"imagehash {method}", by_split, truth_by_split, lower, CUSTOMARY[method])
        result["test_recall_by_kind"] = per_kind_recall(
            by_split["test"], truth_by_split["test"], truth, result["threshold"], lower
        )
        result["as_cut"] = evaluate(f"imagehash {method}", by_split, as_cut_by_split, lower)
        results.append(result)
    summary = {
        "images": len(truth),
        "true_pairs": {split: len(true) for split, true in truth_by_split.items()},
        "as_cut_true_pairs": {split: len(true) for split, true in as_cut_by_split.items()},
        "merged": json.load(open(os.path.join(set_dir, "merged.json"))),
        "target_precision": TARGET_PRECISION,
        "seconds": {"dim (embed + index + duplicates)": dim_seconds, **hash_seconds},
        "results": results,
    }
    with open(out_json, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


main()
