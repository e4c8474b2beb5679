"""Atomic file output: every file (or folder) is written to a temporary name, then renamed into place.

A reader therefore sees either the old file or the complete new one, never a partial write,
even when the process is killed midway.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from rlprune.errors import ConfigError


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path`` and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_dir_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a temporary folder beside ``path`` and rename it to ``path``
    (a folder already there is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual mode
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as block-style YAML to ``path`` atomically."""
    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


RUN_OUTPUTS = ("report.json", "policy.yaml")


def check_fresh_run_dir(run_dir: str | os.PathLike[str], resume: bool = False) -> None:
    """Raise :class:`ConfigError` when ``run_dir`` already holds a run: rlprune never overwrites one.

    With ``resume``, a folder whose search was interrupted (a policy, no report) is the one to use.
    """
    held = [name for name in RUN_OUTPUTS if (Path(run_dir) / name).exists()]
    if resume and "report.json" in held:
        raise ConfigError(f"resume=true, but the run in {run_dir} already finished (report.json)")
    if held and not resume:
        hint = "" if "report.json" in held else ", or add resume=true to continue its interrupted search"
        raise ConfigError(
            f"the run folder {run_dir} already holds a run ({', '.join(held)}); rlprune never overwrites "
            f"one: choose another hydra.run.dir{hint}"
        )
