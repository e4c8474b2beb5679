"""Hugging Face models from a local folder (the optional ``hf`` extra).

:class:`CausalLM` loads ``AutoModelForCausalLM`` and :class:`SequenceClassifier`
``AutoModelForSequenceClassification`` from a folder, never from the network
(``local_files_only``), and run them as every rlprune network runs: token ids in, logits out.
GPT-2's projections are ``transformers.pytorch_utils.Conv1D``, a Linear whose weight is stored
transposed ``(in, out)``; :func:`linear_from_conv1d` swaps each for the ``nn.Linear`` that computes
the same, so layer discovery, masks, latency models, finetune and export see one kind of layer
whose weight is ``(out, in)`` with N:M groups along the input, as on every other Linear.
:meth:`Pretrained.save_pretrained` writes a compressed model back in ``transformers``' own format,
with ``Conv1D``'s ``(in, out)`` weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rlprune.errors import ConfigError, ModelError


def linear_from_conv1d(model: nn.Module) -> list[str]:
    """Replace every ``transformers`` ``Conv1D`` inside ``model`` by an equal ``nn.Linear`` (in place).

    ``Conv1D`` computes ``x @ W + b`` with ``W`` shaped ``(in, out)``; the Linear gets ``W.T``.
    Returns the names of the layers replaced.
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
    return [name for name, _ in swaps]


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
"""Files that ``save_pretrained`` of a tokenizer writes: a model folder with one holds a tokenizer."""


class Pretrained(nn.Module):
    """A Hugging Face model read from ``path`` (``save_pretrained``'s folder) with the Auto class
    ``auto``, or one already loaded (``model``, adapted in place; it computes the same): in
    float32, without a key-value cache, GPT-2's ``Conv1D`` as ``nn.Linear``
    (:func:`linear_from_conv1d`)."""

    auto = ""

    def __init__(self, path: str | None, model: nn.Module | None) -> None:
        super().__init__()
        self.path = path
        loaded = _load(path, self.auto) if model is None else model
        self.saved_dtype = next(loaded.parameters()).dtype  # what save_pretrained writes
        self.model = loaded.float()
        self.use_cache = getattr(self.model.config, "use_cache", None)  # None: the config has no such key
        self.model.config.use_cache = False
        self.conv1d = linear_from_conv1d(self.model)

    def save_pretrained(self, folder: str | Path, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Save the model as ``transformers`` does, so that ``from_pretrained(folder)`` loads it
        without rlprune.

        ``state`` (this module's state dict, as a run's ``model.pt`` holds it; by default its
        own) gives the weights, which the model saved takes as they are, without a copy of the
        network: the layers that were ``Conv1D`` get their weights transposed back to
        ``(in, out)``. They are saved in the dtype the model was loaded in (``saved_dtype``;
        transformers 5 loads a checkpoint in its own). The config keeps the key-value cache
        setting it came with, and the tokenizer in ``path``, where that folder has one, is saved too.
        """
        weights = {
            key.removeprefix("model."): value.to(self.saved_dtype) if value.is_floating_point() else value
            for key, value in (state or self.state_dict()).items()
        }
        for name in self.conv1d:
            weights[f"{name}.weight"] = weights[f"{name}.weight"].T.contiguous()
        config = copy.deepcopy(self.model.config)
        if self.use_cache is None:
            del config.use_cache
        else:
            config.use_cache = self.use_cache
        with torch.device("meta"):  # no memory for weights about to be replaced
            model = type(self.model)(config)
        model.load_state_dict(weights, assign=True)
        model.save_pretrained(folder)
        tokenizer = self._tokenizer()
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    def _tokenizer(self) -> object | None:
        """The tokenizer saved in ``path``, or None (no path, or none there)."""
        folder = None if self.path is None else Path(self.path).expanduser()
        # without its files AutoTokenizer builds one of special tokens alone from the model's type
        if folder is None or not any((folder / name).is_file() for name in TOKENIZER_FILES):
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


class CausalLM(Pretrained):
    """A causal LM (``AutoModelForCausalLM``) from ``path`` or ``model`` (:class:`Pretrained`):
    ``(B, T)`` token ids to ``(B, T, vocabulary)`` logits.

    The head is untied from the token embedding (a copy of the shared weight), so that a mask or
    finetune of the head leaves the embedding as it is. ``num_classes`` (the data's), when
    given, is checked against the model's vocabulary.

    Raises:
        ConfigError: when ``path`` is unset or ``transformers`` is not installed, or the data
            holds more classes than the vocabulary.
        ModelError: when the folder holds no loadable causal LM.
    """

    auto = "AutoModelForCausalLM"

    def __init__(
        self, path: str | None = None, num_classes: int | None = None, model: nn.Module | None = None
    ) -> None:
        super().__init__(path, model)
        head, embedding = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        if head is not None and head.weight is embedding.weight:
            head.weight = nn.Parameter(head.weight.detach().clone())
            self.model.config.tie_word_embeddings = False
        vocabulary = self.model.config.get_text_config().vocab_size
        if num_classes is not None and num_classes > vocabulary:
            raise ConfigError(
                f"data.num_classes={num_classes} exceeds the model's vocabulary ({vocabulary}); "
                "read the data with the model's own tokenizer"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits


class SequenceClassifier(Pretrained):
    """A sequence classifier (``AutoModelForSequenceClassification``: BERT, DistilBERT, RoBERTa,
    GPT-2 or Llama with a classification head) from ``path`` or ``model`` (:class:`Pretrained`):
    ``(B, T)`` token ids to ``(B, classes)`` logits.

    Positions holding the model's ``pad_token_id`` are masked out of the attention, as the
    tokenizer's attention mask would; a model without one attends to every position.
    ``num_classes`` (the data's), when given, is checked against the head's labels.

    Raises:
        ConfigError: when ``path`` is unset or ``transformers`` is not installed, or the data
            holds more classes than the head has labels.
        ModelError: when the folder holds no loadable sequence classifier.
    """

    auto = "AutoModelForSequenceClassification"

    def __init__(
        self, path: str | None = None, num_classes: int | None = None, model: nn.Module | None = None
    ) -> None:
        super().__init__(path, model)
        self.pad = self.model.config.pad_token_id
        labels = self.model.config.num_labels
        if num_classes is not None and num_classes > labels:
            raise ConfigError(
                f"data.num_classes={num_classes} exceeds the {labels} labels of the model's "
                "classification head; give the data the model's label ids"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = None if self.pad is None else (tokens != self.pad).long()
        return self.model(input_ids=tokens, attention_mask=mask).logits


def _load(path: str | None, auto: str) -> nn.Module:
    """``transformers``' Auto class ``auto`` read from the folder ``path``, never downloaded."""
    if not path:
        raise ConfigError("model.path is not set: name the folder save_pretrained wrote (model.path=...)")
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "model=hf and model=hf_classifier need transformers: pip install 'rlprune[hf]' "
            "(or pip install transformers)"
        ) from exc
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model.path={path}: no such folder (save_pretrained's output is a folder)")
    try:
        return getattr(transformers, auto).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        kind = "causal LM" if auto == CausalLM.auto else "sequence classifier"
        raise ModelError(f"model.path={path}: no {kind} can be loaded from it: {exc}") from exc
