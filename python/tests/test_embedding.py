"""The Python embedder gives dim-embed's vectors, for files, arrays and PIL images alike."""

import json
import signal
import threading
import time
import _thread

import numpy as np
import pytest
from PIL import Image

import dim_toolkit
from conftest import run, tool


def cli_vectors(folder, out):
    run([tool("dim-embed"), folder, "--out", out, "--threads", "1"])
    vectors = np.load(out / "embeddings.npy")
    rows = json.loads((out / "manifest.json").read_text())["rows"]
    return {row["path"]: vectors[i] for i, row in enumerate(rows)}


def test_vectors_equal_dim_embed_for_the_same_files(embedder, image_folder, good_files, tmp_path):
    expected = cli_vectors(image_folder, tmp_path / "cli")
    assert sorted(expected) == sorted(str(p) for p in good_files)
    got = embedder.embed(good_files)
    assert got.shape == (len(good_files), embedder.dim) and got.dtype == np.float32
    for path, vector in zip(good_files, got):
        np.testing.assert_allclose(vector, expected[str(path)], rtol=0, atol=1e-6)


def test_embed_folder_writes_what_dim_embed_writes(embedder, image_folder, tmp_path):
    cli = tmp_path / "cli"
    run([tool("dim-embed"), image_folder, "--out", cli, "--threads", "1"])
    summary = dim_toolkit.embed_folder(image_folder, tmp_path / "py", embedder=embedder, progress=False)
    assert summary["embedded"] == summary["rows"] == 31
    stages = summary["stage_seconds"]
    assert set(stages) == {"model", "waiting_for_decoding", "writing"}
    assert stages["model"] > 0 and sum(stages.values()) <= summary["seconds"] * 1.01
    assert [s["path"] for s in summary["skipped"]] == [str(image_folder / "class1" / "broken.png")]
    for name in ("manifest.json", "skipped.json"):
        assert json.loads((tmp_path / "py" / name).read_text()) == json.loads((cli / name).read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "py" / "embeddings.npy"), np.load(cli / "embeddings.npy"))
    again = dim_toolkit.embed_folder(image_folder, tmp_path / "py", embedder=embedder, progress=False)
    assert (again["embedded"], again["reused"]) == (0, 31)


def test_arrays_and_pil_images_embed_like_their_files(embedder, good_files):
    pngs = [p for p in good_files if p.suffix == ".png"][:6]
    from_files = embedder.embed(pngs)
    arrays = [np.asarray(Image.open(p)) for p in pngs]
    np.testing.assert_allclose(embedder.embed(arrays), from_files, rtol=0, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(np.stack(arrays)), from_files, rtol=0, atol=1e-6)
    np.testing.assert_allclose(embedder.embed([Image.open(p) for p in pngs]), from_files, rtol=0, atol=1e-6)
    rgb = [np.dstack([a] * 3) for a in arrays]  # grey as RGB: the model converts to its one channel
    np.testing.assert_allclose(embedder.embed(rgb), from_files, rtol=0, atol=1e-5)


def test_skipped_files_are_reported_and_rows_keep_their_inputs(embedder, image_folder, good_files):
    broken = image_folder / "class1" / "broken.png"
    inputs = [good_files[0], broken, good_files[1]]
    with pytest.warns(UserWarning, match="1 of 3 images could not be embedded"):
        vectors = embedder.embed(inputs)
    report = embedder.last_report
    assert vectors.shape[0] == 2 and report.positions.tolist() == [0, 2]
    assert [(s.position, s.input) for s in report.skipped] == [(1, str(broken))]
    np.testing.assert_array_equal(vectors, embedder.embed([good_files[0], good_files[1]]))


def test_other_features_and_metadata(embedder, good_files):
    conv = embedder.embed(good_files[:2], feature="conv")
    y = embedder.embed(good_files[:2], feature="y")
    meta = embedder.metadata
    assert meta["preset"] == "basic32x32" and meta["input_size"] == 32
    widths = {o["name"]: o["dim"] for o in meta["outputs"]}
    assert conv.shape == (2, widths["conv"]) and y.shape == (2, widths["y"])
    assert meta["training_recipe"]["views"] == "cross"  # the shipped default is the cross-view model
    assert embedder.model_path == dim_toolkit.default_model_path()


@pytest.fixture
def ctrl_c_soon():
    """A function that sends Ctrl-C to the test 0.5 s after it is called and returns the time it
    was called. Python raises KeyboardInterrupt for SIGINT only through its own handler, which it
    does not install when started with SIGINT ignored (as a background job is), so the handler is
    installed here and the inherited one restored afterwards."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    timers = []

    def arm():
        timers.append(threading.Timer(0.5, _thread.interrupt_main))
        timers[-1].start()
        return time.monotonic()

    yield arm
    for timer in timers:
        timer.cancel()
    signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_interrupts_a_long_embedding(embedder, good_files, ctrl_c_soon):
    many = [good_files[0]] * 20000  # about 15 s of work on one thread
    started = ctrl_c_soon()
    with pytest.raises(KeyboardInterrupt):
        embedder.embed(many)
    assert time.monotonic() - started < 8


def test_ctrl_c_stops_embed_folder_without_writing(embedder, good_files, tmp_path, ctrl_c_soon):
    folder = tmp_path / "many"
    folder.mkdir()
    image = good_files[0].read_bytes()
    for i in range(12000):  # distinct files (a collection takes each file once), one image
        (folder / f"{i:05d}.png").write_bytes(image)
    started = ctrl_c_soon()
    with pytest.raises(KeyboardInterrupt):
        dim_toolkit.embed_folder(folder, tmp_path / "out", embedder=embedder, progress=False)
    assert time.monotonic() - started < 8
    assert not (tmp_path / "out" / "embeddings.npy").exists()
