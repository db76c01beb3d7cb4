"""Fixtures for the dim_toolkit tests: the command-line tools to compare with, and small labelled
image folders written with PIL. The tests run against the installed wheel, not the source tree."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dim_toolkit

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    installed = Path(dim_toolkit.__file__).resolve()
    if "site-packages" not in installed.parts:
        raise pytest.UsageError(f"dim_toolkit is imported from {installed}, not from an installed wheel")


def tool(name):
    """A workspace binary, dim-embed as $DIM_EMBED (cargo xtask test sets them), else target/debug/."""
    variable = "DIM_" + name.removeprefix("dim-").upper()
    path = Path(os.environ.get(variable, REPO / "target" / "debug" / name))
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it (cargo build --bins) or set {variable}")
    return path


def run(command):
    """Runs a command, failing the test with its output when it fails."""
    done = subprocess.run([os.fspath(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def pattern(kind, seed, size=28):
    """A grey image of one of three classes (stripes, rings, blocks) with random phase."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    shift = rng.uniform(0, 6)
    if kind == 0:
        field = np.sin((x + shift) * 0.9)
    elif kind == 1:
        field = np.sin(np.hypot(x - size / 2, y - size / 2) * 0.8 + shift)
    else:
        field = np.sign(np.sin((x + shift) * 0.35) * np.sin((y + shift) * 0.35))
    noise = rng.normal(0, 0.1, field.shape)
    return np.uint8(np.clip((field + noise) * 100 + 128, 0, 255))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """30 PNGs in three class folders, one RGB JPEG and one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    for kind in range(3):
        folder = root / f"class{kind}"
        folder.mkdir()
        for i in range(10):
            Image.fromarray(pattern(kind, 100 * kind + i)).save(folder / f"{i:02d}.png")
    Image.fromarray(np.dstack([pattern(0, 7)] * 3)).save(root / "class0" / "colour.jpg", quality=95)
    (root / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="session")
def good_files(image_folder):
    return sorted(p for p in image_folder.rglob("*") if p.is_file() and p.name != "broken.png")


@pytest.fixture(scope="session")
def embedder():
    return dim_toolkit.Embedder(threads=1)
