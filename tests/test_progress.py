"""The search's progress bar: every searcher's evaluations and the best policy so far."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rlprune.agents import EvolutionSearch, RandomSearch
from rlprune.envs.progress import SearchProgress
from tests.support import make_env


def _final_line(searcher, metric: str = "accuracy") -> tuple[str, object]:
    env = make_env(evaluations=24, metric=metric)
    out = io.StringIO()
    bar = SearchProgress(env.problem, Console(file=out, width=80, force_terminal=False))
    env.problem.listeners.append(bar)
    with bar:
        searcher.search(env, seed=0)
    return out.getvalue().strip().splitlines()[-1], env.problem


@pytest.mark.parametrize("searcher", [RandomSearch(), EvolutionSearch()], ids=["random", "evolution"])
def test_the_bar_ends_at_the_evaluations_spent_with_the_best_policy(searcher):
    line, problem = _final_line(searcher)
    assert problem.exhausted and f"{problem.used}/{problem.evaluations}" in line
    best = problem.best
    assert f"best accuracy {best.accuracy:.4f} at latency {best.latency:.3f}" in line
    assert len(line) <= 80


def test_a_loss_search_shows_the_loss_not_its_negative():
    line, problem = _final_line(RandomSearch(), metric="loss")
    assert f"best loss {problem.best.loss:.4f}" in line


def test_a_search_with_nothing_within_budget_yet_says_so():
    env = make_env(evaluations=24)
    out = io.StringIO()
    with SearchProgress(env.problem, Console(file=out, width=80, force_terminal=False)):
        pass
    assert "0/24" in out.getvalue() and "none within budget yet" in out.getvalue()
