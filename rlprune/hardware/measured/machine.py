"""The CPU a measured table runs on: its name, its int8 engine, and the key of its cache file."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

INT8_ENGINES = ("x86", "fbgemm")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family, model and stepping numbers (``/proc/cpuinfo``), or
    ``platform.processor()`` elsewhere.

    A cloud VM may name only the vendor's line ("AMD EPYC"): the numbers tell its generations
    apart, whose tables differ (at batch 1, a dense FP32 resnet20 ran 273 µs on one "AMD EPYC",
    382 on another, and INT8 0.91 of FP32 on the first, 0.43 on the second).
    """
    fallback = platform.processor() or platform.machine() or "unknown"
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return fallback
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip().lower(): value.strip() for key, value in pairs}
    numbers = ", ".join(
        f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields
    )
    name = fields.get("model name", fallback)
    return f"{name} ({numbers})" if numbers else name


def int8_engine() -> str | None:
    """The quantized engine that runs int8 Linear/Conv on this CPU (x86 or fbgemm), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in INT8_ENGINES if e in engines), None)


def cpu_key(threads: int) -> dict[str, Any]:
    """What a CPU table's entries depend on beyond their shapes: the CPU (:func:`cpu_model`),
    the kernels torch dispatches to on it (AVX2, AVX512, ...), the architecture, torch's
    version and the thread count. The key of its cache file (:class:`TableCache`)."""
    return {
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
    }
