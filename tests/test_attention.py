"""rlprune.models.attention: torch's attention split into Linear layers computes the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlprune.models.attention import MultiheadAttention, expose_layers

DIM, HEADS, BATCH, QUERIES, KEYS = 16, 4, 3, 5, 7


def _pair(batch_first: bool = True, **kwargs) -> tuple[nn.MultiheadAttention, MultiheadAttention]:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first, **kwargs).eval()
    with torch.no_grad():  # torch starts the biases at zero: make them count
        for name, param in attention.named_parameters():
            if "bias" in name:
                param.normal_()
    return attention, MultiheadAttention.from_torch(attention)


def _inputs(batch_first: bool, kdim: int = DIM, vdim: int = DIM) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)

    def shaped(tokens: int, width: int) -> torch.Tensor:
        shape = (BATCH, tokens, width) if batch_first else (tokens, BATCH, width)
        return torch.randn(shape, generator=gen)

    return shaped(QUERIES, DIM), shaped(KEYS, kdim), shaped(KEYS, vdim)


def _same(ours: tuple, theirs: tuple) -> None:
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-5)
    if theirs[1] is None:
        assert ours[1] is None
    else:
        torch.testing.assert_close(ours[1], theirs[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_same_outputs_and_weights(batch_first: bool, need_weights: bool, average: bool) -> None:
    theirs, ours = _pair(batch_first)
    q, k, v = _inputs(batch_first)
    args = {"need_weights": need_weights, "average_attn_weights": average}
    _same(ours(q, k, v, **args), theirs(q, k, v, **args))


@pytest.mark.parametrize("need_weights", [True, False])
def test_masks(need_weights: bool) -> None:
    theirs, ours = _pair()
    q, k, v = _inputs(True)
    gen = torch.Generator().manual_seed(2)
    padding = torch.zeros(BATCH, KEYS, dtype=torch.bool)
    padding[:, -2:] = True
    causal = torch.ones(QUERIES, KEYS, dtype=torch.bool).triu(1)
    per_head = torch.randn(BATCH * HEADS, QUERIES, KEYS, generator=gen)
    float_padding = torch.randn(BATCH, KEYS, generator=gen)
    for masks in (
        {"key_padding_mask": padding},
        {"attn_mask": causal},
        {"attn_mask": causal.float().masked_fill(causal, float("-inf"))},
        {"attn_mask": per_head},
        {"attn_mask": per_head, "key_padding_mask": padding},
        {"attn_mask": causal, "key_padding_mask": float_padding},
        {"attn_mask": causal, "is_causal": True},
    ):
        _same(
            ours(q, k, v, need_weights=need_weights, **masks),
            theirs(q, k, v, need_weights=need_weights, **masks),
        )


def test_unbatched_and_other_widths() -> None:
    theirs, ours = _pair(kdim=6, vdim=10)
    q, k, v = _inputs(True, kdim=6, vdim=10)
    _same(ours(q, k, v), theirs(q, k, v))
    _same(ours(q[0], k[0], v[0]), theirs(q[0], k[0], v[0]))
    padding = torch.zeros(KEYS, dtype=torch.bool)
    padding[0] = True
    _same(
        ours(q[0], k[0], v[0], key_padding_mask=padding), theirs(q[0], k[0], v[0], key_padding_mask=padding)
    )


def test_state_dict_keeps_torch_layout() -> None:
    for kwargs in ({}, {"kdim": 6, "vdim": 10}, {"bias": False}):
        theirs, ours = _pair(**kwargs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for key, value in ours.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[key]), key
        fresh = nn.MultiheadAttention(DIM, HEADS, batch_first=True, **kwargs)
        fresh.load_state_dict(ours.state_dict())  # strict: the class's own keys, no others


def test_is_causal_without_mask_is_refused_as_torch_does() -> None:
    theirs, ours = _pair()
    q, k, v = _inputs(True)
    with pytest.raises(RuntimeError, match="attn_mask"):
        ours(q, k, v, is_causal=True)
    with pytest.raises(RuntimeError):
        theirs(q, k, v, is_causal=True)


class _Encoder(nn.Module):
    """A classifier on torch's TransformerEncoder (with its fused fast path in eval mode) that
    reads the first token: the nested-tensor path leaves padded positions at zero."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, src_key_padding_mask=padding)[:, 0])


def test_split_network_computes_the_same_and_exposes_projections() -> None:
    torch.manual_seed(0)
    net = _Encoder().eval()
    x = torch.randn(BATCH, QUERIES, DIM)
    padding = torch.zeros(BATCH, QUERIES, dtype=torch.bool)
    padding[0, -1] = True
    with torch.no_grad():  # eval + no_grad: torch's fused (and nested-tensor) paths
        expected = net(x), net(x, padding)
    own_state = net.state_dict()
    assert expose_layers(net) == []
    linear = {n for n, m in net.named_modules() if type(m) is nn.Linear}
    assert {f"encoder.layers.0.self_attn.{p}_proj" for p in "qkv"} <= linear
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(x, padding), expected[1], atol=1e-5, rtol=1e-5)
    assert net.state_dict().keys() == own_state.keys()
    original = _Encoder()
    original.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(original.eval()(x), expected[0], atol=1e-5, rtol=1e-5)


