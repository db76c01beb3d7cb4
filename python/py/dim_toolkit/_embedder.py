"""Embedder: image files, numpy arrays or PIL images in, float32 vectors out; embed_folder."""

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _native
from ._errors import DimensionError, ImageError


def default_model_path():
    """The shipped default model carried by the package."""
    return Path(__file__).resolve().parent / "model" / "model.onnx"


@dataclass(frozen=True)
class Skipped:
    """An input that could not be embedded: its position in the call, the input, and why."""

    position: int
    input: object
    reason: str


@dataclass
class EmbedReport:
    """What the last ``embed`` call did. ``positions[i]`` is the input position of row ``i``."""

    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: list = field(default_factory=list)


class Embedder:
    """An exported DIM model, loaded once.

    model: an ``.onnx`` file exported by dim-export (default: the shipped model).
    provider: "cpu" or "cuda" (the CUDA execution provider needs onnxruntime-gpu and a wheel
        built with the ``cuda`` feature; without them the embedder falls back to the CPU and says
        why in ``provider_fallback``, unless ``strict_provider``).
    batch_size: images per model run; threads: ONNX Runtime intra-op threads (0: its choice).
    feature: the default output, "embedding" (the L2-normalised search vector), "conv", "fc",
        "y" or "duplicate", as dim-embed's ``--feature``.
    """

    def __init__(self, model=None, provider="cpu", batch_size=64, threads=0, feature="embedding",
                 strict_provider=False):
        self._settings = dict(
            model=os.fspath(model if model is not None else default_model_path()),
            provider=provider,
            threads=int(threads),
            batch_size=int(batch_size),
            strict_provider=bool(strict_provider),
        )
        self._natives = {}
        self._feature = feature
        self._native = self._for(feature)
        self.last_report = EmbedReport()

    def _for(self, feature):
        """The loaded model for `feature` (each output is its own pruned session)."""
        if feature not in self._natives:
            s = self._settings
            self._natives[feature] = _native.NativeEmbedder(
                s["model"], feature, s["provider"], s["threads"], s["batch_size"], s["strict_provider"]
            )
        return self._natives[feature]

    @property
    def dim(self):
        """Width of the default feature's vectors."""
        return self._native.dim

    @property
    def feature(self):
        return self._native.feature

    @property
    def model_path(self):
        return Path(self._native.model_path)

    @property
    def provider(self):
        """The execution provider in use."""
        return self._native.provider[0]

    @property
    def provider_fallback(self):
        """Why the requested provider is not in use, or None."""
        return self._native.provider[1]

    @property
    def metadata(self):
        """The model's metadata: preset, input size and preprocessing, outputs, the training
        recipe, the recommended search post-processing and the checkpoint's digest."""
        return json.loads(self._native.metadata_json)

    def embed(self, inputs, feature=None, *, on_error="skip"):
        """Embeds images and returns float32 vectors, one row per embedded input.

        inputs: a path (str or os.PathLike), a list of paths, uint8 arrays of shape (H, W) or
            (H, W, C) with C in 1..4, PIL images, or one uint8 array holding a batch of shape
            (N, H, W) or (N, H, W, C). Arrays get the preprocessing image files get.
        on_error: "skip" leaves unreadable files out (``last_report`` lists them, with a
            warning) or "raise" raises ImageError for the first one.
        """
        if on_error not in ("skip", "raise"):
            raise ValueError(f'on_error must be "skip" or "raise", got {on_error!r}')
        native = self._for(feature) if feature is not None else self._native
        items = _as_items(inputs)
        files = [(i, os.fspath(x)) for i, x in enumerate(items) if isinstance(x, (str, os.PathLike))]
        arrays = [(i, _as_array(x, i)) for i, x in enumerate(items) if not isinstance(x, (str, os.PathLike))]
        rows = {}
        skipped = []
        if files:
            vectors, embedded, failed = native.embed_files([p for _, p in files])
            for row, k in enumerate(embedded):
                rows[files[k][0]] = vectors[row]
            for k, reason in failed:
                position, path = files[k]
                if on_error == "raise":
                    raise ImageError(f"{path}: {reason}")
                skipped.append(Skipped(position, path, reason))
        if arrays:
            vectors = native.embed_arrays([a for _, a in arrays])
            for row, (position, _) in enumerate(arrays):
                rows[position] = vectors[row]
        positions = np.array(sorted(rows), dtype=np.int64)
        out = np.stack([rows[p] for p in positions]) if len(positions) else np.zeros((0, native.dim), np.float32)
        self.last_report = EmbedReport(positions=positions, skipped=skipped)
        if skipped:
            warnings.warn(
                f"{len(skipped)} of {len(items)} images could not be embedded (see Embedder.last_report); "
                f"first: {skipped[0].input}: {skipped[0].reason}",
                stacklevel=2,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def _as_items(inputs):
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        if inputs.ndim not in (3, 4):
            raise DimensionError(
                f"a single array is a batch of shape (N, H, W) or (N, H, W, C), got shape {inputs.shape}; "
                "pass one image as a list: [image]"
            )
        return list(inputs)
    return list(inputs)


def _as_array(item, position):
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(item, pil.Image):
        if item.mode not in ("L", "LA", "RGB", "RGBA"):
            item = item.convert("RGBA" if "transparency" in item.info or item.mode in ("PA", "RGBa") else "RGB")
        item = np.asarray(item)
    if not isinstance(item, np.ndarray):
        raise TypeError(
            f"input {position} is a {type(item).__name__}: expected a path, a uint8 numpy array or a PIL image"
        )
    if item.dtype != np.uint8:
        raise TypeError(
            f"image {position} is {item.dtype}: images are uint8 (0..255); convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    return item


def embed_folder(inputs, out, *, model=None, feature="embedding", provider="cpu", batch_size=64, threads=0,
                 lists=(), force=False, progress=None, embedder=None):
    """Embeds image files, folders (recursively) and list files into the embeddings directory
    ``out``, as ``dim-embed INPUTS --out OUT`` does: embeddings.npy, manifest.json and
    skipped.json, written atomically; a rerun embeds only new or changed files. Returns the
    run's summary (embedded, reused, dropped, rows, seconds, stage_seconds: where those seconds
    went (model, waiting_for_decoding, writing), skipped)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if embedder is None:
        embedder = Embedder(model, provider=provider, batch_size=batch_size, threads=threads, feature=feature)
    native = embedder._for(feature)
    if progress is None:
        progress = sys.stderr.isatty()
    summary = _native.embed_folder(
        [os.fspath(p) for p in inputs], [os.fspath(p) for p in lists], os.fspath(out), native, bool(force),
        bool(progress),
    )
    return json.loads(summary)
