"""A tiny decoder-only transformer language model, its projections plain ``nn.Linear`` layers."""

from __future__ import annotations

import torch
from torch import nn

from rlprune.models.vit import Block


class TinyLM(nn.Module):
    """GPT-style: token and position embeddings, pre-norm causal blocks, a final norm, an LM head.

    The searchable layers are each block's ``attn.qkv``, ``attn.proj``, ``fc1`` and ``fc2``, and
    the head. The embeddings are not Linear layers and are never pruned; the head is not tied to
    the token embedding, so a mask on the head leaves the embedding whole (``layers.exclude_last``
    keeps the head dense, as Wanda and SparseGPT do).

    Args:
        num_classes: vocabulary size (the data's ``num_classes``).
        length: longest sequence; inputs are ``(batch, tokens)`` token ids with ``tokens <= length``.
        dim: token width.
        depth: transformer blocks.
        heads: attention heads; ``dim`` must be a multiple of it.
        mlp_ratio: hidden width of each block's MLP per token channel.

    Returns from ``forward``: logits shaped ``(batch, tokens, num_classes)``, the next token at each position.
    """

    def __init__(
        self,
        num_classes: int,
        length: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"TinyLM needs dim ({dim}) to be a multiple of heads ({heads})")
        self.token_embed = nn.Embedding(num_classes, dim)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, causal=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embed(tokens) + self.pos_embed[:, : tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))
