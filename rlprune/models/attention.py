"""torch.nn's attention and transformer layers opened up, so that their Linear layers are searched
and deployed like any other.

Torch's attention keeps the query, key and value projections in one fused parameter
(``in_proj_weight``) that it multiplies functionally, and calls ``out_proj`` the same way: no
``nn.Linear`` runs, so a search over Linear and Conv layers never sees a quarter of a
transformer block's weights. And torch.ao's int8 export does not trace into torch.nn modules,
so the Linear layers inside ``nn.TransformerEncoder`` or ``nn.TransformerDecoder`` would deploy
in float. :func:`expose_layers` swaps each attention, in place, for a :class:`MultiheadAttention`
that computes the same through four ``nn.Linear`` layers and keeps torch's state-dict layout (the
weights of the network's own class load into it and back), and gives the transformer modules a
forward FX can trace.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.fx.wrap
def attention_bias(
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    heads: int,
    query_dims: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The additive mask of torch's attention arguments, shaped to broadcast over
    ``(batch, heads, queries, keys)`` scores (``(heads, queries, keys)`` for an unbatched query
    of ``query_dims`` 2), or None.

    As in ``nn.MultiheadAttention``, a boolean mask is True where a key is left out and a float
    mask is added; a 3-D ``attn_mask`` holds one mask per batch sample and head. A leaf of FX
    graphs (``torch.fx.wrap``), so that its branches on the masks are not traced.
    """
    bias = None
    if attn_mask is not None:
        bias = _additive(attn_mask, dtype)
        if bias.dim() == 3 and query_dims == 3:
            bias = bias.unflatten(0, (-1, heads))
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).unsqueeze(-2).unsqueeze(-2)  # over heads and queries
        bias = padding if bias is None else bias + padding
    return bias


@torch.fx.wrap
def attention_weights(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """Softmax of the scaled scores of queries ``q`` on keys ``k`` plus ``bias``, with dropout.
    A leaf of FX graphs: ``bias`` may be None."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if bias is not None:
        scores = scores + bias
    return F.dropout(scores.softmax(-1), dropout)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float mask to add to scores: -inf where a boolean ``mask`` is True."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class MultiheadAttention(nn.Module):
    """Multi-head attention computing what ``nn.MultiheadAttention`` does, through ``q_proj``,
    ``k_proj``, ``v_proj`` and ``out_proj`` layers; same arguments, same outputs.

    Its state dict has torch's keys (``in_proj_weight``, or ``q_proj_weight``, ``k_proj_weight``
    and ``v_proj_weight`` where the key or value width differs; ``in_proj_bias``, ``out_proj.*``)
    and it loads them. Build it with :meth:`from_torch`.
    """

    # torch's Transformer layers read these to pick their fused kernels, which multiply the
    # fused parameter and skip the Linear layers; None turns those paths off.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.packed = self.kdim == embed_dim and self.vdim == embed_dim  # torch's in_proj_weight
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.register_state_dict_post_hook(_to_torch_layout)
        self.register_load_state_dict_pre_hook(_from_torch_layout)

    @classmethod
    def from_torch(cls, attention: nn.MultiheadAttention) -> MultiheadAttention:
        """The equal of ``attention``, with its weights, device and dtype.

        Raises:
            ValueError: for ``add_bias_kv`` or ``add_zero_attn``, which it does not compute.
        """
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported")
        split = cls(
            attention.embed_dim,
            attention.num_heads,
            attention.dropout,
            attention.out_proj.bias is not None,
            attention.kdim,
            attention.vdim,
            attention.batch_first,
        )
        weight = attention.out_proj.weight
        split.to(device=weight.device, dtype=weight.dtype).train(attention.training)
        split.load_state_dict(attention.state_dict())
        return split

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``: the attended values and, with ``need_weights``,
        the attention weights (averaged over heads with ``average_attn_weights``).

        ``is_causal`` is torch's hint that ``attn_mask`` is causal; the mask is what is applied.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "is_causal is a hint that attn_mask is causal: pass the mask too, as torch asks"
            )
        query_dims = query.dim()
        if not self.batch_first:  # (queries, batch, dim) -> (batch, queries, dim); unbatched: as is
            query, key, value = (t.transpose(0, -2) for t in (query, key, value))
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        bias = attention_bias(key_padding_mask, attn_mask, self.num_heads, query_dims, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            weights = attention_weights(q, k, bias, dropout)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        out = self.out_proj(out.transpose(-3, -2).flatten(-2))
        if not self.batch_first:
            out = out.transpose(0, -2)
        if weights is not None and average_attn_weights:
            weights = weights.mean(-3)
        return out, weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., tokens, dim)`` -> ``(..., heads, tokens, head_dim)``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)


_PROJECTIONS = ("q", "k", "v")


def _to_torch_layout(module: MultiheadAttention, state: dict[str, Any], prefix: str, _metadata: Any) -> None:
    """Rename the projections' entries of ``state`` to ``nn.MultiheadAttention``'s keys."""
    weights = [f"{prefix}{p}_proj.weight" for p in _PROJECTIONS]
    if all(k in state for k in weights):  # a masked (parametrized) weight keeps the search's keys
        tensors = [state.pop(k) for k in weights]
        if module.packed:
            state[f"{prefix}in_proj_weight"] = torch.cat(tensors)
        else:
            state.update({f"{prefix}{p}_proj_weight": t for p, t in zip(_PROJECTIONS, tensors, strict=True)})
    biases = [f"{prefix}{p}_proj.bias" for p in _PROJECTIONS]
    if all(k in state for k in biases):
        state[f"{prefix}in_proj_bias"] = torch.cat([state.pop(k) for k in biases])


def _from_torch_layout(module: MultiheadAttention, state: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Rename ``nn.MultiheadAttention``'s entries of ``state`` to the projections' keys."""
    if f"{prefix}in_proj_weight" in state:
        chunks = state.pop(f"{prefix}in_proj_weight").chunk(3)
        state.update({f"{prefix}{p}_proj.weight": w for p, w in zip(_PROJECTIONS, chunks, strict=True)})
    for p in _PROJECTIONS:
        if f"{prefix}{p}_proj_weight" in state:
            state[f"{prefix}{p}_proj.weight"] = state.pop(f"{prefix}{p}_proj_weight")
    if f"{prefix}in_proj_bias" in state:
        chunks = state.pop(f"{prefix}in_proj_bias").chunk(3)
        state.update({f"{prefix}{p}_proj.bias": b for p, b in zip(_PROJECTIONS, chunks, strict=True)})


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` computing torch's own steps without its fused fast path, in
    a forward FX can trace: torch.ao's int8 export, which treats torch.nn modules as opaque,
    then reaches its Linear layers."""

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        def attend(x: torch.Tensor) -> torch.Tensor:
            out = self.self_attn(
                x,
                x,
                x,
                attn_mask=src_mask,
                key_padding_mask=src_key_padding_mask,
                need_weights=False,
                is_causal=is_causal,
            )[0]
            return self.dropout1(out)

        def feed_forward(x: torch.Tensor) -> torch.Tensor:
            return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

        if self.norm_first:
            src = src + attend(self.norm1(src))
            return src + feed_forward(self.norm2(src))
        src = self.norm1(src + attend(src))
        return self.norm2(src + feed_forward(src))


class TransformerEncoder(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` running its layers one after the other, without the
    nested-tensor path (which needs torch's fused attention), in a forward FX can trace."""

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        for layer in self.layers:
            src = layer(
                src, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal)
            )
        return src if self.norm is None else self.norm(src)


