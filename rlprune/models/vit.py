"""A tiny Vision Transformer (Dosovitskiy et al. 2021) for 1-D or 2-D inputs, built from nn.Linear."""

from __future__ import annotations

import torch
from torch import nn

from rlprune.models.ops import ops_for


class Attention(nn.Module):
    """Multi-head self-attention with its projections as plain ``nn.Linear`` layers.

    Args:
        dim: token width.
        heads: attention heads; ``dim`` must be a multiple of it.
        causal: each token attends only to itself and the tokens before it (a language model).
    """

    def __init__(self, dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """A pre-norm transformer block: attention and a two-layer GELU MLP, each with a residual.

    Args:
        dim: token width.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP per token channel.
        causal: causal self-attention (:class:`Attention`).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """ViT: a patch-embedding convolution, a class token, transformer blocks, a linear head.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        dims: 1 for sequences (MNIST-1D), 2 for square images (digits, CIFAR).
        image_size: side of the image, or length of the sequence; inputs must have this size.
        patch: side (or length) of a patch; ``image_size`` must be a multiple of it.
        dim: token width.
        depth: transformer blocks.
        heads: attention heads; ``dim`` must be a multiple of it.
        mlp_ratio: hidden width of each block's MLP per token channel.

    Raises:
        ValueError: when ``dims`` is not 1 or 2, or a size is not a multiple of the one it must be.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dims: int = 2,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT needs image_size ({image_size}) to be a multiple of patch ({patch})")
        if dim % heads:
            raise ValueError(f"ViT needs dim ({dim}) to be a multiple of heads ({heads})")
        conv = ops_for(dims, "ViT").conv
        self.patch_embed = conv(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** dims
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.blocks(x)
        return self.head(self.norm(x[:, 0]))
