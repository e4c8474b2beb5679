"""Parallel search envs: SB3's ``SubprocVecEnv``, one process and one copy of the network per env.

Each worker plays its own episodes and scores their policies on its own copy of the reward
split; the lead process counts every finished episode in the one :class:`SearchProblem`
(:class:`RecordOutcomes`), so the evaluations spent, the best policy, the checkpoints and the
trackers stay exactly where they are with one env. Episodes have one step per searched layer,
so all workers finish theirs on the same step: when fewer evaluations are left than workers,
the surplus outcomes of that last step are discarded, never counted and never kept as best.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import gymnasium as gym
import torch
from rlprune.envs.problem import SearchProblem
from rlprune.envs.prune_env import PruneEnv
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


def worker_devices(device: torch.device, n_envs: int) -> list[torch.device]:
    """The device of each worker: the GPUs in turn when ``device`` is CUDA and there are several."""
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i % torch.cuda.device_count()) for i in range(n_envs)]
    return [device] * n_envs


def worker_env(env: PruneEnv, device: torch.device, threads: int) -> Callable[[], gym.Env]:
    """A picklable factory of ``env``'s twin for a worker process: its own problem and network.

    The worker's problem has no listeners and no evaluation limit of its own; the lead
    process's problem does the counting.
    """
    problem = env.problem
    space, evaluator, budget, metric = problem.space, problem.evaluator, problem.budget, problem.metric
    sensitivity, momentum, wall, budgets = env.sensitivity, env.baseline_momentum, env.wall, env.budgets

    def make() -> gym.Env:
        torch.set_num_threads(threads)  # the workers share the cores
        local = SearchProblem(space, evaluator.to(device), budget, sys.maxsize, metric)
        return Monitor(PruneEnv(local, sensitivity, momentum, wall, budgets))

    return make


class RecordOutcomes(VecEnvWrapper):
    """Records each worker's finished episode in the lead process's :class:`SearchProblem`.

    The outcome in a finished step's ``info`` is replaced by the recorded one (numbered in the
    search); once the evaluations are spent, further outcomes are dropped from ``info``.
    """

    def __init__(self, venv: VecEnv, problem: SearchProblem) -> None:
        super().__init__(venv)
        self.problem = problem

    def reset(self) -> VecEnvObs:
        """Reset every worker."""
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        """Step every worker; count the episodes that ended."""
        observations, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            outcome = info.pop("outcome", None)
            if outcome is not None and not self.problem.exhausted:
                info["outcome"] = self.problem.record(outcome)
        return observations, rewards, dones, infos


def parallel_envs(env: PruneEnv, n_envs: int) -> VecEnv:
    """``n_envs`` worker processes playing ``env``'s search, counted in ``env.problem``.

    Workers run on the evaluator's device (CUDA: one GPU each, in turn, when there are several)
    and split the lead process's torch threads between them.
    """
    device = next(env.problem.evaluator.model.parameters()).device
    threads = max(1, torch.get_num_threads() // n_envs)
    factories = [worker_env(env, d, threads) for d in worker_devices(device, n_envs)]
    return RecordOutcomes(SubprocVecEnv(factories), env.problem)
