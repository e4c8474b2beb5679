"""The language-model target: the generated corpus, TinyLM, token-level scores, LM costs and report."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from rlprune.data import as_inputs, load_splits, make_splits, random_inputs
from rlprune.data.text import SEQUENCE, TOKEN, VOCABULARY, generate_tokens, load_text_arrays
from rlprune.hardware import build_latency_model
from rlprune.layers import discover_layers
from rlprune.models import TinyLM
from rlprune.training import TrainSettings, evaluate, kl_divergence, train
from tests.support import hardware_config, printable_report


def test_corpus_is_fixed_small_and_shifted(tmp_path):
    assert len(VOCABULARY) < 256 and len(set(VOCABULARY)) == len(VOCABULARY) and TOKEN["<bos>"] == 0
    tokens = generate_tokens(20, seed=3)
    assert tokens.shape == (20, SEQUENCE + 1) and tokens.dtype == np.int64
    assert np.array_equal(tokens, generate_tokens(20, seed=3))
    assert not np.array_equal(tokens, generate_tokens(20, seed=4))
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] != 0).all()  # <bos> opens, and only opens
    x, y, x_test, y_test = load_text_arrays(str(tmp_path))
    assert x.shape == (4000, SEQUENCE) and x_test.shape == (1000, SEQUENCE)
    assert np.array_equal(x[:, 1:], y[:, :-1])  # the targets are the inputs shifted by one
    again = load_text_arrays(str(tmp_path))  # from the cache
    assert all(np.array_equal(a, b) for a, b in zip(again, (x, y, x_test, y_test), strict=True))


def _words(row: np.ndarray) -> list[str]:
    return [VOCABULARY[t] for t in row]


def test_corpus_has_its_long_range_structure():
    """Every recalled key comes back with the value it was set to; every main verb agrees with
    its subject across the relative clause; brackets close innermost first; numbers count."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    checked = {"recall": 0, "agreement": 0, "brackets": 0, "counting": 0}
    for row in generate_tokens(200, seed=0):
        words = _words(row)
        values: dict[str, str] = {}
        stack: list[str] = []
        for i, word in enumerate(words[:-2]):
            if word == "set":
                values[words[i + 1]] = words[i + 2]
            if word == "get" and words[i + 1] in values and i + 2 < len(words):
                assert words[i + 2] == values[words[i + 1]]
                checked["recall"] += 1
            if word in pairs:
                stack.append(pairs[word])
            if word in pairs.values():
                assert stack.pop() == word
                checked["brackets"] += 1
            if word == "count" and i + 3 < len(words):
                a, b = words[i + 1], words[i + 2]
                if b != "end":
                    assert int(b[1:]) == int(a[1:]) + 1
                    checked["counting"] += 1
            if word == "that" and i + 5 < len(words):
                subject, inner_noun, inner_verb, verb = words[i - 1], words[i + 2], words[i + 3], words[i + 4]
                assert subject.endswith("s") != verb.endswith("s")  # a plural noun takes the bare verb
                assert inner_noun.endswith("s") != inner_verb.endswith("s")
                checked["agreement"] += 1
    assert min(checked.values()) > 50, checked


def test_text_splits_are_tokens_with_a_label_per_position():
    splits = load_splits("text", os.environ["RLPRUNE_CACHE"], reward_fraction=0.2, seed=0)
    assert splits.train_x.dtype == torch.int64 and splits.per_token
    assert splits.input_shape == (SEQUENCE,) and splits.train_y.shape == (3200, SEQUENCE)
    assert splits.num_classes == len(VOCABULARY)
    x, y = np.zeros((10, 1, 4)), np.zeros(10, dtype=int)
    images = make_splits(x, y, x, y, 0.2, 0)
    assert images.train_x.dtype == torch.float32 and not images.per_token


def test_made_up_inputs_keep_the_data_type():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[3, 7, 9, 3]])
    drawn = random_inputs(tokens, 5, gen)
    assert drawn.shape == (5, 4) and drawn.dtype == torch.int64 and set(drawn.unique().tolist()) <= {3, 7, 9}
    assert random_inputs(torch.zeros(1, 2, 8), 3, gen).dtype == torch.float32
    assert as_inputs(tokens, torch.float16).dtype == torch.int64
    assert as_inputs(torch.zeros(2), torch.float16).dtype == torch.float16


def test_tiny_lm_layers_are_costed_per_token():
    model = TinyLM(num_classes=75, length=SEQUENCE, dim=32, depth=2, heads=4)
    x = torch.randint(75, (2, SEQUENCE))
    assert model(x).shape == (2, SEQUENCE, 75)
    layers = discover_layers(model, x)
    names = [layer.name for layer in layers]
    per_block = ["attn.qkv", "attn.proj", "fc1", "fc2"]
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in per_block] + ["head"]
    qkv = layers[0]
    assert qkv.in_shape == (SEQUENCE, 32) and qkv.macs == SEQUENCE * 32 * 96  # every token pays
    short = discover_layers(model, x[:, :8])[0]
    assert short.macs * 8 == qkv.macs
    for name in ("arm_cpu", "a100", "h200"):
        hardware = build_latency_model(hardware_config(name))
        dense = hardware.dense_choice()
        # compute or bytes grow with the tokens: 64 tokens cost more than 8 of them
        assert hardware.latency(qkv, dense) > hardware.latency(short, dense), name
    roofline = build_latency_model(hardware_config("arm_cpu"))
    terms = roofline.terms(qkv, roofline.dense_choice())
    assert terms.flops == 2 * roofline.batch_size * SEQUENCE * qkv.params


