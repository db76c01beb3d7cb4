"""Writes the embedding benchmark's collections into a cache directory (outside git).

usage: prepare_data.py CACHE_DIR WALLPAPER_DIR
  CACHE_DIR/fashion-mnist-t10k/NNNNN.png   the 10,000 Fashion-MNIST test images as 28x28 PNGs
  CACHE_DIR/photos/NNNNN.jpg               5,000 camera-sized JPEGs (640x480 to 1600x1200): random
                                           crops of the real photos in WALLPAPER_DIR, rescaled and
                                           re-encoded at quality 85-95
WALLPAPER_DIR "-" writes the Fashion-MNIST collection only (what the index benchmark needs).
Each collection is written once; a complete one (marked by a .complete file) is reused.
"""

import gzip
import os
import random
import sys

import numpy as np
from PIL import Image

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
PHOTO_COUNT = 5000
PHOTO_SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200)]


def fashion_mnist(out):
    if os.path.exists(os.path.join(out, ".complete")):
        return
    os.makedirs(out, exist_ok=True)
    with gzip.open(FASHION_MNIST) as f:
        raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, 28, 28)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels, "L").save(os.path.join(out, f"{i:05d}.png"))
    open(os.path.join(out, ".complete"), "w").close()


def photos(out, wallpapers):
    if os.path.exists(os.path.join(out, ".complete")):
        return
    os.makedirs(out, exist_ok=True)
    sources = []
    for root, _, files in os.walk(wallpapers):
        for name in sorted(files):
            if name.lower().endswith((".jpg", ".jpeg")):
                image = Image.open(os.path.join(root, name)).convert("RGB")
                if image.width >= 1280 and image.height >= 960:
                    sources.append(image)
    if not sources:
        sys.exit(f"no JPEG photos of at least 1280x960 under {wallpapers}")
    rng = random.Random(0)
    for i in range(PHOTO_COUNT):
        source = sources[i % len(sources)]
        width, height = PHOTO_SIZES[rng.randrange(len(PHOTO_SIZES))]
        # A random crop of 0.6-1.0 of the source, rescaled to the camera size, so no two files match.
        scale = rng.uniform(0.6, 1.0)
        crop_w = min(source.width, int(source.height * scale * width / height))
        crop_h = int(crop_w * height / width)
        x = rng.randrange(source.width - crop_w + 1)
        y = rng.randrange(source.height - crop_h + 1)
        photo = source.crop((x, y, x + crop_w, y + crop_h)).resize((width, height), Image.BILINEAR)
        photo.save(os.path.join(out, f"{i:05d}.jpg"), quality=rng.randrange(85, 96))
    open(os.path.join(out, ".complete"), "w").close()
    print(f"{PHOTO_COUNT} photos from {len(sources)} source photos")


def main():
    cache, wallpapers = sys.argv[1], sys.argv[2]
    fashion_mnist(os.path.join(cache, "fashion-mnist-t10k"))
    if wallpapers != "-":
        photos(os.path.join(cache, "photos"), wallpapers)


if __name__ == "__main__":
    main()
