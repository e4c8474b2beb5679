"""Supervised training and evaluation on in-memory tensors, shared by the dense baseline and finetuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rlprune.device import mixed_precision
from rlprune.errors import RlpruneError


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings: AdamW with a cosine learning-rate decay over all steps."""

    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 128
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class Score:
    """Accuracy in [0, 1] and mean cross-entropy loss on one split (per token for a language
    model); with a reference network's outputs, also the mean KL divergence from them (``None``
    without one)."""

    accuracy: float
    loss: float
    kl: float | None = None


def flat(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, C)`` and labels ``(B,)`` as they are; a language model's ``(B, T, V)`` logits
    and ``(B, T)`` next tokens as ``(B·T, V)`` and ``(B·T,)``: one prediction per token."""
    if logits.dim() == 3:
        return logits.flatten(0, 1), target.flatten()
    return logits, target


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode meanwhile, then each as its root module was.

    A model already wholly in eval mode is left alone: switching recurses through every module,
    and a masked network has several per layer (about a fifth of a ResNet-20 policy's score).
    """
    switched = {m: m.training for m in models if any(sub.training for sub in m.modules())}
    for model in switched:
        model.eval()
    try:
        yield
    finally:
        for model, was_training in switched.items():
            model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> Score:
    """Accuracy and mean loss of ``model`` on ``(x, y)``, in eval mode.

    For a language model (labels ``(N, T)``), token accuracy and the token-level mean loss.
    """
    correct, loss = 0, 0.0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            logits, target = flat(model(x[start : start + batch_size]), y[start : start + batch_size])
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    return Score(accuracy=correct / y.numel(), loss=loss / y.numel())


@torch.no_grad()
def kl_divergence(model: nn.Module, reference: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean ``KL(reference ‖ model)`` of the output distributions on ``x``, in nats, in eval mode.

    Averaged over samples, or over tokens for a language model: how far ``model``'s next-token
    distribution strays from ``reference``'s (the dense network's), where ``reference`` puts its mass.
    """
    total, count = 0.0, 0
    with eval_mode(model, reference):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            log_p = reference(batch).flatten(0, -2).log_softmax(-1)  # one row per sample or token
            log_q = model(batch).flatten(0, -2).log_softmax(-1)
            total += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
            count += len(log_p)
    return total / count


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation (Hinton et al. 2015; docs/algorithms.md, "Distillation"): the
    training loss becomes ``(1 − weight) · CE(labels) + weight · T² · KL(teacher_T ‖ model_T)``,
    the KL between the outputs softened by the temperature ``T``, per sample or per token.

    The teacher (the dense network) runs each batch in eval mode without gradients; the ``T²``
    keeps the KL's gradients on the scale of the cross-entropy's as ``T`` grows.
    """

    teacher: nn.Module
    weight: float
    temperature: float = 1.0

    def loss(self, logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mixed loss of the outputs ``logits`` that the trained model gave on ``inputs``."""
        with torch.no_grad(), eval_mode(self.teacher):
            target = self.teacher(inputs)
        t = self.temperature
        log_q = (logits / t).flatten(0, -2).log_softmax(-1)  # one row per sample or token
        log_p = (target / t).flatten(0, -2).log_softmax(-1)
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        return (1 - self.weight) * F.cross_entropy(*flat(logits, labels)) + self.weight * t * t * kl


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    seed: int,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    on_epoch: Callable[[int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    bf16: bool = False,
    progress: Callable[[int, float], None] | None = None,
    distill: Distillation | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``(x, y)`` and return it.

    Args:
        model: the network; masks and fake quantizers inside it stay active while training.
        x, y: training inputs and labels.
        settings: optimiser settings.
        seed: seeds the shuffling, so two runs see the same batches.
        extra_loss: a regulariser added to every step's loss (for example a mask entropy).
        on_epoch: called with the epoch index before each epoch (schedules such as grow-and-prune).
        on_step: called with the number of optimizer steps taken so far, after each step.
        augment: maps each batch of inputs (and the seeded generator) to an augmented one.
        bf16: forward and loss under bf16 autocast where ``x`` is on a GPU that runs it
            (:func:`rlprune.device.mixed_precision`); a dense network only.
        progress: called after each step with the steps taken and that step's loss
            (:class:`rlprune.progress.TrainingProgress`).
        distill: train towards a teacher's outputs as well as the labels.

    Raises:
        RlpruneError: when the loss becomes NaN or infinite.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * math.ceil(len(x) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    precision = mixed_precision(x.device) if bf16 else nullcontext()  # entered once per step
    model.train()
    step = 0
    for epoch in range(settings.epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            inputs = x[batch] if augment is None else augment(x[batch], generator)
            with precision:
                logits = model(inputs)
                if distill is None:
                    loss = F.cross_entropy(*flat(logits, y[batch]))
                else:
                    loss = distill.loss(logits, inputs, y[batch])
            if extra_loss is not None:
                loss = loss + extra_loss()
            value = loss.item()
            if not math.isfinite(value):
                raise RlpruneError(
                    f"training diverged: the loss is {value} at epoch {epoch}; "
                    "lower the learning rate (lr) and try again."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(step)
            if progress is not None:
                progress(step, value)
    model.eval()
    return model
