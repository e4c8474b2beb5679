"""Progress bars of a run's long stages: training (the dense model, the finetune), the search,
and measuring a latency table.

Each bar is shown while its context is entered and is told of progress as the stage goes. The
search's bar listens to the :class:`~rlprune.envs.problem.SearchProblem`, where every searcher
spends its evaluations (warm start, agent, refinement; parallel workers' scores too, as the
lead records them), so one bar covers any searcher from its first evaluation to its last. The
bars fit an 80-column terminal, which is why they show the time left and not the time spent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from rlprune.envs.problem import Outcome, SearchProblem


class StageProgress:
    """One bar: ``label``, the bar, done of ``total``, the time left and a note; shown while
    entered, and wiped when it ends if ``transient``.

    It redraws as it is told of progress, at most every ``REDRAW_S`` seconds, in the caller's
    thread: a thread of its own would take turns from timed work (a latency table's timings).
    """

    REDRAW_S = 0.1

    def __init__(
        self,
        label: str,
        total: float,
        done: float = 0,
        note: str = "",
        console: Console | None = None,
        transient: bool = False,
    ) -> None:
        self.progress = Progress(
            TextColumn(label),
            BarColumn(bar_width=10),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=transient,
            auto_refresh=False,
        )
        self.task = self.progress.add_task(label, total=total, completed=done, note=note)
        self._drawn = 0.0

    def update(self, **fields: Any) -> None:
        """Set the task's ``completed``, ``total``, ``note`` (rich's ``update``); redraw if due."""
        self.progress.update(self.task, **fields)
        if time.perf_counter() - self._drawn >= self.REDRAW_S:
            self.progress.refresh()
            self._drawn = time.perf_counter()

    def advance(self, count: float) -> None:
        """Count ``count`` more done."""
        self.update(advance=count)

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *error: object) -> None:
        self.progress.stop()


class TrainingProgress(StageProgress):
    """A bar of a training's optimizer ``steps`` with its smoothed loss, labelled
    ``<stage> steps``: ``train(..., progress=bar)``."""

    def __init__(self, stage: str, steps: int, console: Console | None = None) -> None:
        super().__init__(f"{stage} steps", steps, console=console)
        self.loss: float | None = None

    def __call__(self, step: int, loss: float) -> None:
        """Count the ``step`` steps taken; ``loss`` is the last one's."""
        # about the mean of the last 20 steps' losses: one batch's loss jumps
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        self.update(completed=step, note=f"loss {self.loss:.4g}")


class SearchProgress(StageProgress):
    """A bar of ``problem``'s evaluations with the best policy so far: search inside ``with bar:``,
    where it listens to the problem."""

    def __init__(self, problem: SearchProblem, console: Console | None = None) -> None:
        self.problem = problem
        super().__init__("evaluations", problem.evaluations, problem.used, self._best(), console)

    def _best(self) -> str:
        best = self.problem.best
        if best is None:
            return "none within budget yet"
        value = abs(self.problem.value(best))  # the metric itself, where the search maximises its negative
        return f"best {self.problem.metric} {value:.4f} at latency {best.latency:.3f}"

    def __enter__(self) -> SearchProgress:
        self.problem.listeners.append(self)
        super().__enter__()
        return self

    def __exit__(self, *error: object) -> None:
        self.problem.listeners.remove(self)
        super().__exit__(*error)

    def __call__(self, outcome: Outcome, improved: bool) -> None:
        """Count ``outcome``; redraw the best when it improved."""
        note = {"note": self._best()} if improved else {}
        self.update(completed=self.problem.used, total=self.problem.evaluations, **note)
