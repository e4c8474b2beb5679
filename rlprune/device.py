"""The torch device a run trains, scores and finetunes on (the config's ``device``).

``auto`` is the current CUDA GPU where torch sees one and the CPU elsewhere, so a command
written for a laptop runs unchanged on a GPU machine. ``cpu``, ``cuda`` and ``cuda:N`` are
taken as given, and a CUDA device that is not there is refused with one line that says so.
Data is moved to the device once (:meth:`rlprune.data.Splits.to`); everything a run makes from
the model and the data then stays there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from rlprune.errors import ConfigError, RlpruneError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """The device ``name`` stands for on this machine.

    Raises:
        ConfigError: ``name`` is not one of :data:`DEVICE_FORMS`, or names a CUDA device this
            machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise ConfigError(f"device={name!r} is not a device; use {DEVICE_FORMS}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} asks for a CUDA GPU, and torch sees none on this machine "
            "(a CPU build of torch, or no GPU); use device=auto or device=cpu"
        )
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return device


@contextmanager
def out_of_memory_explained(device: torch.device) -> Iterator[None]:
    """Turn the GPU running out of memory into one line that says what to do.

    The search writes its best policy as it improves and checkpoints itself, so what it found
    stays in the run folder.
    """
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "out of memory"
        raise RlpruneError(
            f"{device} ran out of memory ({first[:120]}); the best policy so far is in the run folder "
            "(policy.yaml; resume=true continues the search): free the GPU, or run with device=cpu"
        ) from exc


def mixed_precision(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on a CUDA GPU that runs bf16 (Ampere and newer), nothing elsewhere.

    For training the dense network, where bf16 products with float32 weights and losses are
    the usual practice. The search's scoring and the finetune stay in float32: their fake
    quantization rounds to 8-bit levels that bf16's 8-bit mantissa would blur.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
