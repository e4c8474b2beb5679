"""Parallel search envs: SB3's ``SubprocVecEnv``, one process and one copy of the network per env.

Each worker plays its own episodes and scores their policies on its own copy of the reward
split; the lead process counts every finished episode in the one :class:`SearchProblem`
(:class:`RecordOutcomes`), so the evaluations spent, the best policy, the checkpoints and the
trackers stay exactly where they are with one env. Episodes have one step per searched layer,
so all workers finish theirs on the same step: when fewer evaluations are left than workers,
the surplus outcomes of that last step are discarded, never counted and never kept as best.

While the workers run they also score batches of policies for the lead
(:attr:`SearchProblem.pool`, :meth:`SearchProblem.score_many`): an evolution that refines an
agent's best policy, or the evolution searcher, scores its offspring on all of them at once.
The lead remembers every score a worker hands back, so no policy is sent to be scored twice, and
hands each worker the scores of the others' episodes, so none plays a policy another scored.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import connection
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from rlprune.envs.problem import SearchProblem
from rlprune.envs.prune_env import PruneEnv
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from rlprune.errors import RlpruneError
from rlprune.policy import Policy
from rlprune.training import Score

PR_SET_PDEATHSIG = 1  # Linux prctl: the signal a process gets when its parent dies


def worker_devices(device: torch.device, n_envs: int) -> list[torch.device]:
    """The device of each worker: the GPUs in turn when ``device`` is CUDA and there are several."""
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i % torch.cuda.device_count()) for i in range(n_envs)]
    return [device] * n_envs


def start_method(device: torch.device) -> str | None:
    """How worker processes start: ``fork`` on the CPU, SB3's default (forkserver or spawn) else.

    A forked worker starts at once with the lead's network, masks and scores already in memory
    (shared until written); a fresh interpreter spends seconds importing torch and rebuilding
    them. CUDA cannot be used in a forked child, so GPU searches keep the default.
    """
    return "fork" if device.type == "cpu" and "fork" in multiprocessing.get_all_start_methods() else None


class ScoringWorker(gym.Wrapper):
    """A worker's env, which also scores its share of a batch of policies for the lead.

    Args:
        env: the worker's env (a :class:`PruneEnv`, maybe wrapped).
        index: the worker's position among ``count`` workers: its share is every ``count``-th
            policy from ``index`` on.
    """

    def __init__(self, env: gym.Env, index: int, count: int) -> None:
        super().__init__(env)
        self.index, self.count = index, count
        self.evaluator = env.unwrapped.problem.evaluator

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """The env's step; an error (a non-finite loss, the GPU out of memory) ends the episode
        and is handed back in ``info["error"]`` for the lead to raise as it is: a worker that
        raises dies, and its pipe only says that it did."""
        try:
            return self.env.step(action)
        except Exception as error:
            blank = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)
            return blank, 0.0, True, False, {"error": error}

    def score_share(self, policies: list[Policy], samples: int | None) -> list[Score | Exception]:
        """The scores of this worker's share of ``policies``; an error is handed back, not raised,
        so the lead raises it as it is (a worker that raises dies, and its pipe only says so)."""
        try:
            return [self.evaluator(p, samples) for p in policies[self.index :: self.count]]
        except Exception as error:  # a non-finite loss, the GPU out of memory
            return [error]

    def forward_passes(self) -> int:
        """The forward passes this worker's evaluator ran: its share of the search's."""
        return self.evaluator.forward_passes

    def remember(self, scores: list[tuple[Policy, int, Score]]) -> None:
        """Memoize the ``(policy, samples, score)`` that other workers found, so this worker's
        episodes do not score those policies again."""
        for policy, samples, score in scores:
            self.evaluator.remember(policy, samples, score)


def worker_env(
    env: PruneEnv, device: torch.device, threads: int, index: int, count: int
) -> Callable[[], gym.Env]:
    """A factory of ``env``'s twin for a worker process (picklable for a fresh interpreter): its
    own problem and network.

    The worker's problem has no listeners and no evaluation limit of its own; the lead
    process's problem does the counting.
    """
    problem = env.problem
    space, evaluator, budget, metric = problem.space, problem.evaluator, problem.budget, problem.metric
    sensitivity, momentum, wall, budgets = env.sensitivity, env.baseline_momentum, env.wall, env.budgets

    def make() -> gym.Env:
        torch.set_num_threads(threads)  # the workers share the cores
        # Ctrl-C reaches the whole process group: the lead alone handles it, and closes the workers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if sys.platform == "linux":  # a forked worker outlives a killed lead: its siblings hold its pipe
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        local = SearchProblem(space, evaluator.to(device), budget, sys.maxsize, metric)
        local.evaluator.forward_passes = 0  # a forked worker starts with the lead's count
        return ScoringWorker(Monitor(PruneEnv(local, sensitivity, momentum, wall, budgets)), index, count)

    return make


class RecordOutcomes(VecEnvWrapper):
    """Records each worker's finished episode in the lead process's :class:`SearchProblem`,
    and scores the lead's batches of policies on the workers until it is closed.

    The outcome in a finished step's ``info`` is replaced by the recorded one (numbered in the
    search); once the evaluations are spent, further outcomes are dropped from ``info``.
    """

    def __init__(self, venv: SubprocVecEnv, problem: SearchProblem) -> None:
        super().__init__(venv)
        self.venv: SubprocVecEnv = venv
        self.problem = problem
        self._owing: list[connection.Connection] = []  # workers whose answer to a call is unread
        problem.pool = self.score

    def reset(self) -> VecEnvObs:
        """Reset every worker."""
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        """Step every worker; count the episodes that ended."""
        self._answered(self.venv.remotes)
        observations, rewards, dones, infos = self.venv.step_wait()
        evaluator = self.problem.evaluator
        found: list[list[tuple[Policy, int, Score]]] = [[] for _ in infos]
        for info, scores in zip(infos, found, strict=True):
            outcome = info.pop("outcome", None)
            if outcome is None:
                continue
            samples = round(outcome.fidelity * evaluator.samples)
            scores.append((outcome.policy, samples, Score(outcome.accuracy, outcome.loss, outcome.kl)))
            evaluator.remember(*scores[-1])
            if not self.problem.exhausted:
                info["outcome"] = self.problem.record(outcome)
        for info in infos:  # after the others' outcomes are counted: the search ends here
            if "error" in info:
                raise info["error"]
        if any(found) and not self.problem.exhausted:
            self._share(found)
        return observations, rewards, dones, infos

    def _share(self, found: list[list[tuple[Policy, int, Score]]]) -> None:
        """Hand each worker the scores the others found in this step: workers converging on the
        same policies would otherwise each score them."""
        others = [
            [score for j, scores in enumerate(found) if j != i for score in scores] for i in range(len(found))
        ]
        self._call("remember", [(scores,) for scores in others])

    def score(self, policies: list[Policy], samples: int | None) -> list[Score]:
        """The scores of ``policies`` on the first ``samples`` of the reward split: from the lead's
        memo where it has them (scored by the lead, or by a worker before), the others split
        between the workers, each scored once.

        Raises:
            Exception: the first error a worker met, as it met it (:class:`RlpruneError` for a
                policy whose loss is not finite).
        """
        evaluator = self.problem.evaluator
        known = [evaluator.remembered(p, samples) for p in policies]
        fresh = list(dict.fromkeys(p for p, score in zip(policies, known, strict=True) if score is None))
        found = dict(zip(fresh, self._score_on_workers(fresh, samples) if fresh else [], strict=True))
        for policy, score in found.items():
            evaluator.remember(policy, samples, score)
        return [found[p] if score is None else score for p, score in zip(policies, known, strict=True)]

    def _score_on_workers(self, policies: list[Policy], samples: int | None) -> list[Score]:
        """The scores of ``policies``, each worker scoring every ``count``-th of them."""
        shares = self._call("score_share", [(policies, samples)] * len(self.venv.remotes))
        scores: list[Any] = [None] * len(policies)
        for index, share in enumerate(shares):
            if share and isinstance(share[0], Exception):
                raise share[0]
            scores[index :: len(shares)] = share
        return scores

    def _call(self, method: str, arguments: list[tuple]) -> list[Any]:
        """Each worker's answer to ``method`` called with its own ``arguments``: SubprocVecEnv's
        ``env_method``, with a wait that sees a worker die."""
        for remote, args in zip(self.venv.remotes, arguments, strict=True):
            remote.send(("env_method", (method, args, {})))
            self._owing.append(remote)
        return self._receive()

    def _receive(self) -> list[Any]:
        """The answers the workers owe, in their order."""
        self._answered(self._owing)
        answers = []
        while self._owing:
            answers.append(self._owing[0].recv())
            del self._owing[0]
        return answers

    def _answered(self, remotes: list[connection.Connection]) -> None:
        """Wait until every worker of ``remotes`` has answered.

        A forked worker's pipe stays open in the workers forked before it, so a plain read
        would wait forever on a worker that died; this wait also sees it end.

        Raises:
            RlpruneError: naming the worker that ended before it answered.
        """
        processes = dict(zip(self.venv.remotes, self.venv.processes, strict=True))
        waiting = {remote: processes[remote] for remote in remotes}
        while waiting:
            ready = connection.wait([*waiting, *(process.sentinel for process in waiting.values())])
            for remote, process in list(waiting.items()):
                if remote in ready:
                    del waiting[remote]
                elif process.sentinel in ready:
                    raise RlpruneError(
                        f"a parallel env's worker process (pid {process.pid}) ended with exit code "
                        f"{process.exitcode} (killed, or out of memory?); the best policy so far is in the "
                        "run folder: run with fewer agent.n_envs, or agent.n_envs=1"
                    )

    def close(self) -> None:
        """Stop the workers; the lead scores alone again, and counts their forward passes as its
        own (the report's). When a worker died, the others are ended without an error of their
        own, so the error that ends a search stays its own."""
        self.problem.pool = None
        try:
            if self.venv.waiting:  # a step interrupted (Ctrl-C): its answers come first
                self._owing, self.venv.waiting = list(self.venv.remotes), False
            self._receive()  # and those of a call interrupted
            passes = self._call("forward_passes", [()] * len(self.venv.remotes))
            self.problem.evaluator.forward_passes += sum(passes)
            self.venv.close()
        except (RlpruneError, EOFError, OSError):
            for process in self.venv.processes:
                process.terminate()
                process.join()
            self.venv.closed = True


@contextmanager
def one_lead_thread() -> Iterator[None]:
    """The lead process on one torch thread meanwhile: while workers play, the lead only picks
    actions, and its idle threads would spin on the cores the workers score on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def parallel_envs(env: PruneEnv, n_envs: int) -> VecEnv:
    """``n_envs`` worker processes playing ``env``'s search, counted in ``env.problem``.

    Workers run on the evaluator's device (CUDA: one GPU each, in turn, when there are several)
    and split the lead process's torch threads between them.
    """
    device = next(env.problem.evaluator.model.parameters()).device
    threads = max(1, torch.get_num_threads() // n_envs)
    factories = [worker_env(env, d, threads, i, n_envs) for i, d in enumerate(worker_devices(device, n_envs))]
    return RecordOutcomes(SubprocVecEnv(factories, start_method=start_method(device)), env.problem)
