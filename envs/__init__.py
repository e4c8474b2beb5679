"""The search environment ``rlprune/Prune-v0`` and the pieces it is built from.

``gym.make("rlprune/Prune-v0")`` builds the default problem of ``python -m rlprune``
(``overrides=[...]`` changes it) or wraps ``problem=`` and ``sensitivity=``: see
:mod:`rlprune.envs.default`.
"""

import gymnasium as gym
from rlprune.envs.evaluator import PolicyEvaluator
from rlprune.envs.problem import Outcome, SearchProblem
from rlprune.envs.prune_env import PruneEnv
from rlprune.envs.space import SearchSpace, SpaceSettings, build_space

__all__ = [
    "ENV_ID",
    "Outcome",
    "PolicyEvaluator",
    "PruneEnv",
    "SearchProblem",
    "SearchSpace",
    "SpaceSettings",
    "build_space",
]

ENV_ID = "rlprune/Prune-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="rlprune.envs.default:make_env")
