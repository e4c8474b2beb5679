"""The progress bars: a search's evaluations with the best policy so far, a training's steps."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from rlprune.agents import EvolutionSearch, RandomSearch

from rlprune.progress import SearchProgress, TrainingProgress
from tests.support import make_env


def _final_line(searcher, metric: str = "accuracy") -> tuple[str, object]:
    env = make_env(evaluations=24, metric=metric)
    out = io.StringIO()
    with SearchProgress(env.problem, Console(file=out, width=80, force_terminal=False)):
        searcher.search(env, seed=0)
    assert not env.problem.listeners  # the bar listens while it is shown only
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


def test_the_training_bar_counts_every_step_and_shows_the_smoothed_loss():
    from rlprune.models import MNIST1DCNN
    from rlprune.training import TrainSettings, train

    torch.manual_seed(0)
    x, y = torch.randn(50, 1, 40), torch.randint(0, 10, (50,))
    losses = []
    out = io.StringIO()
    with TrainingProgress("dense model", 3 * 4, Console(file=out, width=80, force_terminal=False)) as bar:

        def progress(step: int, loss: float) -> None:
            losses.append(loss)
            bar(step, loss)

        train(MNIST1DCNN(), x, y, TrainSettings(epochs=3, batch_size=16), 0, progress=progress)
    smoothed = losses[0]
    for loss in losses[1:]:
        smoothed = 0.95 * smoothed + 0.05 * loss
    line = out.getvalue().strip().splitlines()[-1]
    assert len(losses) == 12 and "dense model steps" in line and "12/12" in line
    assert f"loss {smoothed:.4g}" in line
