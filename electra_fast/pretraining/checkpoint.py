"""Pretraining checkpoints that survive interruption, full disks and corruption.

A checkpoint is a folder `checkpoints/step-NNNNNNNN/` under the run's output folder, holding
- `model.safetensors`: the ElectraPretrainer's weights (the tied embeddings stored once);
- `training_state.pt`: optimizer, scheduler, torch RNG and data position, only tensors and plain Python values,
  loaded with `torch.load(weights_only=True)` (no arbitrary pickle);
- `manifest.json`, written last: the step, the run's configuration and each file's size and sha256.
It is written under a temporary name and renamed when complete; then the text file `latest` is switched to it
by `os.replace` (atomic), and only then are checkpoints older than the last `keep` removed. A crash or a full
disk at any point leaves `latest` naming a complete checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch
from safetensors.torch import load_model, save_model

from ..errors import BadInput
from ..files import differences, write_file, write_folder

MANIFEST, WEIGHTS, STATE, LATEST = "manifest.json", "model.safetensors", "training_state.pt", "latest"
FORMAT = "electra-fast-checkpoint/1"


class CheckpointError(BadInput):
    """A checkpoint that cannot be written or read; the message names the folder and the problem."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(out: str, step: int, model: torch.nn.Module, training_state: dict, config: dict, *, keep: int = 2) -> str:
    """Writes the checkpoint of `step` under `out`, points `out/latest` at it and keeps the newest `keep`
    checkpoints. Returns its folder. Raises CheckpointError (the previous checkpoint untouched) when writing
    fails, e.g. on a full disk."""
    name = os.path.join("checkpoints", f"step-{step:08d}")
    folder = os.path.join(out, name)

    def fill(temporary):
        save_model(model, os.path.join(temporary, WEIGHTS))
        torch.save(training_state, os.path.join(temporary, STATE))
        files = {f: {"bytes": os.path.getsize(os.path.join(temporary, f)),
                     "sha256": _sha256(os.path.join(temporary, f))} for f in (WEIGHTS, STATE)}
        with open(os.path.join(temporary, MANIFEST), "w") as f:
            json.dump({"format": FORMAT, "step": step, "config": config, "files": files}, f, indent=1)

    try:
        write_folder(folder, fill)
        write_file(os.path.join(out, LATEST), name + "\n")
    except OSError as e:
        raise CheckpointError(f"--out: saving the checkpoint of step {step} to {folder} failed "
                              f"({e.strerror or e}); the previous checkpoint is kept") from None
    _remove_older(out, keep)
    return folder


def _remove_older(out: str, keep: int) -> None:
    root = os.path.join(out, "checkpoints")
    steps = sorted(n for n in os.listdir(root) if n.startswith("step-"))
    for stale in steps[:-max(1, keep)]:
        shutil.rmtree(os.path.join(root, stale), ignore_errors=True)


def latest(out: str) -> str | None:
    """The folder that `out/latest` names, or None when `out` holds no checkpoint."""
    pointer = os.path.join(out, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        return os.path.join(out, f.read().strip())


def read_manifest(folder: str) -> dict:
    """The manifest of a checkpoint folder, after checking that every file it lists is complete and unchanged."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint {folder} does not exist")
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not an electra-fast checkpoint (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/{MANIFEST} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not an electra-fast checkpoint (format "
                              f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    for name, expected in manifest["files"].items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
        if os.path.getsize(path) != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {folder} is corrupt: {name} is truncated or changed "
                                  f"({os.path.getsize(path)} bytes, {expected['bytes']} written)")
    return manifest


def load(folder: str, model: torch.nn.Module, config: dict, device: torch.device) -> dict:
    """Loads a checkpoint's weights into `model` and returns its training state (the manifest's step under
    "step"). Raises CheckpointError if the checkpoint is corrupt, foreign, or from another configuration."""
    manifest = read_manifest(folder)
    changed = differences(manifest["config"], config)
    if changed:
        raise CheckpointError(f"--resume: the checkpoint {folder} comes from another configuration: "
                              + "; ".join(changed))
    try:
        load_model(model, os.path.join(folder, WEIGHTS), strict=True, device=str(device))
        state = torch.load(os.path.join(folder, STATE), map_location=device, weights_only=True)
    except Exception as e:  # safetensors and torch.load raise several types for damaged files
        raise CheckpointError(f"checkpoint {folder} cannot be loaded ({str(e).splitlines()[0]})") from None
    state["step"] = manifest["step"]
    return state
