"""train(): runs dim-train, relaying its progress; Ctrl-C stops it at a resumable checkpoint.

The wheel does not carry dim-train: it links libtorch (a 5 GB environment, tied to one torch
release), so it is built from a dim-toolkit checkout (``cargo build --release -p dim-train``) or
installed with ``cargo install --path train``. ``train`` finds it through ``dim_train=``, the
``DIM_TRAIN`` environment variable or ``PATH``; when torch is importable (``pip install
dim-toolkit[train]``), its ``torch/lib`` is put on the library path of the run, so a dim-train
built against that torch release runs without the build machine's environment.
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from ._errors import TrainingError


def find_dim_train(dim_train=None):
    """The dim-train executable: the argument, $DIM_TRAIN, or dim-train on PATH."""
    candidate = dim_train or os.environ.get("DIM_TRAIN") or shutil.which("dim-train")
    if not candidate:
        raise TrainingError(
            "dim-train not found: it is not part of the wheel (it links libtorch). Build it in a "
            "dim-toolkit checkout with `cargo build --release -p dim-train` (or `cargo install --path "
            "train`) and pass dim_train=..., set DIM_TRAIN, or put it on PATH"
        )
    path = Path(candidate)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise TrainingError(f"dim-train {path} is not an executable file")
    return path


def _flags(options):
    """Keyword arguments as dim-train flags: crop_area_min=0.3 -> --crop-area-min 0.3."""
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                flags += [flag, os.fspath(item) if isinstance(item, os.PathLike) else str(item)]
        else:
            flags += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return flags


def _environment():
    env = dict(os.environ)
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.submodule_search_locations:
        torch_lib = Path(list(spec.submodule_search_locations)[0], "lib")
        if torch_lib.is_dir():
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(torch_lib), env.get("LD_LIBRARY_PATH")]))
    return env


def train(data, out, *, dim_train=None, progress=True, resume=False, **options):
    """Trains a DIM encoder with dim-train and returns the checkpoint directory.

    data: the training images (a folder, IDX, CIFAR or STL-10 files, as ``--data``); out: the
    checkpoint directory. Every other keyword is a dim-train flag (``epochs=20``,
    ``views="cross"``, ``global_to_global=1``, ``device="cuda"``; True for a bare flag); see
    ``dim-train --help``. resume: continue the run in ``out``. progress: relay dim-train's
    output to stderr. Ctrl-C stops the run after checkpointing (``train(..., resume=True)``
    continues it) and raises KeyboardInterrupt.
    """
    program = find_dim_train(dim_train)
    command = [os.fspath(program)]
    command += ["--resume", os.fspath(out)] if resume else ["--data", os.fspath(data), "--out", os.fspath(out)]
    command += _flags(options)
    tail = []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=_environment()
    )
    try:
        for line in process.stdout:
            tail = (tail + [line.rstrip("\n")])[-20:]
            if progress:
                sys.stderr.write(line)
                sys.stderr.flush()
        status = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)  # dim-train checkpoints the step it is on, then exits
        process.wait()
        raise
    if status != 0:
        raise TrainingError(f"dim-train exited with status {status}:\n" + "\n".join(tail))
    return Path(out)
