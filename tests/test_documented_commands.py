"""Every ``python -m rlprune …`` command shown in README.md and docs/ runs as written, and so
does every Python block.

Each command is run in its own temporary folder (so the run folders it names land there) with
the default logger (W&B offline, its files under the folder too) and with only quick settings
appended: fewer search evaluations, one finetune epoch, a short dense training (shared through
the session's cache). A sweep (``-m``) keeps at most two values of each swept key. A command
passes when it exits 0 and every report it writes is within its budget. Commands that need
what only a user has (their package, data or cluster: ``<partition>``, ``my_pkg``, ``~/``)
are skipped, saying so. ``resume=true`` continues the same command killed midway, as the
README says it is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlprune.config import sweep_jobs

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]
# short training (the dense model is shared through the session cache) and a short search
TRAINING = ["finetune.epochs=1", "dense.epochs=2"]
QUICK = ["search.evaluations=8", *TRAINING]
# what only the user has: placeholders, their own package or weights, their data folders
USER_ONLY = re.compile(r"<[^>]+>|my_pkg\.|mynet|~/|\.\.\.")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(python -m rlprune\s[^`]*)`")
PROGRAM = ["python", "-m", "rlprune"]


@dataclass(frozen=True)
class Command:
    """One documented command: its arguments after ``python -m rlprune`` and where it is shown."""

    args: tuple[str, ...]
    source: str

    @property
    def text(self) -> str:
        """The command as a user types it."""
        return shlex.join([*PROGRAM, *self.args])

    @property
    def multirun(self) -> bool:
        """Whether it is a Hydra sweep."""
        return bool({"-m", "--multirun"} & set(self.args))


def _logical_lines(block: str) -> list[str]:
    """The lines of a code block with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def documented_commands(documents: list[Path] = DOCUMENTS) -> list[Command]:
    """Every ``python -m rlprune`` command in the code blocks and inline code of ``documents``, once."""
    found: dict[tuple[str, ...], Command] = {}
    for path in documents:
        text = path.read_text()
        snippets = [line for block in FENCE.findall(text) for line in _logical_lines(block)]
        snippets += [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]
        for snippet in snippets:
            if " ".join(PROGRAM) not in snippet:  # prose in code spans need not parse as shell
                continue
            tokens = shlex.split(snippet, comments=True)
            if tokens[:3] == PROGRAM:
                args = tuple(tokens[3:])
                found.setdefault(args, Command(args, os.path.relpath(path, ROOT)))
    return list(found.values())


def _two_values_at_most(arg: str) -> str:
    key, _, value = arg.partition("=")
    if not value or "," not in value or value.startswith("["):
        return arg
    return f"{key}={','.join(value.split(',')[:2])}"


def _env(folder: Path) -> dict[str, str]:
    """The user's environment with W&B's and the temp files inside ``folder``."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "TMPDIR": str(folder / "tmp")}
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        env[f"WANDB_{name}"] = str(folder / "wandb_home" / name.lower())
    return env


def _kill_midway(args: list[str], folder: Path) -> None:
    """Run ``args`` (the search as written, training quick) until its first checkpoint, then SIGTERM it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rlprune", *args, *TRAINING],
        cwd=folder,
        env=_env(folder),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if any(folder.rglob("checkpoint/search.json")):
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, f"the run to resume was not interrupted:\n{stderr[-3000:]}"


def _expected_reports(command: Command, args: list[str]) -> int:
    if "--cfg" in args or "--help" in args:
        return 0
    if command.multirun:
        jobs = sweep_jobs([arg for arg in args if not arg.startswith("-")])
        return len(jobs) if jobs is not None else 1
    sweep = next((arg.partition("=")[2] for arg in args if arg.startswith("budget.sweep=")), None)
    return len(json.loads(sweep)) if sweep else 1


def _param(command: Command) -> object:
    marks = []
    if USER_ONLY.search(command.text):
        marks.append(pytest.mark.skip(reason=f"needs what only a user has ({command.source})"))
    if "hardware=local_cpu" in command.args:
        marks.append(pytest.mark.slow)  # measures its latency table on this CPU: minutes
    return pytest.param(command, id=command.text, marks=marks)


COMMANDS = documented_commands()
PYTHON_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def documented_python(documents: list[Path] = DOCUMENTS) -> list[pytest.param]:
    """Every ``python`` code block of ``documents``, each a test case named by its place."""
    blocks = []
    for path in documents:
        for number, block in enumerate(PYTHON_FENCE.findall(path.read_text()), 1):
            source = f"{os.path.relpath(path, ROOT)} python block {number}"
            blocks.append(pytest.param(block, id=source, marks=pytest.mark.slow))
    return blocks


def test_the_documents_show_commands_and_the_collector_finds_each_form(tmp_path: Path) -> None:
    assert len(COMMANDS) >= 10
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python -m rlprune agent=ppo\nseed=1` or:\n\n```bash\n"
        'python -m rlprune "search.bits=[8]" \\\n    budget.latency=0.5   # a comment\n'
        "python -m rlprune.pareto runs/front\nmake demo  # runs: python -m rlprune agent=ppo\n```\n"
    )
    commands = documented_commands([page])
    assert [c.args for c in commands] == [("search.bits=[8]", "budget.latency=0.5"), ("agent=ppo", "seed=1")]


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_documented_command_runs_as_written(command: Command, tmp_path: Path) -> None:
    args = [_two_values_at_most(arg) for arg in command.args] if command.multirun else list(command.args)
    if "resume=true" in args:
        _kill_midway([arg for arg in args if arg != "resume=true"], tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "rlprune", *args, *QUICK],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, (
        f"{command.text} ({command.source}) exited {result.returncode}:\n{result.stderr[-3000:]}"
    )
    reports = [json.loads(path.read_text()) for path in tmp_path.rglob("report.json")]
    assert len(reports) == _expected_reports(command, args), result.stdout[-2000:]
    for report in reports:
        assert report["latency"] <= report["budget"] + 1e-9, (
            f"{command.text}: {report['latency']} > {report['budget']}"
        )


@pytest.mark.parametrize("block", documented_python())
def test_documented_python_runs_as_written(block: str, tmp_path: Path) -> None:
    # in its own folder: the run folders it names land there; the session's cache holds the data
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"exited {result.returncode}:\n{result.stderr[-3000:]}"
    for path in tmp_path.rglob("report.json"):
        report = json.loads(path.read_text())
        assert report["latency"] <= report["budget"] + 1e-9, (
            f"{path}: {report['latency']} > {report['budget']}"
        )
