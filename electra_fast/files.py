"""Files that appear whole or not at all: a folder filled under a temporary name and renamed into place, a file
replaced at once, each flushed to disk first; and the comparison of two saved configurations. Checkpoints
(electra_fast.pretraining.checkpoint), prepared data (electra_fast.data.prepare) and fine-tuning outputs use them."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable


def write_folder(final: str, fill: Callable[[str], None]) -> None:
    """Creates folder `final` with what `fill(folder)` writes, never leaving a half-written `final`: fill runs on
    a temporary sibling folder, which is flushed to disk and renamed to `final` (replacing an older `final`).
    On failure the temporary folder is removed and the exception propagates."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", dir=parent)
    try:
        fill(temporary)
        for name in os.listdir(temporary):
            fsync(os.path.join(temporary, name))
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old.", dir=parent)
            os.replace(final, os.path.join(old, "folder"))
            os.replace(temporary, final)
            shutil.rmtree(old)
        else:
            os.replace(temporary, final)
        fsync(parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_file(path: str, text: str) -> None:
    """Replaces the file `path` by `text` at once: written to a temporary sibling, flushed to disk, renamed (on
    failure the temporary file is removed and the exception propagates)."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    try:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def fsync(path: str) -> None:
    """Flushes a file or folder (its entries: a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: saved there, current here' for every leaf where two nested configuration dicts differ (`saved`: the
    one a checkpoint or a prepared folder holds)."""
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return found
