"""A search's progress bar: evaluations spent out of the budget, and the best policy so far.

It listens to the :class:`~rlprune.envs.problem.SearchProblem`, where every searcher spends its
evaluations (warm start, agent, refinement; parallel workers' scores too, as the lead records
them), so one bar covers any searcher from its first evaluation to its last.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rlprune.envs.problem import Outcome, SearchProblem


class SearchProgress:
    """A bar of ``problem``'s evaluations with the best so far, shown while used as a context.

    Register it as a listener (``problem.listeners.append(bar)``) and run the search inside
    ``with bar:``. ``console`` is where it draws (default: the terminal's).
    """

    def __init__(self, problem: SearchProblem, console: Console | None = None) -> None:
        self.problem = problem
        # narrow enough for an 80-column terminal; the report prints the search's time
        self.progress = Progress(
            TextColumn("evaluations"),
            BarColumn(bar_width=10),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[best]}"),
            console=console,
        )
        self.task = self.progress.add_task(
            "search", total=problem.evaluations, completed=problem.used, best=self._best()
        )

    def _best(self) -> str:
        best = self.problem.best
        if best is None:
            return "none within budget yet"
        value = abs(self.problem.value(best))  # the metric itself, where the search maximises its negative
        return f"best {self.problem.metric} {value:.4f} at latency {best.latency:.3f}"

    def __call__(self, outcome: Outcome, improved: bool) -> None:
        """Count ``outcome``; redraw the best when it improved."""
        fields = {"best": self._best()} if improved else {}
        self.progress.update(self.task, completed=self.problem.used, total=self.problem.evaluations, **fields)

    def __enter__(self) -> SearchProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.progress.stop()
