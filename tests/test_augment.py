"""Training-time augmentation: flips and shifted crops, per sample, seeded, refused when malformed."""

from __future__ import annotations

import pytest
import torch

from rlprune.api import augmentation
from rlprune.data.augment import Augment
from rlprune.errors import ConfigError
from rlprune.training import TrainSettings, train
from tests.support import compose_config


def test_crops_shift_each_sample_within_the_padding():
    x = torch.arange(1, 2 * 3 * 6 * 6 + 1, dtype=torch.float32).view(2, 3, 6, 6)
    out = Augment(crop_padding=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for sample, image in zip(out, x, strict=True):
        # the crop is the padded image at one offset: find it and compare exactly
        padded = torch.nn.functional.pad(image, [2, 2, 2, 2])
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(padded[:, dy : dy + 6, dx : dx + 6], sample)
        ]
        assert len(matches) == 1


def test_flips_mirror_about_half_the_samples_and_sequences_work_too():
    x = torch.randn(400, 1, 40)
    out = Augment(flip=True)(x, torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(o, s.flip(-1)) for o, s in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x, strict=True)])
    assert bool((mirrored | kept).all()) and 150 < int(mirrored.sum()) < 250


def test_same_seed_same_batches():
    x = torch.randn(8, 3, 8, 8)
    a = Augment(True, 1)(x, torch.Generator().manual_seed(3))
    b = Augment(True, 1)(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_configs_build_it_and_bad_values_are_refused():
    assert augmentation(compose_config("data=digits")) is None  # off: nothing to do
    assert augmentation(compose_config("data=cifar10")) == Augment(flip=True, crop_padding=4)
    with pytest.raises(ConfigError, match=r"crop_padding must be an integer >= 0, got -1"):
        augmentation(compose_config("data.augment.crop_padding=-1"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rotate'\]"):
        augmentation(compose_config("+data.augment.rotate=30"))


def test_training_draws_an_augmented_copy_of_every_batch():
    seen = []

    def counting(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(len(batch))
        return Augment(flip=True, crop_padding=1)(batch, generator)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(50, 1, 4, 4), torch.arange(50) % 3
    train(model, x, y, TrainSettings(epochs=2, batch_size=20), seed=0, augment=counting)
    assert seen == [20, 20, 10] * 2
