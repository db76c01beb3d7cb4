"""dim-toolkit from Python: Deep InfoMax image embeddings and similarity search, numpy in and out.

    import dim_toolkit as dt
    embedder = dt.Embedder()                      # the shipped default model
    vectors = embedder.embed(["a.png", "b.png"])  # float32 (N, D)
    index = dt.Index.build(vectors, names=["a.png", "b.png"], embedder=embedder)
    ids, scores = index.search(vectors[:1], k=2)

ONNX Runtime is the installed ``onnxruntime`` (or ``onnxruntime-gpu``) wheel's library, found at
import time; set ``ORT_DYLIB_PATH`` to use another ``libonnxruntime.so``.
"""

import importlib.util
import os
from pathlib import Path


def _onnx_runtime_library():
    """The libonnxruntime.so of the installed onnxruntime package (ORT_DYLIB_PATH wins)."""
    chosen = os.environ.get("ORT_DYLIB_PATH")
    if chosen:
        return chosen
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dim_toolkit needs ONNX Runtime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location, "capi").glob("libonnxruntime.so*"))
        if found:
            return str(found[0])
    raise ImportError(
        "the installed onnxruntime package has no capi/libonnxruntime.so; reinstall it, or set "
        "ORT_DYLIB_PATH to a libonnxruntime.so"
    )


os.environ["ORT_DYLIB_PATH"] = _onnx_runtime_library()

from . import _native  # noqa: E402  (needs ORT_DYLIB_PATH set first)
from ._embedder import EmbedReport, Embedder, Skipped, default_model_path, embed_folder  # noqa: E402
from ._errors import DimensionError, DimToolkitError, ImageError, ModelError, TrainingError  # noqa: E402
from ._index import Index, build_index  # noqa: E402
from ._training import train  # noqa: E402

__version__ = _native.__version__

__all__ = [
    "DimToolkitError",
    "DimensionError",
    "EmbedReport",
    "Embedder",
    "ImageError",
    "Index",
    "ModelError",
    "Skipped",
    "TrainingError",
    "build_index",
    "default_model_path",
    "embed_folder",
    "train",
]
