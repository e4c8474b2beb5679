"""How each finetune schedule recovers one policy (docs/benchmarks.md, "Finetune schedules").

On one target, one policy: a run's ``policy.yaml`` (``--policy``), one choice for every searched
layer (``--every nm:2:4:4``: pattern, keep, group, weight bits, activation bits), or by default
every layer whose filters can be pruned on their own keeping ``--keep`` of them, at the top
bit-width the hardware runs (for ResNet-20: each block's ``conv1``). It is finetuned under each of
``--modes`` (:data:`MODES`: Hydra overrides of the ``finetune`` node) for each of ``--seeds``.
Reported side by side: the test accuracy of the finetuned network and of its export (the
filters removed for real), and how many layers ended on other units than they started with
(SAD > 0).

    python -m rlprune.bench finetune --overrides model=resnet20 data=digits --seeds 0 1
    python -m rlprune.bench finetune --every nm:2:4:4 --modes plain reconstruct --seeds 0 \
        --overrides model=tiny_lm data=text finetune.epochs=0
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from rlprune.bench import QUIET, finetune_settings, load, machine
from rlprune.config import compose_config
from rlprune.errors import ConfigError
from rlprune.io import write_json_atomic
from rlprune.layers import FilterCoupling, LayerInfo
from rlprune.policy import Choice, Pattern, Policy

if TYPE_CHECKING:
    from rlprune.api import Target

MODES: dict[str, list[str]] = {
    "plain": [],
    "srste": ["finetune.srste.decay=2e-4", "finetune.srste.refresh_steps=5"],
    "gap2": ["finetune.gap.partitions=2"],
    "gap1": ["finetune.gap.partitions=1"],
    "learned_filter": ["finetune.mask=learned", "finetune.granularity=filter"],
    "reconstruct": ["finetune.reconstruct=true"],
    "distill": ["finetune.distill.weight=0.5"],
    "distill_only": ["finetune.distill.weight=1.0"],
}
"""The finetune schedules a run can ask for, by name: plain masked training, SR-STE with mask
refresh, grow-and-prune over two partitions and over one, learned (Gumbel) filter masks,
plain training after the kept weights are re-fit to each layer's dense output, and training
towards the dense network's outputs: half the loss (``distill``) or all of it (``distill_only``)."""


def filter_policy(
    layers: Sequence[LayerInfo], couplings: Mapping[str, FilterCoupling], keep: float, bits: int
) -> Policy:
    """Every layer whose filters can be pruned on their own keeps ``keep`` of them (at least one)."""
    choices = {
        layer.name: Choice(
            Pattern.FILTER, max(1, round(keep * layer.out_channels)), layer.out_channels, bits, bits
        )
        for layer in layers
        if layer.name in couplings and not couplings[layer.name].blocked
    }
    return Policy.of(choices)


def every_layer_choice(text: str) -> Choice:
    """The choice of ``--every``: ``PATTERN:KEEP:GROUP[:W_BITS[:A_BITS]]`` (bits float unless given).

    Raises:
        argparse.ArgumentTypeError: when ``text`` is not of that form, or names no valid choice.
    """
    pattern, *numbers = text.split(":")
    if not 2 <= len(numbers) <= 4 or not all(n.isdigit() for n in numbers):
        form = "PATTERN:KEEP:GROUP[:W_BITS[:A_BITS]], e.g. nm:2:4:4"
        raise argparse.ArgumentTypeError(f"{text!r}: expected {form}")
    try:
        return Choice(pattern, *map(int, numbers))
    except ConfigError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def run_mode(
    cfg: DictConfig, target: Target, policy: Policy, couplings: Mapping[str, FilterCoupling], seed: int
) -> dict[str, Any]:
    """One finetune of ``policy`` under ``cfg``'s finetune node: test accuracies and moved layers."""
    from rlprune.api import finetune_target, test_score
    from rlprune.compress import bake
    from rlprune.export import export_filter_pruned

    splits = target.splits
    start = time.perf_counter()
    tuned = finetune_target(cfg, target, policy, couplings, finetune_settings(cfg), seed)
    seconds = time.perf_counter() - start
    exported = export_filter_pruned(bake(tuned.model), tuned.policy, splits.train_x[:2])
    score = test_score(tuned.model, splits)
    return {
        "seed": seed,
        "test_accuracy": score.accuracy,
        "test_loss": score.loss,
        "exported_test_accuracy": test_score(exported, splits).accuracy,
        "moved_layers": sum(row.get("sad", 0) > 0 for row in tuned.metrics.values()),
        "seconds": seconds,
    }


def measure(
    overrides: list[str],
    modes: list[str],
    seeds: list[int],
    keep: float,
    policy_path: Path | None,
    every: Choice | None = None,
) -> dict[str, Any]:
    """Every mode's finetunes of one policy on the target of ``overrides``."""
    from rlprune.finish import read_policy
    from rlprune.layers import filter_couplings

    cfg = compose_config([*QUIET, *overrides])
    target, hardware = load(cfg)
    couplings = filter_couplings(target.model, target.splits.train_x[:1], target.layers)
    top_bits = max(hardware.bits)
    if policy_path:
        policy = read_policy(policy_path)
    elif every is not None:
        policy = Policy.of({layer.name: every for layer in target.searched})
    else:
        policy = filter_policy(target.searched, couplings, keep, top_bits)
    rows = {}
    for mode in modes:
        mode_cfg = compose_config([*QUIET, *overrides, *MODES[mode]])
        rows[mode] = [run_mode(mode_cfg, target, policy, couplings, seed) for seed in seeds]
    return {
        "overrides": overrides,
        "policy": policy.to_dict(),
        "finetune_epochs": cfg.finetune.epochs,
        "modes": {mode: MODES[mode] for mode in modes},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench finetune", description=__doc__)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--keep", type=float, default=0.5, help="the default policy's share of filters")
    parser.add_argument("--policy", type=Path, default=None, help="a run's policy.yaml instead")
    parser.add_argument(
        "--every", type=every_layer_choice, help="PATTERN:KEEP:GROUP[:W_BITS[:A_BITS]] on every layer instead"
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the target")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.json"))
    args = parser.parse_args(argv)
    results = {
        "benchmark": "finetune",
        "machine": machine(),
        **measure(args.overrides, args.modes, args.seeds, args.keep, args.policy, args.every),
    }
    write_json_atomic(args.out, results)
    print(f"finetune schedules: {len(results['policy'])} layers pruned, {results['finetune_epochs']} epochs")
    print(f"{'mode':<15} {'seed':>4} {'test':>7} {'loss':>7} {'exported':>9} {'moved':>5} {'seconds':>8}")
    for mode, runs in results["rows"].items():
        for run in runs:
            print(
                f"{mode:<15} {run['seed']:>4} {run['test_accuracy']:>7.4f} {run['test_loss']:>7.4f} "
                f"{run['exported_test_accuracy']:>9.4f} {run['moved_layers']:>5} {run['seconds']:>8.1f}"
            )
        mean = statistics.fmean(run["test_accuracy"] for run in runs)
        loss = statistics.fmean(run["test_loss"] for run in runs)
        print(f"{mode:<15} {'mean':>4} {mean:>7.4f} {loss:>7.4f}")
    print(f"\nwritten to {args.out}")
    return results


if __name__ == "__main__":
    main()
