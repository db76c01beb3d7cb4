"""The wheel on its own: run in a fresh environment holding only the wheel and its dependencies
(numpy, onnxruntime), before pytest or Pillow are installed. Exits non-zero on any failure."""

import importlib.util

import numpy as np

import dim_toolkit as dt

assert importlib.util.find_spec("PIL") is None, "Pillow is installed: this is not a bare environment"
embedder = dt.Embedder(threads=1)
assert embedder.model_path.is_file() and embedder.model_path.name == "model.onnx"
images = np.random.default_rng(0).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
vectors = embedder.embed(images)
assert vectors.shape == (8, embedder.dim) and vectors.dtype == np.float32
assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
index = dt.Index.build(vectors, embedder=embedder)
ids, scores = index.search(vectors, k=3)
assert (ids[:, 0] == np.arange(8)).all() and np.allclose(scores[:, 0], 1, atol=1e-4)
library = dt._native.onnx_runtime_library()
assert "onnxruntime/capi/libonnxruntime.so" in str(library), f"ONNX Runtime not from the onnxruntime wheel: {library}"
print(f"dim_toolkit {dt.__version__}: {embedder.metadata['preset']} model, {vectors.shape[1]}-d vectors, "
      f"ONNX Runtime {library}; index of {len(index)} rows answers itself first")
