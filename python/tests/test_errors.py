"""Bad inputs raise the documented exceptions, with the command-line tools' messages."""

import numpy as np
import pytest

import dim_toolkit
from dim_toolkit import DimensionError, DimToolkitError, ImageError, ModelError


def test_a_broken_image_raises_image_error_on_request(embedder, image_folder):
    broken = image_folder / "class1" / "broken.png"
    with pytest.raises(ImageError, match="broken.png"):
        embedder.embed([broken], on_error="raise")


def test_missing_and_non_model_files_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load the model"):
        dim_toolkit.Embedder(tmp_path / "missing.onnx")
    not_a_model = tmp_path / "text.onnx"
    not_a_model.write_text("hello")
    with pytest.raises(ModelError):
        dim_toolkit.Embedder(not_a_model)
    assert issubclass(ModelError, DimToolkitError)


def test_unknown_names_raise_value_error():
    with pytest.raises(ValueError, match="unknown feature `colour`"):
        dim_toolkit.Embedder(feature="colour")
    with pytest.raises(ValueError, match="cosine"):
        dim_toolkit.Index.build(np.ones((4, 3), np.float32), metric="manhattan")


def test_mismatched_dimensions_raise_dimension_error(embedder):
    index = dim_toolkit.Index.build(np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32))
    with pytest.raises(DimensionError, match="vector has 7 values, the index holds 8-d vectors"):
        index.search(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError):  # DimensionError is also a ValueError
        index.search(np.ones((2, 7), np.float32))
    with pytest.raises(DimensionError, match="the vectors have 8 values, the embedder's `embedding` has 4096"):
        dim_toolkit.Index.build(np.ones((3, 8), np.float32), embedder=embedder)
    with pytest.raises(DimensionError, match="3 vectors but 2 names"):
        dim_toolkit.Index.build(np.ones((3, 8), np.float32), names=["a", "b"])
    with pytest.raises(DimensionError, match="row 1 has a NaN"):
        dim_toolkit.Index.build(np.array([[1, 0], [np.nan, 1]], np.float32))
    with pytest.raises(DimensionError, match="expected \\(height, width\\)"):
        embedder.embed([np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(DimensionError, match="batch of shape"):
        embedder.embed(np.zeros((4, 4), np.uint8))


def test_non_uint8_images_raise_type_error(embedder):
    with pytest.raises(TypeError, match="uint8"):
        embedder.embed([np.zeros((8, 8), np.float32)])


def test_an_index_directory_that_is_not_one_raises(tmp_path):
    with pytest.raises(DimToolkitError):
        dim_toolkit.Index.load(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    index = dim_toolkit.Index.build(np.eye(4, dtype=np.float32))
    with pytest.raises(DimToolkitError, match="refusing to replace it"):
        index.save(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"
