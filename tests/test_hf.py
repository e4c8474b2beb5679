"""Hugging Face causal LMs from a local folder (model=hf, data=text_file): a GPT-2 style model (its
projections transformers' Conv1D) and a Llama style one (nn.Linear), built from a config, never downloaded."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlprune.data.text import VOCABULARY, generate_tokens

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from rlprune.compress import bake, compress  # noqa: E402
from rlprune.errors import ConfigError, DataError  # noqa: E402
from rlprune.finish import own_state_dict  # noqa: E402
from rlprune.layers import discover_layers  # noqa: E402
from rlprune.models.hf import CausalLM, linear_from_conv1d  # noqa: E402
from rlprune.policy import Choice, Pattern, Policy  # noqa: E402
from tests.test_cli import rlprune  # noqa: E402


def _corpus(path: Path, sequences: int = 300) -> Path:
    """A text file of the embedded grammar's sentences (words separated by spaces)."""
    rows = generate_tokens(sequences, seed=5)
    path.write_text("\n".join(" ".join(VOCABULARY[t] for t in row[1:]) for row in rows))
    return path


def _tokenizer(text: Path) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer trained on ``text`` here (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train([str(text)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _save(kind: str, folder: Path, text: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny randomly initialised ``kind`` (gpt2 or llama) model in ``dtype`` and its tokenizer,
    saved in ``folder``."""
    tokenizer = _tokenizer(text)
    vocab = len(tokenizer)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _corpus(tmp_path_factory.mktemp("text") / "corpus.txt")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def saved(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, text: Path
) -> tuple[str, Path]:
    return request.param, _save(request.param, tmp_path_factory.mktemp(request.param), text)


def test_conv1d_becomes_the_linear_that_computes_the_same():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv1D(6, 4), torch.nn.ReLU(), Conv1D(3, 6))
    x = torch.randn(2, 5, 4)
    before = net(x)
    assert linear_from_conv1d(net) == ["0", "2"]
    assert [type(m) for m in net] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert net[0].weight.shape == (6, 4)  # (out, in), as every Linear: N:M groups run along the input
    assert torch.allclose(net(x), before, atol=1e-6)


def test_a_compressed_model_is_saved_in_transformers_own_format(saved, tmp_path):
    from transformers.pytorch_utils import Conv1D

    kind, folder = saved
    model = CausalLM(str(folder)).eval()
    tokens = torch.randint(len(_tokenizer_of(folder)), (2, 16))
    names = [layer.name for layer in discover_layers(model, tokens)]
    policy = Policy.of({name: Choice(Pattern.NM, 2, 4, 4, 32) for name in names})  # 2:4, 4-bit weights
    baked = bake(compress(model, policy)).eval()
    model.save_pretrained(tmp_path / "out", own_state_dict(baked, model))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).eval()
    with torch.no_grad():
        expected = baked(tokens)
        assert not torch.allclose(expected, model(tokens), atol=1e-3)  # the compression changed it
        assert torch.allclose(loaded(input_ids=tokens).logits, expected, atol=1e-5)
    projection = (
        loaded.transformer.h[0].attn.c_attn if kind == "gpt2" else loaded.model.layers[0].self_attn.q_proj
    )
    assert isinstance(projection, Conv1D if kind == "gpt2" else torch.nn.Linear)
    assert loaded.config.use_cache  # the key-value cache rlprune turned off is back for generation
    assert _tokenizer_of(tmp_path / "out").get_vocab() == _tokenizer_of(folder).get_vocab()
    assert model.model.config.use_cache is False and isinstance(
        model.get_submodule(names[0]), torch.nn.Linear
    )


def test_a_bfloat16_checkpoint_is_saved_back_in_bfloat16_unchanged(tmp_path, text):
    from safetensors.torch import load_file

    folder = _save("gpt2", tmp_path / "in", text, torch.bfloat16)
    model = CausalLM(str(folder))
    assert next(model.parameters()).dtype == torch.float32  # searched and trained in float32
    model.save_pretrained(tmp_path / "out")
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() <= after.keys()  # and the untied head
    assert all(after[key].dtype == torch.bfloat16 and torch.equal(after[key], before[key]) for key in before)


def test_loaded_model_is_searchable_layer_by_layer(saved):
    kind, folder = saved
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    model = CausalLM(str(folder)).eval()
    tokens = torch.randint(len(_tokenizer_of(folder)), (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(tokens), reference(input_ids=tokens).logits, atol=1e-5)
    layers = discover_layers(model, tokens)
    names = [layer.name for layer in layers]
    assert all(layer.kind == "linear" for layer in layers) and names[-1] == "model.lm_head"
    if kind == "gpt2":  # Conv1D projections, found as Linear layers
        expected = {"model.transformer.h.0.attn.c_attn", "model.transformer.h.1.mlp.c_proj"}
    else:
        expected = {"model.model.layers.0.self_attn.q_proj", "model.model.layers.1.mlp.down_proj"}
    assert expected <= set(names)
    assert layers[0].in_shape[0] == 16 and layers[0].macs == 16 * layers[0].params  # costed per token
    # a 2:4 mask on every layer keeps half of each group of four along the input
    policy = Policy.of({name: Choice(Pattern.NM, 2, 4) for name in names})
    baked = bake(compress(model, policy))
    for name in names:
        weight = baked.get_submodule(name).weight
        assert ((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    embedding = baked.model.get_input_embeddings().weight
    assert (embedding != 0).all()  # the head's mask left the (formerly tied) embedding whole


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail the block after ``seconds``: a search of a graph that never ends fails the test."""

    def expire(*_args: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    except TimeoutError:
        raise AssertionError(f"still running after {seconds} s") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_filter_couplings_of_rotary_and_fused_attention_end_and_keep_the_heads():
    """From a Llama's queries and keys Torch-Pruning's walk of the dependency graph did not end
    (the rotary embedding); Phi-3's fused qkv projection was taken for prunable filters."""
    from rlprune.layers import SPLIT_CHANNELS, filter_couplings

    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, pad_token_id=0,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    tokens = torch.randint(64, (2, 16))
    for config, heads, mlp in (
        (transformers.LlamaConfig(**shape), ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")),
        (transformers.Phi3Config(**shape), ("qkv_proj",), ()),
    ):
        torch.manual_seed(0)
        model = CausalLM(model=transformers.AutoModelForCausalLM.from_config(config)).eval()
        layers = discover_layers(model, tokens)
        with _deadline(120):
            couplings = filter_couplings(model, tokens, layers)
        fixed = {name.rsplit(".", 1)[-1]: c.fixed for name, c in couplings.items() if ".layers.0." in name}
        assert all(fixed[name] == SPLIT_CHANNELS for name in heads), (config.model_type, fixed)
        assert all(fixed[name] is None for name in mlp), (config.model_type, fixed)


def test_a_loaded_model_is_wrapped_as_it_is_and_a_bare_one_is_named(saved):
    from rlprune.errors import ModelError

    _, folder = saved
    reference = CausalLM(str(folder)).eval()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokens = torch.randint(len(_tokenizer_of(folder)), (2, 16))
    with pytest.raises(
        ModelError, match=r"returns a CausalLMOutput\w*, not a tensor of logits: .*models\.hf\.CausalLM"
    ):
        discover_layers(loaded, tokens)  # as a search of the bare model would
    wrapped = CausalLM(model=loaded).eval()
    assert wrapped.model is loaded  # adapted in place, not copied
    with torch.no_grad():
        assert torch.allclose(wrapped(tokens), reference(tokens), atol=1e-6)
    assert [layer.name for layer in discover_layers(wrapped, tokens)] == [
        layer.name for layer in discover_layers(reference, tokens)
    ]


def _tokenizer_of(folder: Path) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_text_file_reads_blocks_through_the_tokenizer(saved, text):
    from rlprune.data import load_splits

    _, folder = saved
    splits = load_splits("text_file", "/unused", 0.2, 0, path=str(text), tokenizer=str(folder), size=32)
    assert splits.per_token and splits.train_x.dtype == torch.int64 and splits.input_shape == (32,)
    assert torch.equal(splits.train_x[:, 1:], splits.train_y[:, :-1])
    ids = _tokenizer_of(folder)(text.read_text())["input_ids"]
    assert splits.test_x[-1].tolist() == ids[(len(ids) // 33 - 1) * 33 :][:32]  # the file's last block
    with pytest.raises(DataError, match="too few"):
        load_splits("text_file", "/unused", 0.2, 0, path=str(text), tokenizer=str(folder), size=100_000)
    with pytest.raises(ConfigError, match=r"data\.path is not set"):
        load_splits("text_file", "/unused", 0.2, 0, tokenizer=str(folder))
    with pytest.raises(ConfigError, match="no such folder"):
        load_splits("text_file", "/unused", 0.2, 0, path=str(text), tokenizer=str(folder / "absent"))


def test_missing_folder_is_a_clear_error(tmp_path):
    from rlprune.errors import ModelError

    with pytest.raises(ModelError, match="no causal LM"):
        CausalLM(str(tmp_path))
    with pytest.raises(ModelError, match="no such folder"):
        CausalLM(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"model\.path is not set"):
        CausalLM(None)


@pytest.mark.slow  # end to end in a subprocess: trains the tiny model briefly, searches, finetunes
def test_quick_search_from_the_cli(saved, text, tmp_path):
    _, folder = saved
    result = rlprune(
        tmp_path,
        "model=hf",
        f"model.path={folder}",
        "model.train_dense=true",  # random weights: train them on the text first (cached)
        "data=text_file",
        f"data.path={text}",
        "data.size=32",
        "dense.epochs=4",
        "dense.lr=0.003",
        "search.evaluations=20",
        "finetune.epochs=1",
        "progress_bar=false",
        "wandb.mode=disabled",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["latency"] <= report["budget"] + 1e-9
    lm = report["language_model"]
    assert lm["perplexity"]["dense_test"] < len(_tokenizer_of(folder)) / 2  # it learned something
    assert lm["kl_to_dense_test"] >= 0
    assert "perplexity: dense test" in result.stdout
    # the compressed model loads without rlprune, and computes what model.pt does
    assert report["model_hf"] == {"folder": "model_hf", "tokenizer": True}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model_hf", local_files_only=True)
    compressed = CausalLM(str(folder))
    compressed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    tokens = _tokenizer_of(tmp_path / "model_hf")(text.read_text(), return_tensors="pt").input_ids[:, :32]
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(input_ids=tokens).logits, compressed.eval()(tokens), atol=1e-5)


@pytest.mark.slow  # trains the tiny model briefly, then searches, finetunes and reports in process
def test_a_loaded_model_runs_the_whole_chain_from_python(saved, tmp_path):
    import numpy as np

    from rlprune import api
    from rlprune.training import TrainSettings, train

    _, folder = saved
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    rows = np.asarray(generate_tokens(300, seed=5))[:, :33] % len(_tokenizer_of(folder))
    x, y = rows[:, :-1], rows[:, 1:]  # (N, 32) ids, the next token at every position
    model = CausalLM(model=loaded)
    settings = TrainSettings(epochs=20, batch_size=32)
    train(model, torch.from_numpy(x[:240]), torch.from_numpy(y[:240]), settings, seed=0)
    quick = ["search.evaluations=20", "finetune.epochs=1", "progress_bar=false", "wandb.mode=disabled"]
    report = api.run_network(model, (x[:240], y[:240], x[240:], y[240:]), tmp_path / "run", quick)
    assert (
        report["run"]["model"] == "rlprune.models.hf.CausalLM"
        and report["latency"] <= report["budget"] + 1e-9
    )
    assert report["language_model"]["perplexity"]["dense_test"] < len(_tokenizer_of(folder)) / 2
    assert report["model_hf"] == {"folder": "model_hf", "tokenizer": False}  # no folder to take one from
    assert transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "run" / "model_hf", local_files_only=True
    )
