"""Index: an HNSW index over vectors, in dim-search's directory format; build_index."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import _native
from ._errors import DimensionError


class Index:
    """A searchable index. ``Index.build`` makes one from vectors, ``Index.load`` opens a
    directory written by ``save``, ``build_index`` or ``dim-search build``; ``save`` writes the
    same directory format, so ``dim-search query`` reads it."""

    def __init__(self, native, directory, keep_alive=None):
        self._native = native
        self._directory = Path(directory)
        self._keep_alive = keep_alive  # the temporary directory of an unsaved index

    @classmethod
    def build(cls, vectors, names=None, *, embedder=None, metric="cosine", pca=None, whiten=False,
              m=16, ef_construction=200):
        """Builds an index over ``vectors`` (N, D).

        names: what each row is (file paths, ids); default "0", "1", ...
        embedder: the Embedder that made the vectors: its model identity is recorded (so
            dim-search can embed query images for it) and its recommended post-processing
            applies when ``pca`` is None. Without it the vectors are recorded as external.
        pca: components kept by a PCA fitted on the vectors (0: none; None: the model's
            recommendation, if any); whiten: divide each component by its standard deviation.
        metric: "cosine" or "l2"; m and ef_construction: the HNSW graph's links and build breadth.
        """
        vectors = _matrix(vectors, "vectors")
        if names is None:
            names = [str(i) for i in range(len(vectors))]
        names = [os.fspath(n) for n in names]
        native_embedder = embedder._native if embedder is not None else None
        keep_alive = tempfile.TemporaryDirectory(prefix="dim-index-")
        directory = Path(keep_alive.name, "index")
        _native.build_index_from_vectors(
            vectors, names, native_embedder, os.fspath(directory), metric, pca, bool(whiten), int(m),
            int(ef_construction),
        )
        return cls(_native.NativeIndex.open(os.fspath(directory)), directory, keep_alive)

    @classmethod
    def load(cls, directory):
        """Opens an index directory."""
        return cls(_native.NativeIndex.open(os.fspath(directory)), directory)

    def save(self, directory):
        """Writes the index to ``directory`` (replacing an index there atomically)."""
        _native.copy_index(os.fspath(self._directory), os.fspath(directory))

    def search(self, queries, k=10, ef=64, *, exact=False):
        """The ``k`` nearest rows of each query, best first: (ids, scores), int64 and float32 of
        shape (Q, k), or (k,) for one 1-D query. Scores are cosine similarities (higher is
        closer) or L2 distances (lower is closer); where fewer than ``k`` rows are indexed the
        id is -1 and the score NaN. ``exact`` searches by brute force instead of the graph."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        single = np.ndim(queries) == 1
        queries = _matrix(np.atleast_2d(queries) if single else queries, "queries")
        ids, scores = self._native.search(queries, int(k), int(ef), bool(exact))
        return (ids[0], scores[0]) if single else (ids, scores)

    @property
    def names(self):
        """Each row's file path (or name), in row order."""
        return [os.fspath(p) for p in self._native.paths]

    @property
    def vectors(self):
        """Every row's vector as embedded (before the index's post-processing)."""
        return self._native.vectors

    @property
    def info(self):
        """``index.json``: the model identity, parameters, post-processing and row counts."""
        return json.loads(self._native.info_json)

    @property
    def dim(self):
        return self.info["model"]["dim"]

    def __len__(self):
        return self.info["count"]

    def __repr__(self):
        info = self.info
        return f"Index({info['count']} rows of {info['model']['dim']}, {info['params']['metric']})"


def _matrix(values, what):
    values = np.asarray(values)
    if values.ndim != 2:
        raise DimensionError(f"{what} must be a 2-D array (rows, dims), got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{what} must be numeric, got {values.dtype}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DimensionError(f"{what} row {int(np.argmax(bad))} has a NaN or infinite value")
    return values


def build_index(embeddings, out, *, metric="cosine", pca=None, whiten=False, m=16, ef_construction=200,
                hold_out=0):
    """Builds an index from an embeddings directory (dim-embed's or ``embed_folder``'s) into
    ``out``, as ``dim-search build --embeddings EMBEDDINGS --out OUT`` does (``pca`` None: the
    model's recommended post-processing when the collection is large enough). Returns the
    opened Index."""
    _native.build_index(
        os.fspath(embeddings), os.fspath(out), metric, pca, bool(whiten), int(m), int(ef_construction),
        int(hold_out),
    )
    return Index.load(out)
