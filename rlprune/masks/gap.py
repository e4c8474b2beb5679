"""The schedule of scheduled grow-and-prune (GaP, Ma et al. 2021); the finetune loop applies it."""

from __future__ import annotations

import itertools

from rlprune.errors import ConfigError


class GapSchedule:
    """Which layers are dense (grown) at each finetune epoch.

    The layers, in forward order, are split into ``partitions`` contiguous partitions of nearly
    equal size (the first ones get one layer more when the split is uneven). Partition
    ``s mod partitions`` is dense during step ``s``, which lasts ``epochs_per_step`` epochs; the
    others stay at their target sparsity. When a step ends, its partition is pruned back to
    target. One round visits every partition once.
    """

    def __init__(self, layer_names: list[str], partitions: int, epochs_per_step: int) -> None:
        if not layer_names:
            raise ConfigError("GaP needs at least one layer")
        if not 1 <= partitions <= len(layer_names):
            raise ConfigError(
                f"GaP partitions must be in [1, {len(layer_names)}] (the layers), got {partitions}"
            )
        if epochs_per_step < 1:
            raise ConfigError(f"GaP epochs_per_step must be >= 1, got {epochs_per_step}")
        size, extra = divmod(len(layer_names), partitions)
        bounds = [p * size + min(p, extra) for p in range(partitions + 1)]
        self.partitions: list[list[str]] = [list(layer_names[a:b]) for a, b in itertools.pairwise(bounds)]
        self.epochs_per_step = epochs_per_step

    def dense_layers(self, epoch: int) -> set[str]:
        """The layers of the partition grown during ``epoch`` (0-based)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        step = epoch // self.epochs_per_step
        return set(self.partitions[step % len(self.partitions)])

    def rounds_epochs(self) -> int:
        """Epochs in one full round, in which every partition is grown once."""
        return len(self.partitions) * self.epochs_per_step
