"""A measured CPU table's settings: read from its hardware config node, and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rlprune.errors import ConfigError
from rlprune.hardware.measured.ops import EPILOGUES, MEMORY_FORMATS
from rlprune.hardware.profile import ConfigReader, read_common
from rlprune.policy import FLOAT_BITS, Pattern

# the settings a hardware config must give a source for (sources.<name>)
MEASURED_SETTINGS = (
    "batch_size",
    "threads",
    "channel_step",
    "rounds",
    "block_time",
    "warmup",
    "retries",
    "slack",
    "verify",
    "memory_format",
)


def check_settings(
    name: str,
    *,
    bits: Sequence[int],
    reference_bits: int,
    epilogue: str,
    memory_format: str,
    retries: int,
    verify: int,
    slack: float,
) -> None:
    """Raise :class:`ConfigError` for settings a CPU table cannot run (given in Python, not read
    from a config: :func:`read_settings` names the config's key instead)."""
    if reference_bits != FLOAT_BITS:
        raise ConfigError(f"hardware '{name}': reference_bits must be 32 (FP32 on a CPU)")
    if any(b not in (8, FLOAT_BITS) for b in bits):
        raise ConfigError(
            f"hardware '{name}': bits {list(bits)}: only 8 (int8, torch.ao) and 32 (float) change "
            "CPU time in PyTorch; drop the others"
        )
    if epilogue not in EPILOGUES:
        raise ConfigError(f"hardware '{name}': epilogue must be one of {list(EPILOGUES)}, got {epilogue!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ConfigError(
            f"hardware '{name}': memory_format must be one of {list(MEMORY_FORMATS)}, got {memory_format!r}"
        )
    if retries < 0 or verify < 0 or not slack > 1:
        raise ConfigError(
            f"hardware '{name}': retries and verify must be 0 or more and slack over 1, "
            f"got {retries}, {verify} and {slack}"
        )


def read_settings(cfg: Mapping[str, Any], where: str = "hardware config") -> dict[str, Any]:
    """The keyword arguments of :class:`~rlprune.hardware.measured.MeasuredModel` that a
    ``model: measured`` config node (plain data) gives.

    ``cache_dir`` may be absent, null or an unresolved ``${...}`` string (a YAML file read
    without OmegaConf): then it is None, the default cache (``$RLPRUNE_CACHE`` or
    ``~/.cache/rlprune``).
    """
    reader = ConfigReader(cfg, where)
    reader.raw("model")
    name, batch_size, reference, bits = read_common(reader)
    description = reader.string("description", name)
    threads = reader.integer("threads", minimum=1)
    step = reader.integer("channel_step", minimum=1)
    rounds = reader.integer("rounds", minimum=1)
    block_time = reader.number("block_time", positive=True)
    warmup = reader.integer("warmup", 10, minimum=0)
    retries = reader.integer("retries", 2, minimum=0)
    slack = reader.number("slack", 1.1, positive=True)
    if not slack > 1:
        raise reader.error("slack", "a number over 1 (1.1: 10% over the marker's reference pace)", slack)
    verify = reader.integer("verify", 4, minimum=0)
    epilogue = reader.string("epilogue", "relu")
    if epilogue not in EPILOGUES:
        raise reader.error("epilogue", f"one of {list(EPILOGUES)}", epilogue)
    memory_format = reader.string("memory_format", "channels_last")
    if memory_format not in MEMORY_FORMATS:
        raise reader.error("memory_format", f"one of {list(MEMORY_FORMATS)}", memory_format)
    cache_dir = reader.raw("cache_dir", None)
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise reader.error("cache_dir", "a folder path", cache_dir)
    if isinstance(cache_dir, str) and ("${" in cache_dir or not cache_dir.strip()):
        cache_dir = None
    patterns = reader.patterns("patterns", [p.value for p in Pattern])
    nm_raw = reader.raw("nm_options", [], "an empty list (no N:M kernels on a CPU in PyTorch)")
    if nm_raw:
        raise reader.error("nm_options", "an empty list: PyTorch on a CPU runs N:M masks dense", nm_raw)
    progress = reader.raw("progress", True)
    if isinstance(progress, str) and "${" in progress:  # read as plain YAML, not composed
        progress = True
    if not isinstance(progress, bool):
        raise reader.error("progress", "true or false", progress)
    sources = reader.sources(MEASURED_SETTINGS)
    reader.finish()
    if bits != tuple(sorted(set(bits) & {8, FLOAT_BITS})):
        raise reader.error("bits", "a subset of [8, 32] (int8 and float are what a CPU runs)", list(bits))
    return {
        "name": name,
        "description": description,
        "batch_size": batch_size,
        "bits": bits,
        "reference_bits": reference,
        "threads": threads,
        "channel_step": step,
        "rounds": rounds,
        "block_time": block_time,
        "warmup": warmup,
        "retries": retries,
        "slack": slack,
        "verify": verify,
        "epilogue": epilogue,
        "memory_format": memory_format,
        "cache_dir": cache_dir,
        "patterns": patterns,
        "progress": progress,
        "sources": sources,
    }
