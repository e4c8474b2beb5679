"""Training-time augmentation of in-memory batches: random flips and shifted crops."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from rlprune.config import is_integer
from rlprune.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Random flips and crops of a batch, drawn per sample (``data.augment``).

    Attributes:
        flip: mirror each sample along its last axis with probability 0.5.
        crop_padding: pad each spatial axis by this many zeros on both sides, then crop back
            to the original size at a random offset (CIFAR's usual recipe is 4 with flips).
    """

    flip: bool = False
    crop_padding: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Augment:
        """From a ``data.augment`` mapping (``None``: no augmentation)."""
        cfg = dict(cfg or {})
        flip, padding = cfg.pop("flip", False), cfg.pop("crop_padding", 0)
        if cfg:
            raise ConfigError(f"data.augment has unknown key(s) {sorted(cfg)}; it takes flip, crop_padding")
        if not isinstance(flip, bool):
            raise ConfigError(f"data.augment.flip must be true or false, got {flip!r}")
        if not is_integer(padding) or padding < 0:
            raise ConfigError(f"data.augment.crop_padding must be an integer >= 0, got {padding!r}")
        return cls(flip, padding)

    @property
    def active(self) -> bool:
        """Whether it changes anything."""
        return self.flip or self.crop_padding > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An augmented copy of the batch ``x`` (``N x C x *spatial``)."""
        if self.crop_padding:
            x = self._crop(x, generator)
        if self.flip:
            mirror = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
            x = torch.where(mirror.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
        return x

    def _crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p, spatial = self.crop_padding, x.shape[2:]
        padded = F.pad(x, [p] * (2 * len(spatial)))
        for axis, size in enumerate(spatial, start=2):  # one random offset per sample and axis
            offsets = torch.randint(0, 2 * p + 1, (len(x),), generator=generator)
            shape = [len(x)] + [1] * (padded.dim() - 1)
            shape[axis] = size
            index = (offsets[:, None] + torch.arange(size)).view(shape).to(x.device)
            index = index.expand(*padded.shape[:axis], size, *padded.shape[axis + 1 :])
            padded = padded.gather(axis, index)
        return padded
