"""Load a user's trained network: a state dict, a whole pickled module, or a ``.safetensors`` file.

A state dict (``.pt``/``.pth``) or ``.safetensors`` file fills the model that ``model._target_``
builds; a whole module saved with ``torch.save(model, path)`` stands for itself (it is
unpickled, so load only files you trust). Every failure names the file and what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rlprune.errors import ModelError


def read_checkpoint(path: str | Path) -> nn.Module | Mapping[str, torch.Tensor]:
    """The module or state dict stored in ``path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"model.checkpoint={str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, corrupt or foreign: say which file
        raise ModelError(
            f"model.checkpoint={str(path)!r} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(loaded, nn.Module):
        return loaded
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]  # a training checkpoint that wraps its weights
    if isinstance(loaded, Mapping) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    raise ModelError(
        f"model.checkpoint={str(path)!r} holds a {type(loaded).__name__}, "
        "not a module or a state dict of tensors"
    )


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> nn.Module:
    """Fill ``model`` with ``state`` exactly; a mismatch names the file and the keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ModelError(
            f"model.checkpoint={str(path)!r} does not match the {type(model).__name__} that "
            f"model._target_ builds: {' '.join(line.strip() for line in first)}"
        ) from exc
    return model
