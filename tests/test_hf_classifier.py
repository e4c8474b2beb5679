"""Hugging Face sequence classifiers from a local folder (model=hf_classifier, data=arrays): a BERT
style and a GPT-2 style model with classification heads, built from a config, never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from rlprune.errors import ConfigError, ModelError  # noqa: E402
from rlprune.layers import discover_layers, filter_couplings  # noqa: E402
from rlprune.models.hf import SequenceClassifier  # noqa: E402
from tests.test_cli import rlprune  # noqa: E402

VOCABULARY, LENGTH, PAD = 40, 12, 0


def _config(kind: str) -> transformers.PretrainedConfig:
    if kind == "bert":
        return transformers.BertConfig(
            vocab_size=VOCABULARY,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            num_labels=3,
            pad_token_id=PAD,
        )
    return transformers.GPT2Config(
        vocab_size=VOCABULARY, n_positions=16, n_embd=32, n_layer=2, n_head=4, num_labels=3, pad_token_id=PAD
    )


def _tokens(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded token ids ``(N, T)`` whose class is the second token's id modulo 3."""
    rng = np.random.default_rng(seed)
    x = rng.integers(3, VOCABULARY, (samples, LENGTH))
    x[:, 0] = 2
    for row, length in zip(x, rng.integers(6, LENGTH + 1, samples), strict=True):
        row[length:] = PAD
    return x, x[:, 1] % 3


@pytest.fixture(scope="module", params=["bert", "gpt2"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_config(_config(request.param)).save_pretrained(
        folder
    )
    return request.param, folder


def test_it_computes_what_transformers_does_with_the_padding_masked(saved):
    _, folder = saved
    wrapped = SequenceClassifier(str(folder)).eval()
    own = transformers.AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    x, _ = _tokens(6, seed=1)
    ids = torch.from_numpy(x)
    with torch.no_grad():
        expected = own.eval()(input_ids=ids, attention_mask=(ids != PAD).long()).logits
        assert torch.allclose(wrapped(ids), expected, atol=1e-5)
        assert torch.allclose(SequenceClassifier(model=own)(ids), expected, atol=1e-5)  # wrapped in place


def test_attention_projections_keep_their_filters(saved):
    kind, folder = saved
    net = SequenceClassifier(str(folder)).eval()
    ids = torch.from_numpy(_tokens(2, seed=1)[0])
    layers = discover_layers(net, ids)
    couplings = filter_couplings(net, ids, layers)
    heads = [name for name in couplings if name.endswith(("query", "key", "value", "c_attn"))]
    assert len(heads) == (6 if kind == "bert" else 2)
    assert all(couplings[name].fixed for name in heads)
    if kind == "bert":
        assert all("attention heads" in couplings[name].fixed for name in heads)


def test_albert_s_shared_layers_are_charged_for_every_call(tmp_path):
    """ALBERT runs one set of encoder weights at each of its layers: each of its Linear layers is
    one layer of the search, charged as often as it runs, as a BERT of the same widths."""
    from rlprune.hardware import build_latency_model
    from tests.support import hardware_config

    widths = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_labels": 3}
    albert = transformers.AlbertConfig(
        vocab_size=VOCABULARY, embedding_size=16, num_hidden_layers=3, num_hidden_groups=1, **widths
    )
    bert = transformers.BertConfig(vocab_size=VOCABULARY, num_hidden_layers=3, **widths)
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_config(albert).save_pretrained(tmp_path)
    ids = torch.from_numpy(_tokens(2, seed=1)[0])
    layers = discover_layers(SequenceClassifier(str(tmp_path)).eval(), ids)
    shared = [layer for layer in layers if ".albert_layers.0." in layer.name]
    assert len(shared) == 6 and {layer.calls for layer in shared} == {3}
    assert {layer.calls for layer in layers if layer not in shared} == {1}
    own = transformers.AutoModelForSequenceClassification.from_config(bert)
    bert_layers = discover_layers(SequenceClassifier(model=own).eval(), ids)
    device = build_latency_model(hardware_config("a100"))

    def encoder(found: list, part: str) -> float:
        return sum(device.latency(layer, device.dense_choice()) for layer in found if part in layer.name)

    assert encoder(layers, ".albert_layers.0.") == pytest.approx(encoder(bert_layers, ".encoder.layer."))


def test_bad_folders_and_labels_are_named(tmp_path, saved):
    _, folder = saved
    with pytest.raises(ModelError, match="no sequence classifier"):
        SequenceClassifier(str(tmp_path))
    with pytest.raises(ConfigError, match=r"data\.num_classes=5 exceeds the 3 labels"):
        SequenceClassifier(str(folder), num_classes=5)


@pytest.mark.slow  # end to end in a subprocess: trains the tiny model, searches, finetunes
def test_quick_search_from_the_cli(saved, tmp_path):
    _, folder = saved
    x, y = _tokens(1000, seed=0)
    data = tmp_path / "tokens.npz"
    np.savez(data, x_train=x[:800], y_train=y[:800], x_test=x[800:], y_test=y[800:])
    result = rlprune(
        tmp_path,
        "model=hf_classifier",
        f"model.path={folder}",
        "model.train_dense=true",  # random weights: train them on the data first (cached)
        "data=arrays",
        f"data.path={data}",
        f"data.size={LENGTH}",
        "data.num_classes=3",
        "dense.epochs=15",
        "dense.lr=0.003",
        "dense.batch_size=32",
        "search.evaluations=20",
        "finetune.epochs=1",
        "progress_bar=false",
        "wandb.mode=disabled",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["accuracy"]["dense_test"] > 0.9 and report["latency"] <= report["budget"] + 1e-9
    tuned = SequenceClassifier(str(folder))
    tuned.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # its own class takes it
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "model_hf")
    assert report["model_hf"] == {"folder": "model_hf", "tokenizer": False}  # the folder holds none
    ids = torch.from_numpy(x[800:832])
    with torch.no_grad():
        mask = (ids != PAD).long()
        assert torch.allclose(
            loaded.eval()(input_ids=ids, attention_mask=mask).logits, tuned.eval()(ids), atol=1e-5
        )


def test_a_config_without_a_cache_setting_is_saved_without_one(tmp_path):
    albert = transformers.AlbertConfig(
        vocab_size=VOCABULARY, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=64
    )
    transformers.AutoModelForSequenceClassification.from_config(albert).save_pretrained(tmp_path / "in")
    model = SequenceClassifier(str(tmp_path / "in"))
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "use_cache" not in saved and saved["model_type"] == "albert"
