"""The GPU benchmark refuses clearly where there is no GPU (its numbers come from a lent H100)."""

from __future__ import annotations

import pytest
import torch

from rlprune.bench import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu.main([])


def test_shapes_must_fit_the_tiles():
    with pytest.raises(SystemExit, match="multiples of 64"):
        gpu.main(["--sizes", "100"])


def test_geometric_mean_and_summary_of_recorded_results():
    # the recorded H100 results (benchmarks/results/gpu_h100.json) summarize as the table shows
    rows = [
        {"speedup_vs_fp16": {"int8": 2.0, "int8_24": 4.0}, "int8_24_vs_int8": 2.0},
        {"speedup_vs_fp16": {"int8": 0.5}},
    ]
    out = gpu.summary(rows)
    assert out["int8"] == pytest.approx(1.0)
    assert out["int8_24"] == pytest.approx(4.0)
    assert out["int8_24_vs_int8"] == pytest.approx(2.0)


def test_network_policies_prune_free_layers_in_steps_of_eight():
    from rlprune.layers import discover_layers, filter_couplings
    from rlprune.models import MobileNetV2

    model, example = MobileNetV2(in_channels=3, num_classes=10, dims=2).eval(), torch.randn(2, 3, 32, 32)
    layers = discover_layers(model, example)
    couplings = filter_couplings(model, example, layers)
    policies = gpu.filter_policies(layers, couplings, count=8, seed=0)
    assert len(policies) == 8 and len(policies[3]) == 0  # the last uniform ratio is 1: nothing pruned
    free = {lay.name for lay in layers if couplings[lay.name].blocked is None}
    for policy in policies:
        for name, choice in policy:
            assert name in free and choice.keep % 8 == 0 and 8 <= choice.keep < choice.group
    assert len({tuple(policy) for policy in policies[4:]}) == 4  # random ones differ


def test_the_language_model_of_the_deploy_bench_takes_token_ids_and_bakes_its_policies():
    from rlprune.bench import gpu_deploy
    from rlprune.cuda.timing import baked_policy
    from rlprune.layers import discover_layers

    model, inputs = gpu_deploy.zoo_model("lm")
    example = inputs(2)
    assert example.dtype == torch.int64 and example.shape == (2, gpu_deploy.TOKENS)
    layers = discover_layers(model.eval(), example)
    assert len(layers) == 25 and all(lay.kind == "linear" for lay in layers)  # 6 blocks of 4, the head
    named = gpu_deploy.named_policies(layers)
    assert len(named["all_linear_24"]) == 24 and len(named["mlp_24"]) == 12
    baked = baked_policy(model, named["all_linear_24"], example)
    with torch.no_grad():
        assert baked(example).shape == (2, gpu_deploy.TOKENS, gpu_deploy.VOCABULARY)
    qkv = baked.get_submodule(layers[0].name).weight.reshape(-1, 4)
    assert ((qkv != 0).sum(dim=1) <= 2).all()  # 2:4 baked in
