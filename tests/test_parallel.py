"""``agent.n_envs``: SB3 agents playing several envs in worker processes, counted as one search."""

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rlprune.agents import make_searcher
from rlprune.agents.evolution import wall_projection
from rlprune.envs import evaluator as evaluator_module
from rlprune.envs import parallel
from rlprune.envs.parallel import parallel_envs

from rlprune.errors import ConfigError, RlpruneError
from tests.support import compose_config, make_env, record


def _agent(name: str, n_envs: int) -> dict:
    from omegaconf import OmegaConf

    agent = OmegaConf.to_container(compose_config(f"agent={name}").agent, resolve=True)
    # the agent spends every evaluation (no refine step): the counting under test is the workers'
    return {**agent, "n_envs": n_envs} | ({"refine": 0.0} if "refine" in agent else {})


@pytest.mark.parametrize("name", ["ppo", pytest.param("sac", marks=pytest.mark.slow)])
def test_parallel_envs_spend_exactly_the_evaluations_of_one_search(name):
    # 21 is odd: the last step of two workers ends two episodes, and only one may count
    env = make_env(budget=0.4, evaluations=21, samples=16)
    outcomes = record(env)
    make_searcher(_agent(name, n_envs=2)).search(env, seed=0)
    assert env.problem.used == 21
    assert [o.episode for o in outcomes] == list(range(1, 22))
    assert all(o.latency <= 0.4 + 1e-9 for o in outcomes)
    assert env.problem.best == max(outcomes, key=env.problem.value)
    assert multiprocessing.active_children() == []  # the workers were closed


@pytest.mark.slow
def test_parallel_envs_are_deterministic_per_seed():
    found = []
    for _ in range(2):
        env = make_env(budget=0.4, evaluations=12, samples=16)
        outcomes = record(env)
        make_searcher(_agent("ppo", n_envs=2)).search(env, seed=3)
        found.append([o.policy for o in outcomes])
    assert found[0] == found[1]


def test_the_refine_after_parallel_envs_spends_exactly_the_evaluations_and_closes_the_workers():
    env = make_env(budget=0.4, evaluations=60, samples=16)
    outcomes = record(env)
    make_searcher({**_agent("ppo", n_envs=2), "refine": 0.5}).search(env, seed=0)
    assert env.problem.used == 60
    assert [o.episode for o in outcomes] == list(range(1, len(outcomes) + 1))
    assert any(o.fidelity < 1 for o in outcomes)  # the evolution's staged scores were spent
    assert multiprocessing.active_children() == [] and env.problem.pool is None


def test_workers_score_a_batch_as_the_lead_scores_it_alone():
    rng = np.random.default_rng(0)
    alone, shared = make_env(budget=0.4, samples=16), make_env(budget=0.4, samples=16)
    limit = alone.space.absolute_budget(0.4)
    batch = [wall_projection(alone.space, limit, rng) for _ in range(5)]
    workers = parallel_envs(shared, 2)
    try:
        assert shared.problem.pool is not None
        for samples in (8, None):
            expected = [alone.problem.score(p, samples=samples) for p in batch]
            found = shared.problem.score_many(batch, samples=samples)
            # the workers run one torch thread, the lead more: sums may end in other last bits
            assert [replace(o, loss=0.0) for o in found] == [replace(o, loss=0.0) for o in expected]
            assert [o.loss for o in found] == pytest.approx([o.loss for o in expected], rel=1e-6)
    finally:
        workers.close()
    assert shared.problem.pool is None
    assert shared.problem.used == alone.problem.used == 5 * (8 / 16) + 5


def test_the_lead_sends_each_policy_to_the_workers_once():
    rng = np.random.default_rng(1)
    env = make_env(budget=0.4, samples=16)
    limit = env.space.absolute_budget(0.4)
    a, b, c = (wall_projection(env.space, limit, rng) for _ in range(3))
    env.problem.score(c)  # known to the lead: it scored it itself
    workers = parallel_envs(env, 2)
    sent, score_on_workers = [], workers._score_on_workers

    def spy(policies, samples):
        sent.append(policies)
        return score_on_workers(policies, samples)

    workers._score_on_workers = spy
    try:
        first = env.problem.score_many([a, b, a, c])
        again = env.problem.score_many([a, b, a, c])
        workers.reset()  # an episode a worker plays is remembered too
        for _ in env.space.shapes:
            *_, infos = workers.step(np.zeros((2, env.action_size), dtype=np.float32))
        played = [env.space.picks_of(info["outcome"].policy) for info in infos]
        env.problem.score_many(played)
    finally:
        workers.close()
    assert sent == [[env.space.policy(a), env.space.policy(b)]]
    assert first[0].accuracy == first[2].accuracy and first[3].accuracy == again[3].accuracy
    assert [o.accuracy for o in again] == [o.accuracy for o in first]
    assert env.problem.used == 1 + 8 + 2 + 2  # c, the two batches, the episodes, their scores again


