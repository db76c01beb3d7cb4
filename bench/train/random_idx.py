"""Writes an IDX image file of random grey images, the training benchmarks' synthetic data.

usage: random_idx.py PATH COUNT SIDE SEED   (COUNT images of SIDE x SIDE pixels, numpy seed SEED)
"""

import sys

import numpy as np

path, count, side, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pixels = np.random.default_rng(seed).integers(0, 256, size=(count, side, side), dtype=np.uint8)
with open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 3]) + np.array([count, side, side], dtype=">u4").tobytes() + pixels.tobytes())
