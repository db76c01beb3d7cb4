"""An index built in Python answers like dim-search, and the two read each other's directories."""

import json

import numpy as np
import pytest

import dim_toolkit
from conftest import run, tool


def cli_query(index_dir, images, k):
    out = run([tool("dim-search"), "query", "--index", index_dir, "--image", *images, "-k", str(k), "--json"])
    return [[(hit["row"], hit["score"]) for hit in query["results"]] for query in json.loads(out)]


def test_python_index_answers_like_dim_search(embedder, good_files, tmp_path):
    vectors = embedder.embed(good_files)
    index = dim_toolkit.Index.build(vectors, names=good_files, embedder=embedder)
    assert len(index) == len(good_files) and index.dim == embedder.dim
    index.save(tmp_path / "index")
    queries = good_files[::7]
    ids, scores = index.search(embedder.embed(queries), k=5)
    expected = cli_query(tmp_path / "index", queries, 5)
    for q in range(len(queries)):
        assert ids[q].tolist() == [row for row, _ in expected[q]]
        np.testing.assert_allclose(scores[q], [s for _, s in expected[q]], rtol=0, atol=1e-5)
    assert index.names == [str(p) for p in good_files]


def test_dim_search_index_loads_in_python_and_build_index_matches_it(embedder, image_folder, tmp_path):
    run([tool("dim-embed"), image_folder, "--out", tmp_path / "emb", "--threads", "1"])
    run([tool("dim-search"), "build", "--embeddings", tmp_path / "emb", "--out", tmp_path / "cli-index"])
    from_cli = dim_toolkit.Index.load(tmp_path / "cli-index")
    from_py = dim_toolkit.build_index(tmp_path / "emb", tmp_path / "py-index")
    assert from_py.info["model"] == from_cli.info["model"] and from_py.names == from_cli.names
    assert from_py.info["params"] == from_cli.info["params"]
    queries = np.load(tmp_path / "emb" / "embeddings.npy")[:4]
    for a, b in zip(from_cli.search(queries, k=4), from_py.search(queries, k=4)):
        np.testing.assert_array_equal(a, b)


def test_search_agrees_with_numpy_exact_search():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(20, 24)).astype(np.float32)
    index = dim_toolkit.Index.build(vectors)
    ids, scores = index.search(queries, k=5, exact=True)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    expected = np.argsort(-cosine, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(cosine, expected, axis=1), atol=1e-5)
    graph_ids, _ = index.search(queries, k=5, ef=200)
    recall = np.mean([len(set(g) & set(e)) / 5 for g, e in zip(graph_ids, expected)])
    assert recall >= 0.95
    one_ids, one_scores = index.search(queries[0], k=5, exact=True)
    assert one_ids.shape == (5,) and one_ids.tolist() == expected[0].tolist()


def test_fewer_rows_than_k_pad_with_minus_one_and_nan():
    index = dim_toolkit.Index.build(np.eye(3, dtype=np.float32), metric="l2")
    ids, scores = index.search(np.eye(3, dtype=np.float32)[:1], k=5)
    assert ids[0, :3].tolist()[0] == 0 and ids[0, 3:].tolist() == [-1, -1]
    assert np.isnan(scores[0, 3:]).all() and scores[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_pca_whitening_is_recorded_and_the_saved_index_reloads(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(200, 32)).astype(np.float32)
    index = dim_toolkit.Index.build(vectors, pca=8, whiten=True)
    assert index.info["post_process"]["dims"] == 8 and index.info["post_process"]["whiten"]
    index.save(tmp_path / "saved")
    index.save(tmp_path / "saved")  # replacing an index is allowed
    reloaded = dim_toolkit.Index.load(tmp_path / "saved")
    for a, b in zip(index.search(vectors[:5], k=3), reloaded.search(vectors[:5], k=3)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reloaded.vectors, vectors)
