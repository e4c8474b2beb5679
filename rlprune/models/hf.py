"""Hugging Face causal language models from a local folder (the optional ``hf`` extra).

:class:`CausalLM` loads ``AutoModelForCausalLM`` from a folder, never from the network
(``local_files_only``), and runs it as every rlprune network runs: token ids in, logits out.
GPT-2's projections are ``transformers.pytorch_utils.Conv1D``, a Linear whose weight is stored
transposed ``(in, out)``; :func:`linear_from_conv1d` swaps each for the ``nn.Linear`` that computes
the same, so layer discovery, masks, latency models, finetune and export see one kind of layer
whose weight is ``(out, in)`` with N:M groups along the input, as on every other Linear.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rlprune.errors import ConfigError, ModelError


def linear_from_conv1d(model: nn.Module) -> int:
    """Replace every ``transformers`` ``Conv1D`` inside ``model`` by an equal ``nn.Linear`` (in place).

    ``Conv1D`` computes ``x @ W + b`` with ``W`` shaped ``(in, out)``; the Linear gets ``W.T``.
    Returns how many were replaced.
    """
    from transformers.pytorch_utils import Conv1D

    swaps = [(name, module) for name, module in model.named_modules() if isinstance(module, Conv1D)]
    for name, conv in swaps:
        fan_in, fan_out = conv.weight.shape
        linear = nn.Linear(fan_in, fan_out, bias=conv.bias is not None)
        linear.to(conv.weight)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, linear)
    return len(swaps)


class CausalLM(nn.Module):
    """A causal LM read from ``path`` (``save_pretrained``'s folder), or one already loaded
    (``model``, adapted in place; it computes the same): ``(B, T)`` token ids to
    ``(B, T, vocabulary)`` logits.

    The head is untied from the token embedding (a copy of the shared weight), so that a mask or
    finetune of the head leaves the embedding as it is; GPT-2's ``Conv1D`` become ``nn.Linear``
    (:func:`linear_from_conv1d`). ``num_classes`` (the data's), when given, is checked against the
    model's vocabulary.

    Raises:
        ConfigError: when ``path`` is unset or ``transformers`` is not installed.
        ModelError: when the folder holds no loadable causal LM.
    """

    def __init__(
        self, path: str | None = None, num_classes: int | None = None, model: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.model = _load(path) if model is None else model.float()
        self.model.config.use_cache = False
        head, embedding = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        if head is not None and head.weight is embedding.weight:
            head.weight = nn.Parameter(head.weight.detach().clone())
            self.model.config.tie_word_embeddings = False
        linear_from_conv1d(self.model)
        vocabulary = self.model.config.get_text_config().vocab_size
        if num_classes is not None and num_classes > vocabulary:
            raise ConfigError(
                f"data.num_classes={num_classes} exceeds the model's vocabulary ({vocabulary}); "
                "read the data with the model's own tokenizer"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits


def _load(path: str | None) -> nn.Module:
    """``AutoModelForCausalLM`` from the folder ``path``, in float32, never downloaded."""
    if not path:
        raise ConfigError("model.path is not set: name the folder save_pretrained wrote (model.path=...)")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise ConfigError(
            "model=hf needs transformers: pip install 'rlprune[hf]' (or pip install transformers)"
        ) from exc
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model.path={path}: no such folder (save_pretrained's output is a folder)")
    try:
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).float()
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.path={path}: no causal LM can be loaded from it: {exc}") from exc