def test_workers_share_their_episodes_scores_and_the_lead_counts_their_forward_passes():
    env = make_env(budget=0.4, samples=16)
    before = env.problem.evaluator.forward_passes
    sparse, dense = np.full(env.action_size, -0.5), np.full(env.action_size, 0.5)
    workers = parallel_envs(env, 2)
    played = []
    try:
        for actions in ([sparse, dense], [dense, sparse]):  # the second episode swaps the workers' policies
            workers.reset()
            for _ in env.space.shapes:
                *_, infos = workers.step(np.array(actions, dtype=np.float32))
            played.append([info["outcome"].policy for info in infos])
        passes = workers.env_method("forward_passes")
    finally:
        workers.close()
    assert played[0][0] != played[0][1] and played[1] == played[0][::-1]
    assert passes == [1, 1]  # each scored its first episode only: the other's came with the second
    assert env.problem.evaluator.forward_passes == before + 2  # the report counts the workers' passes
    assert env.problem.used == 4


def test_evolution_in_parallel_finds_the_policies_of_one_process(monkeypatch):
    lead, in_lead = os.getpid(), [0]
    evaluate = evaluator_module.evaluate

    def counted(*args, **kwargs):  # the lead's own forward passes: the workers' count in their processes
        in_lead[0] += os.getpid() == lead
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluator_module, "evaluate", counted)
    found, passes, lead_passes = [], [], []
    for n_envs in (1, 2):
        env = make_env(budget=0.4, evaluations=30, samples=16)
        outcomes = record(env)
        before, in_lead[0] = env.problem.evaluator.forward_passes, 0
        make_searcher(_agent("evolution", n_envs=n_envs)).search(env, seed=0)
        assert env.problem.used == 30 and multiprocessing.active_children() == []
        found.append([(o.policy, o.fidelity, o.accuracy) for o in outcomes])
        passes.append(env.problem.evaluator.forward_passes - before)
        lead_passes.append(in_lead[0])
    assert found[0] == found[1]
    assert passes[0] == passes[1] == lead_passes[0]  # the workers' passes are counted in the lead's evaluator
    assert lead_passes[1] < lead_passes[0] / 2  # the workers scored the stages' offspring
    assert any(fidelity < 1 for _, fidelity, _ in found[1])


@pytest.mark.parametrize("during", ["batch", "step"])
def test_workers_close_after_ctrl_c_during_a_batch_or_a_step(during):
    env = make_env(budget=0.4, samples=16)
    rng, limit = np.random.default_rng(0), env.space.absolute_budget(0.4)
    batch = [wall_projection(env.space, limit, rng) for _ in range(4)]
    before = env.problem.evaluator.forward_passes
    workers = parallel_envs(env, 2)
    answered = workers._answered

    def interrupted(remotes):  # Ctrl-C reaches the lead while the workers score
        workers._answered = answered
        raise KeyboardInterrupt

    workers._answered = interrupted
    with pytest.raises(KeyboardInterrupt):
        if during == "batch":
            env.problem.score_many(batch)
        else:
            workers.reset()
            workers.step(np.zeros((2, env.action_size), dtype=np.float32))
    workers.close()  # reads the answers the workers still owe before it asks for their passes
    assert multiprocessing.active_children() == []
    distinct = len({env.space.policy(picks) for picks in batch})
    assert env.problem.evaluator.forward_passes == before + (distinct if during == "batch" else 0)