def test_measured_table_times_a_linear_on_every_token():
    from rlprune.hardware.measured.ops import build_op, op_spec

    model = TinyLM(num_classes=75, length=SEQUENCE, dim=32, depth=1, heads=4)
    qkv = discover_layers(model, torch.randint(75, (1, SEQUENCE)))[0]
    spec = op_spec(qkv, 32, 96, bits=32, batch=1, epilogue="none", memory_format="contiguous")
    assert spec["spatial"] == [SEQUENCE]
    assert build_op(spec, None).example.shape == (1, SEQUENCE, 32)  # timed on (batch, T, d) inputs


def test_causal_attention_ignores_later_tokens():
    torch.manual_seed(0)
    model = TinyLM(num_classes=20, length=16, dim=16, depth=1, heads=2).eval()
    x = torch.randint(20, (1, 16))
    changed = x.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 20
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :10], model(changed)[0, :10], atol=1e-6)
        assert not torch.allclose(model(x)[0, 10:], model(changed)[0, 10:])


def test_scores_are_per_token_and_kl_measures_the_drift():
    torch.manual_seed(0)
    vocab, length = 11, 6
    model = TinyLM(num_classes=vocab, length=length, dim=16, depth=1, heads=2)
    x = torch.randint(vocab, (40, length))
    y = torch.roll(x, -1, dims=1)
    score = evaluate(model, x, y, batch_size=7)
    with torch.no_grad():
        logits = model(x)
    expected = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).item()
    assert score.loss == pytest.approx(expected, rel=1e-5)
    assert score.accuracy == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    assert kl_divergence(model, model, x) == pytest.approx(0.0, abs=1e-6)
    other = TinyLM(num_classes=vocab, length=length, dim=16, depth=1, heads=2)
    drift = kl_divergence(other, model, x, batch_size=9)
    with torch.no_grad():
        p, q = model(x).log_softmax(-1), other(x).log_softmax(-1)
    assert drift == pytest.approx((p.exp() * (p - q)).sum(-1).mean().item(), rel=1e-4) and drift > 0
    trained = train(model, x, y, TrainSettings(epochs=30, lr=1e-2, batch_size=8), seed=0)
    assert evaluate(trained, x, y).loss < score.loss - 0.5  # the token-level loss trains


def test_dense_epochs_follow_the_data_config():
    from tests.support import compose_config

    assert compose_config("model=tiny_lm", "data=text").dense.epochs == 3
    assert compose_config().dense.epochs == 60
    assert compose_config("data=text", "dense.epochs=2").dense.epochs == 2
    assert math.isfinite(compose_config("model=tiny_lm", "data=text").dense.lr)


def test_printed_report_shows_perplexity_and_kl_for_language_data_only():
    from rich.console import Console

    from rlprune.report import print_report

    perplexity = {
        "dense_test": 4.2,
        "dense_reward": 4.3,
        "search_best_reward": 4.9,
        "pruned_test_before_finetune": 4.8,
        "pruned_test_after_finetune": 4.4,
        "pruned_reward_after_finetune": 4.5,
    }
    console = Console(record=True, width=200)
    print_report(
        printable_report(language_model={"perplexity": perplexity, "kl_to_dense_test": 0.0515}), console
    )
    text = console.export_text()
    assert "token accuracy: dense test 0.4000" in text
    assert "perplexity: dense test 4.200 | search best (reward split) 4.900" in text
    assert "after finetune 4.400 (reward split 4.500, dense 4.300)" in text
    assert "KL(dense ‖ final) on the test split: 0.0515 nats per token" in text
    console = Console(record=True, width=200)
    print_report(printable_report(), console)
    text = console.export_text()
    assert "perplexity" not in text and "KL" not in text and "\naccuracy: dense test" in text


@pytest.mark.slow  # end to end in a subprocess: trains tiny_lm briefly, searches, finetunes
def test_quick_run_reports_perplexity_and_kl(tmp_path):
    import json

    from tests.test_cli import rlprune

    result = rlprune(
        tmp_path,
        "model=tiny_lm",
        "data=text",
        "dense.epochs=1",
        "search.evaluations=20",
        "finetune.epochs=1",
        "progress_bar=false",
        "wandb.mode=disabled",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    lm = report["language_model"]
    perplexity = lm["perplexity"]
    assert set(perplexity) == {
        "dense_test",
        "dense_reward",
        "search_best_reward",
        "pruned_test_before_finetune",
        "pruned_test_after_finetune",
        "pruned_reward_after_finetune",
    }
    assert 1 < perplexity["dense_test"] < 52  # better than the unigram model (52.4)
    assert all(math.isfinite(value) and value >= 1 for value in perplexity.values())
    assert lm["kl_to_dense_test"] > 0
    assert [row["layer"] for row in report["layers"]][-1] == "head"
    assert "perplexity: dense test" in result.stdout and "token accuracy" in result.stdout
