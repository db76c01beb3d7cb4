"""Builds the near-duplicate benchmark set from Debian wallpaper photos.

usage: make_set.py OUT WALLPAPERS

Every source photo (JPEG, at least 1280x960) is cut into a 4x3 grid of 400x300 crops, the
"originals": neighbouring crops of one photo are distinct images that look alike (sky, sea,
foliage), the hard negatives. Every third original also gets seven near-copies: resized to half,
re-encoded as JPEG at qualities 30, 60 and 90, cropped by 4% on every side, brightened by 20%,
and mirrored left-right. OUT/truth.json maps each file to its group (a near-copy shares its
original's group; other originals are alone) and to its split: sources alternate between the
"calibration" split, on which the default threshold is chosen, and the "test" split, on which it
is reported.

Some wallpapers hold large uniform areas, whose crops are the same picture: flat blue or white
fields that differ by less than JPEG noise. Counting such crops as distinct would make every
method's find of them a false pair. So two originals of one split whose 40x30 thumbnails are
closer (mean absolute difference over RGB, in grey levels) than the median q30 copy is to its
original share a group: they differ less than a copy the truth already calls a duplicate. Each
file's own crop is kept as "crop", so the as-cut labels can be scored too.

Deterministic; skipped when OUT/.complete holds this script's SET_VERSION."""

import itertools
import json
import os
import statistics
import sys

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

GRID = (4, 3)
CROP = (400, 300)
THUMBNAIL = (40, 30)
# 2: visually identical originals share a group (see the module docstring).
SET_VERSION = "2"


def sources(wallpapers):
    found = []
    for root, _, files in os.walk(wallpapers):
        for name in sorted(files):
            if name.lower().endswith((".jpg", ".jpeg")):
                path = os.path.join(root, name)
                with Image.open(path) as image:
                    if image.width >= 1280 and image.height >= 960:
                        found.append(path)
    return sorted(found)


def variants(image):
    w, h = image.size
    trim_x, trim_y = int(w * 0.04), int(h * 0.04)
    yield "half", image.resize((w // 2, h // 2), Image.BILINEAR), {}
    for quality in (30, 60, 90):
        yield f"q{quality}", image, {"quality": quality}
    yield "cropped", image.crop((trim_x, trim_y, w - trim_x, h - trim_y)), {}
    yield "brighter", ImageEnhance.Brightness(image).enhance(1.2), {}
    yield "mirrored", ImageOps.mirror(image), {}


def thumbnail(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(THUMBNAIL, Image.BOX), dtype=np.float64)


def merge_identical_originals(truth, images_dir):
    """Gives originals that differ less than the median q30 copy from its original one group;
    returns that limit and the number of groups merged away."""
    thumbnails = {name: thumbnail(os.path.join(images_dir, name)) for name in truth}
    difference = lambda a, b: float(np.abs(thumbnails[a] - thumbnails[b]).mean())  # noqa: E731
    limit = statistics.median(
        difference(name, name.replace("_q30", "_original")) for name, t in truth.items() if t["kind"] == "q30"
    )
    parent = {t["group"]: t["group"] for t in truth.values()}

    def root(group):
        while parent[group] != group:
            group = parent[group]
        return group

    originals = sorted(name for name, t in truth.items() if t["kind"] == "original")
    merged = 0
    for a, b in itertools.combinations(originals, 2):
        if truth[a]["split"] == truth[b]["split"] and difference(a, b) < limit:
            ra, rb = root(truth[a]["group"]), root(truth[b]["group"])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
                merged += 1
    for t in truth.values():
        t["group"] = root(t["crop"])
    return limit, merged


def main():
    out, wallpapers = sys.argv[1], sys.argv[2]
    complete = os.path.join(out, ".complete")
    if os.path.exists(complete) and open(complete).read() == SET_VERSION:
        return
    images_dir = os.path.join(out, "images")
    os.makedirs(images_dir, exist_ok=True)
    paths = sources(wallpapers)
    if not paths:
        sys.exit(f"no JPEG photos of at least 1280x960 under {wallpapers}")
    truth = {}
    original_number = 0
    for source_number, path in enumerate(paths):
        split = "calibration" if source_number % 2 == 0 else "test"
        photo = Image.open(path).convert("RGB")
        cell_w, cell_h = photo.width // GRID[0], photo.height // GRID[1]
        for gy in range(GRID[1]):
            for gx in range(GRID[0]):
                x = gx * cell_w + (cell_w - CROP[0]) // 2
                y = gy * cell_h + (cell_h - CROP[1]) // 2
                crop = photo.crop((x, y, x + CROP[0], y + CROP[1]))
                group = f"g{original_number:04d}"
                name = f"{group}_original.jpg"
                crop.save(os.path.join(images_dir, name), quality=95)
                truth[name] = {"group": group, "crop": group, "split": split, "kind": "original"}
                if original_number % 3 == 0:
                    for kind, image, options in variants(crop):
                        variant = f"{group}_{kind}.jpg"
                        image.save(os.path.join(images_dir, variant), quality=options.get("quality", 95))
                        truth[variant] = {"group": group, "crop": group, "split": split, "kind": kind}
                original_number += 1
    limit, merged = merge_identical_originals(truth, images_dir)
    with open(os.path.join(out, "truth.json"), "w") as f:
        json.dump(truth, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "merged.json"), "w") as f:
        json.dump({"limit_grey_levels": limit, "groups_merged": merged}, f)
    with open(complete, "w") as f:
        f.write(SET_VERSION)
    print(
        f"{len(truth)} images: {original_number} originals from {len(paths)} photos; "
        f"{merged} groups merged (originals closer than {limit:.2f} grey levels)",
        file=sys.stderr,
    )


main()