@pytest.mark.slow  # two fresh interpreters import torch
def test_workers_started_fresh_as_on_a_gpu_find_what_forked_workers_find(monkeypatch):
    # CUDA cannot be forked: GPU workers start in a fresh interpreter and rebuild the env from pickles
    found = []
    for method in ("fork", "spawn"):
        monkeypatch.setattr(parallel, "start_method", lambda device, method=method: method)
        env = make_env(budget=0.4, evaluations=30, samples=16)
        outcomes = record(env)
        make_searcher({**_agent("ppo", n_envs=2), "refine": 0.3}).search(env, seed=0)
        assert env.problem.used == 30 and multiprocessing.active_children() == []
        found.append([(o.policy, o.fidelity, o.accuracy) for o in outcomes])
    assert found[0] == found[1]
    assert any(fidelity < 1 for _, fidelity, _ in found[1])  # the refine's batches went to the workers


def test_workers_leave_ctrl_c_to_the_lead_and_a_killed_worker_closes_quietly():
    env = make_env(budget=0.4, samples=16)
    workers = parallel_envs(env, 2)
    first, second = workers.venv.processes
    os.kill(first.pid, signal.SIGINT)  # Ctrl-C reaches every process of the group
    workers.reset()
    actions = np.zeros((2, env.action_size), dtype=np.float32)
    workers.step(actions)  # both still play
    os.kill(second.pid, signal.SIGSTOP)  # so it cannot answer the next step before it is killed
    workers.step_async(actions)  # the lead waits on both when one dies
    os.kill(second.pid, signal.SIGKILL)
    second.join()
    with pytest.raises(RlpruneError, match=f"worker process \\(pid {second.pid}\\) ended.*agent.n_envs"):
        workers.step_wait()
    workers.close()  # no error of its own
    assert multiprocessing.active_children() == [] and env.problem.pool is None


@pytest.mark.skipif(sys.platform != "linux", reason="workers die with their lead through Linux's prctl")
def test_workers_end_with_a_killed_lead(tmp_path):
    lead = (
        "import os, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from rlprune.envs.parallel import parallel_envs\n"
        "from tests.support import make_env\n"
        "workers = parallel_envs(make_env(budget=0.4, samples=16), 2)\n"
        "print(*(p.pid for p in workers.venv.processes), flush=True)\n"
        "time.sleep(60)\n"
    )
    root = str(Path(__file__).parents[1])
    process = subprocess.Popen([sys.executable, "-c", lead, root], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in process.stdout.readline().split()]
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie has ended


@pytest.fixture
def nan_workers():
    """An env whose network's weights are NaN, and two workers forked from it (they see the NaN)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("the NaN weights reach forked workers only")
    env = make_env(budget=0.4, samples=16)
    with torch.no_grad():
        next(env.problem.evaluator.model.parameters()).fill_(float("nan"))
    workers = parallel_envs(env, 2)
    yield env, workers
    workers.close()
    assert multiprocessing.active_children() == []


def test_a_workers_error_in_a_batch_is_raised_in_the_lead(nan_workers):
    env, _ = nan_workers
    rng, limit = np.random.default_rng(0), env.space.absolute_budget(0.4)
    with pytest.raises(RlpruneError, match="loss is nan"):
        env.problem.score_many([wall_projection(env.space, limit, rng) for _ in range(4)])


def test_a_workers_error_in_an_episode_is_raised_in_the_lead_as_it_is(nan_workers):
    env, workers = nan_workers
    workers.reset()
    actions = np.zeros((2, env.action_size), dtype=np.float32)
    for _ in env.space.shapes[:-1]:
        workers.step(actions)
    with pytest.raises(RlpruneError, match="loss is nan"):
        workers.step(actions)  # the last step scores the episodes
    assert all(process.is_alive() for process in workers.venv.processes)


def test_an_evaluator_pickles_as_its_arguments_and_scores_the_same():
    env = make_env(budget=0.4, samples=16)
    space, evaluator = env.space, env.problem.evaluator
    policy = space.policy([(0, 0)] * len(space))
    twin = pickle.loads(pickle.dumps(evaluator))
    assert twin is not evaluator and twin.model is not evaluator.model
    assert twin(policy) == evaluator(policy)


@pytest.mark.parametrize(
    ("agent", "needle"),
    [
        ({"name": "tpe", "n_envs": 2}, "needs a stable-baselines3 agent .* or evolution"),
        ({"name": "haq", "n_envs": 2}, "needs a stable-baselines3 agent"),
        ({"name": "ppo", "n_envs": 0}, "an integer >= 1"),
    ],
)
def test_n_envs_that_cannot_run_is_refused_naming_the_key(agent, needle):
    with pytest.raises(ConfigError, match=f"agent.n_envs.*{needle}"):
        make_searcher(agent)