class TransformerDecoderLayer(nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer`` as it is (its forward has no fast path), under a class of
    rlprune's own, which torch.ao's FX tracer enters instead of keeping it whole."""


class TransformerDecoder(nn.TransformerDecoder):
    """``nn.TransformerDecoder`` running its layers one after the other, without comparing
    ``tgt_mask`` to a causal mask (a data-dependent test FX cannot trace): ``tgt_is_causal`` is
    only a hint, and the mask is what is applied."""

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        for layer in self.layers:
            tgt = layer(
                tgt,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=bool(tgt_is_causal),
                memory_is_causal=memory_is_causal,
            )
        return tgt if self.norm is None else self.norm(tgt)


class Transformer(nn.Transformer):
    """``nn.Transformer``: its encoder, then its decoder, without torch's checks of the inputs'
    sizes (Python tests on traced sizes, which FX cannot follow)."""

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        memory = self.encoder(
            src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal
        )
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )


# torch.nn's transformer modules and their twins: the same modules, in a forward FX can trace
TRACEABLE: dict[type[nn.Module], type[nn.Module]] = {
    nn.TransformerEncoderLayer: TransformerEncoderLayer,
    nn.TransformerEncoder: TransformerEncoder,
    nn.TransformerDecoderLayer: TransformerDecoderLayer,
    nn.TransformerDecoder: TransformerDecoder,
    nn.Transformer: Transformer,
}


def expose_layers(model: nn.Module) -> list[str]:
    """Open the torch.nn modules of ``model`` that hide Linear layers, in place, computing the same.

    Every ``nn.MultiheadAttention`` becomes a :class:`MultiheadAttention`, whose projections
    are Linear layers a search sees; attention with ``add_bias_kv`` or ``add_zero_attn`` stays
    as it is (its projections are not searched). torch.nn's transformer modules (encoder and
    decoder layers and stacks, ``nn.Transformer``) take the class of their traceable twins
    (:data:`TRACEABLE`), the same module with a forward torch.ao's int8 export follows.

    Returns:
        The names of the attention modules left as they are.
    """
    kept = []
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, attention in found:
        try:
            split = MultiheadAttention.from_torch(attention)
        except ValueError:
            kept.append(name)
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, split)
    for module in model.modules():
        if type(module) in TRACEABLE:
            module.__class__ = TRACEABLE[type(module)]  # the same state, another forward
    return kept
