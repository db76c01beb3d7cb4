"""Embed a collection on Apache Spark: one task per shard runs `dim-embed --shard I/N` on an
executor, then the driver merges the shards with `dim-embed merge`.

Every executor must see the inputs, the model, the dim-embed binary and the work directory
at the same paths (a shared file system), as on a cluster with NFS or a mounted bucket.

    spark-submit --master spark://HOST:7077 bench/scale/spark_embed.py \
        --inputs /shared/photos --out /shared/emb --work /shared/emb-shards --shards 64 \
        --dim-embed /shared/bin/dim-embed --model /shared/model.onnx

Locally (`--master local[4]`) it runs real executor processes on this machine. Prints one JSON
line per shard and a final summary line.
"""

import argparse
import json
import os
import subprocess
import time

from pyspark.sql import SparkSession


def embed_shard(index, shards, args):
    """Runs dim-embed on shard `index`; returns what it reported."""
    out = os.path.join(args.work, f"shard-{index:04d}-of-{shards:04d}")
    command = [args.dim_embed, *args.inputs, "--shard", f"{index}/{shards}", "--out", out,
               "--threads", str(args.threads)]
    if args.model:
        command += ["--model", args.model]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    return {
        "shard": index,
        "out": out,
        "returncode": done.returncode,
        "seconds": round(time.time() - started, 3),
        "host": os.uname().nodename,
        "pid": os.getpid(),
        "stdout": done.stdout.strip(),
        "stderr": done.stderr.strip()[-2000:],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--out", required=True, help="the merged embeddings directory")
    parser.add_argument("--work", required=True, help="where the shard directories go")
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--dim-embed", default="dim-embed")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per task")
    parser.add_argument("--master", default=None, help="e.g. local[3]; spark-submit's --master otherwise")
    args = parser.parse_args()
    args.inputs = [os.path.abspath(path) for path in args.inputs]
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)

    builder = SparkSession.builder.appName("dim-embed")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    started = time.time()
    shards = args.shards
    reports = (
        spark.sparkContext.parallelize(range(shards), numSlices=shards)
        .map(lambda index: embed_shard(index, shards, args))
        .collect()
    )
    spark.stop()
    for report in sorted(reports, key=lambda r: r["shard"]):
        print(json.dumps(report))
    failed = [r for r in reports if r["returncode"] != 0]
    if failed:
        raise SystemExit(f"{len(failed)} shard(s) failed; first: {failed[0]['stderr']}")
    merge = subprocess.run([args.dim_embed, "merge", args.out, *sorted(r["out"] for r in reports)],
                           capture_output=True, text=True)
    if merge.returncode != 0:
        raise SystemExit(f"merge failed: {merge.stderr}")
    print(json.dumps({
        "merged": args.out,
        "shards": shards,
        "executor_pids": sorted({r["pid"] for r in reports}),
        "seconds": round(time.time() - started, 3),
        "merge": merge.stdout.strip(),
    }))


if __name__ == "__main__":
    main()
