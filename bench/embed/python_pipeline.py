"""The Python baseline for the embedding benchmark: PIL decoding, the same fit-and-scale
preprocessing as dim-models (grey or RGB, shrink to fit keeping the aspect ratio with a triangle
filter, centre on a black square, scale to [0, 1]), numpy batching, onnxruntime inference.

usage: python_pipeline.py MODEL DIR BATCH THREADS OUT.npy [--draft]
With --draft, JPEGs are decoded at a reduced DCT scale (PIL's `Image.draft`, the smallest of 1/2,
1/4, 1/8 that still covers the input size), as an informed Python user would write it.
Prints one JSON line: images, seconds, images_per_second.
"""

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def fit(image, channels, size, draft):
    mode = "L" if channels == 1 else "RGB"
    if draft:
        image.draft(mode, (size, size))
    image = image.convert(mode)
    if image.width > size or image.height > size:
        scale = min(size / image.width, size / image.height)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new, Image.BILINEAR)
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def main():
    model, folder, batch, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    draft = sys.argv[6:] == ["--draft"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    channels, size = int(meta["dim.input_channels"]), int(meta["dim.input_size"])
    files = sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if not name.startswith(".")
    )
    started = time.perf_counter()
    rows = []
    for start in range(0, len(files), batch):
        inputs = np.stack([fit(Image.open(path), channels, size, draft) for path in files[start : start + batch]])
        rows.append(session.run(["embedding"], {"image": inputs})[0])
    seconds = time.perf_counter() - started
    np.save(out, np.concatenate(rows))
    print(json.dumps({"images": len(files), "seconds": seconds, "images_per_second": len(files) / seconds}))


if __name__ == "__main__":
    main()
