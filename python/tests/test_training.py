"""train() runs dim-train with keyword flags and hands back a checkpoint the embedder can use."""

import os

import pytest

import dim_toolkit
from conftest import tool


def test_train_runs_dim_train_and_returns_the_checkpoint(image_folder, tmp_path, capfd):
    out = dim_toolkit.train(
        image_folder, tmp_path / "ckpt", dim_train=tool("dim-train"), epochs=1, batch=8, critic_width=32,
        threads=1, device="cpu",
    )
    assert out == tmp_path / "ckpt" and (out / "config.json").is_file()
    assert "checkpoint:" in capfd.readouterr().err  # dim-train's own output, relayed


def test_dim_train_errors_become_training_errors(image_folder, tmp_path):
    with pytest.raises(dim_toolkit.TrainingError, match="unexpected argument"):
        dim_toolkit.train(image_folder, tmp_path / "ckpt", dim_train=tool("dim-train"), no_such_flag=1,
                          progress=False)
    with pytest.raises(dim_toolkit.TrainingError, match="not an executable"):
        dim_toolkit.train(image_folder, tmp_path / "ckpt", dim_train=tmp_path / "nothing")


def test_missing_dim_train_says_how_to_get_it(monkeypatch, image_folder, tmp_path):
    monkeypatch.delenv("DIM_TRAIN", raising=False)
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    with pytest.raises(dim_toolkit.TrainingError, match="cargo build --release -p dim-train"):
        dim_toolkit.train(image_folder, tmp_path / "ckpt")