def test_unsupported_attention_is_left_as_it_is() -> None:
    net = nn.Sequential()
    net.add_module("attn", nn.MultiheadAttention(DIM, HEADS, add_bias_kv=True))
    assert expose_layers(net) == ["attn"]
    assert type(net.attn) is nn.MultiheadAttention


class _Block(nn.Module):
    """A pre-norm block calling attention itself, as torchvision's ViT does."""

    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.need_weights = need_weights
        self.norm = nn.LayerNorm(DIM)
        self.attention = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(DIM, 32), nn.GELU(), nn.Linear(32, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attention(h, h, h, need_weights=self.need_weights)[0]
        return x + self.mlp(x)


def test_the_encoder_is_traced_through_and_its_layers_go_int8() -> None:
    from rlprune.export import export_int8, int8_supported

    torch.manual_seed(0)
    net = _Encoder().eval()
    expose_layers(net)
    graph = torch.fx.symbolic_trace(net)
    called = {str(node.target) for node in graph.graph.nodes if node.op == "call_module"}
    assert {"encoder.layers.1.linear1", "encoder.layers.1.self_attn.q_proj"} <= called
    x = torch.randn(BATCH, QUERIES, DIM)
    torch.testing.assert_close(graph(x), net(x))
    if int8_supported():
        quantized = export_int8(net, x)
        assert ".quantized." in type(quantized.get_submodule("encoder.layers.0.linear2")).__module__


class _Seq2Seq(nn.Module):
    """torch's whole Transformer, encoder and decoder, on one input: causal decoding with padding."""

    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        self.transformer = nn.Transformer(
            DIM, HEADS, 2, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.head = nn.Linear(DIM, 3)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(QUERIES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = x[..., 0] > 1.0  # a few positions of each sequence
        out = self.transformer(
            x, x, tgt_mask=self.causal, src_key_padding_mask=padding, memory_key_padding_mask=padding
        )
        return self.head(out[:, 0])


@pytest.mark.parametrize("norm_first", [False, True])
def test_the_decoder_and_the_whole_transformer_are_traced_through_and_go_int8(norm_first: bool) -> None:
    from rlprune.export import export_int8, int8_supported

    torch.manual_seed(0)
    net = _Seq2Seq(norm_first).eval()
    x = torch.randn(BATCH, QUERIES, DIM)
    with torch.no_grad():
        expected = net(x)
    own_state = net.state_dict()
    expose_layers(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    assert net.state_dict().keys() == own_state.keys()
    graph = torch.fx.symbolic_trace(net)
    called = {str(node.target) for node in graph.graph.nodes if node.op == "call_module"}
    decoder = "transformer.decoder.layers.1"
    assert {f"{decoder}.linear1", f"{decoder}.multihead_attn.k_proj", f"{decoder}.self_attn.q_proj"} <= called
    torch.testing.assert_close(graph(x), net(x))
    if int8_supported():
        quantized = export_int8(net, x)
        for name in (f"{decoder}.linear2", f"{decoder}.multihead_attn.v_proj"):
            assert ".quantized." in type(quantized.get_submodule(name)).__module__


@pytest.mark.parametrize("need_weights", [True, False])
def test_fx_trace_keeps_projections_as_modules(need_weights: bool) -> None:
    torch.manual_seed(0)
    net = _Block(need_weights).eval()
    expose_layers(net)
    graph = torch.fx.symbolic_trace(net)
    called = {str(node.target) for node in graph.graph.nodes if node.op == "call_module"}
    assert {"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj"} <= called
    x = torch.randn(BATCH, QUERIES, DIM)
    torch.testing.assert_close(graph(x), net(x))


class _DigitRows(nn.Module):
    """A digits classifier on torch's TransformerEncoder: each image row is a token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, DIM)
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x[:, 0])).mean(1))


def test_torch_transformer_runs_the_whole_chain_with_its_attention_searched(tmp_path):
    from sklearn.datasets import load_digits

    from rlprune import api
    from rlprune.training import TrainSettings, train

    digits = load_digits()
    x, y = torch.from_numpy((digits.images[:, None] / 16).astype("float32")), torch.from_numpy(digits.target)
    torch.manual_seed(0)
    net = train(_DigitRows(), x[:1400], y[:1400], TrainSettings(epochs=10), seed=0).eval()
    quick = ["search.evaluations=20", "finetune.epochs=1", "progress_bar=false", "wandb.mode=disabled"]
    data = (x[:1400], y[:1400], x[1400:], y[1400:])
    report = api.run_network(net, data, tmp_path / "kofn", quick)
    searched = {row["layer"] for row in report["layers"] if row["searched"]}
    assert {f"encoder.layers.0.self_attn.{p}_proj" for p in ("q", "k", "v", "out")} <= searched
    assert report["latency"] <= report["budget"] + 1e-9 < 1
    assert type(net.encoder.layers[0].self_attn) is nn.MultiheadAttention  # the caller's is untouched
    tuned = _DigitRows()
    tuned.load_state_dict(torch.load(tmp_path / "kofn" / "model.pt", weights_only=True))  # strict
    assert not torch.equal(
        tuned.state_dict()["encoder.layers.0.self_attn.in_proj_weight"],
        net.state_dict()["encoder.layers.0.self_attn.in_proj_weight"],
    )
    report = api.run_network(net, data, tmp_path / "filter", [*quick, "search.pattern=filter"])
    assert "attention heads" in report["skipped"]["encoder.layers.0.self_attn.q_proj"]
    assert (tmp_path / "filter" / "model.pt").exists()
