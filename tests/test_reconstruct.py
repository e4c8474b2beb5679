"""Layer-wise reconstruction (rlprune/reconstruct.py): each fit solves what it says it does, and a
reconstructed network computes closer to the dense one than the masked one did."""

import copy
import pickle

import pytest
import torch
from rlprune.envs import PolicyEvaluator
from rlprune.envs.evaluator import evaluate_against
from torch import nn
from torch.nn import functional as F

from rlprune.compress import compress, dense_weight, removed_inputs, weight_parametrization
from rlprune.data import Splits
from rlprune.errors import ConfigError, RlpruneError
from rlprune.finetune import FinetuneSettings, finetune
from rlprune.hardware.factory import load_latency_model
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import MNIST1DCNN
from rlprune.policy import Choice, Pattern, Policy
from rlprune.quant import fake_quantize_weight
from rlprune.reconstruct import (
    DAMPING,
    LayerFits,
    LayerInputs,
    fit_layer,
    fits,
    layer_inputs,
    least_squares_fit,
    quantized_fit,
    reconstruct,
)
from rlprune.report import layer_rows
from rlprune.training import TrainSettings, evaluate
from tests.support import compose_config


def correlated_inputs(samples: int, columns: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    return torch.randn(samples, columns, generator=generator) @ mixing + 0.3


def output_error(weight: torch.Tensor, dense: torch.Tensor, hessian: torch.Tensor) -> float:
    difference = (weight - dense).double()
    return float(torch.einsum("grc,gcd,grd->", difference, hessian.double(), difference))


@pytest.fixture
def problem():
    """Two groups of 6 rows over 40 correlated inputs, half of each row's weights kept at random."""
    generator = torch.Generator().manual_seed(0)
    x = torch.stack([correlated_inputs(500, 40, seed) for seed in (1, 2)])
    hessian = x.transpose(1, 2) @ x
    weight = torch.randn(2, 6, 40, generator=generator)
    keep = torch.rand(2, 6, 40, generator=generator) < 0.5
    return weight, keep, hessian


def test_least_squares_fit_solves_each_rows_own_system(problem):
    weight, keep, hessian = problem
    fitted = least_squares_fit(weight, keep, LayerInputs.unchanged(hessian))
    assert torch.equal(fitted[~keep], torch.zeros_like(fitted[~keep]))
    recovered = []
    for g in range(2):
        damped = hessian[g].double()
        damped += DAMPING * damped.diagonal().mean() * torch.eye(40, dtype=torch.float64)
        for r in range(6):
            kept, pruned, w = keep[g, r], ~keep[g, r], weight[g, r].double()
            # minimise (v - w) H (v - w)ᵀ over v zero where pruned: H_KK v_K = H_KK w_K + H_KP w_P
            exact = torch.zeros_like(w)
            exact[kept] = w[kept] + torch.linalg.solve(
                damped[kept][:, kept], damped[kept][:, pruned] @ w[pruned]
            )
            errors = [float((v - w) @ damped @ (v - w)) for v in (w * kept, fitted[g, r].double(), exact)]
            recovered.append((errors[0] - errors[1]) / (errors[0] - errors[2]))
    # judged by the output error, not weight by weight: the inputs are correlated, so directions
    # that barely change the output are left where they are
    assert min(recovered) > 0.99


def test_least_squares_fit_brings_the_output_on_changed_inputs_back_to_the_dense_one():
    generator = torch.Generator().manual_seed(3)
    dense_x = correlated_inputs(500, 40, 1)[None]
    x = dense_x + 0.2 * torch.randn(dense_x.shape, generator=generator)  # what compressed layers pass on
    x[..., :4] = 0  # inputs a pruned filter upstream silenced
    xt, dense_xt = x.transpose(1, 2), dense_x.transpose(1, 2)
    inputs = LayerInputs(xt @ x, dense_xt @ x, dense_xt @ dense_x)
    weight = torch.randn(1, 6, 40, generator=generator)
    keep = torch.rand(1, 6, 40, generator=generator) < 0.5
    fitted = least_squares_fit(weight, keep, inputs)
    assert torch.equal(fitted[~keep], torch.zeros_like(fitted[~keep]))
    ridge = DAMPING * (inputs.hessian[0].diagonal().sum() + 4) / 40 + (torch.arange(40) < 4)
    hessian, cross = (
        moment[0].double() + torch.diag(ridge).double() for moment in (inputs.hessian, inputs.cross)
    )

    def error(v: torch.Tensor, w: torch.Tensor) -> float:  # ‖w X_d − v X‖², the ridge on v − w
        gap = dense_x[0].double() @ w - x[0].double() @ v
        return float((gap**2).sum() + ((v - w) ** 2 * ridge).sum())

    for r in range(6):
        kept, w = keep[0, r], weight[0, r].double()
        exact = torch.zeros_like(w)  # H_KK v_K = (w C)_K
        exact[kept] = torch.linalg.solve(hessian[kept][:, kept], (w @ cross)[kept])
        masked, reached, best = (error(v, w) for v in (w * kept, fitted[0, r].double(), exact))
        assert (masked - reached) > 0.99 * (masked - best)
        # the weights' own inputs are not the target: fit to them, the row recovers less
        own = torch.zeros_like(w)
        own[kept] = torch.linalg.solve(hessian[kept][:, kept], (w @ hessian)[kept])
        assert reached < error(own, w)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantized_fit_stays_on_the_grid_the_forward_pass_derives_and_beats_rounding(problem, bits):
    weight, keep, hessian = problem
    masked = weight * keep
    fitted = quantized_fit(masked, keep, hessian, bits)
    assert torch.equal(fitted[~keep], torch.zeros_like(fitted[~keep]))
    rows = fitted.reshape(12, 40)
    # the forward pass rounds again with the step it derives from the row: nothing moves
    assert torch.equal(fake_quantize_weight(rows, bits), rows)
    rounded = fake_quantize_weight(masked.reshape(12, 40), bits).reshape_as(masked)
    assert output_error(fitted, masked, hessian) < 0.9 * output_error(rounded, masked, hessian)


def grouped_columns(layer: nn.Module, seen: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return seen[None]
    unfolded = F.unfold(seen, layer.kernel_size, padding=layer.padding, stride=layer.stride)
    rows = unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])
    return rows.reshape(len(rows), layer.groups, -1).transpose(0, 1)


def test_layer_inputs_pair_each_group_with_the_inputs_it_multiplies_and_the_dense_networks():
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.Conv2d(6, 6, 3, stride=2, groups=6),
        nn.Flatten(),
        nn.Linear(54, 5),
    )
    model = copy.deepcopy(dense)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.randn(3, 4, 8, 8)
    names = ["0", "1", "3"]
    alone = layer_inputs(model, names, [x[:2], x[2:]])
    paired = layer_inputs(model, names, [x[:2], x[2:]], dense=dense)

    def reads(network: nn.Module) -> dict[str, torch.Tensor]:
        return {"0": x, "1": network[0](x), "3": network[2](network[1](network[0](x)))}

    seen, dense_seen = reads(model), reads(dense)
    for name in names:
        layer = model.get_submodule(name)
        columns, dense_columns = grouped_columns(layer, seen[name]), grouped_columns(layer, dense_seen[name])
        expected = {
            "hessian": columns.transpose(1, 2) @ columns,
            "cross": dense_columns.transpose(1, 2) @ columns,
            "dense": dense_columns.transpose(1, 2) @ dense_columns,
        }
        for part, product in expected.items():
            torch.testing.assert_close(getattr(paired[name], part), product, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(getattr(alone[name], part), expected["hessian"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(paired["3"].cross, paired["3"].hessian)  # the perturbation shows


class Repeat(nn.Module):
    """A Linear applied ``times`` times after ``pre``: control flow that differs between two copies."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times, self.pre, self.linear = times, nn.Identity(), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        for _ in range(self.times):
            x = self.linear(x)
        return x


def test_layer_inputs_refuse_calls_the_dense_network_did_not_make():
    dense = Repeat(1)
    model = copy.deepcopy(dense)
    model.times = 2
    with pytest.raises(RlpruneError, match="'linear' is called more often in the compressed network"):
        layer_inputs(model, ["linear"], [torch.randn(3, 4)], dense=dense)
    dense.pre, dense.linear = nn.Linear(4, 3), nn.Linear(3, 4)  # the first calls pair, not their inputs
    with pytest.raises(RlpruneError, match=r"shape \(3, 4\) in the compressed network and \(3, 3\)"):
        layer_inputs(model, ["linear"], [torch.randn(3, 4)], dense=dense)


def test_no_layers_no_pass():
    model = nn.Sequential(nn.Linear(4, 2))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    assert layer_inputs(model, [], [torch.randn(3, 4)]) == {} and calls == []


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.depthwise = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.depthwise(F.relu(self.conv2(x))))
        return self.fc(x.flatten(1))


def test_reconstruct_brings_the_network_back_towards_dense_and_touches_only_kept_weights():
    torch.manual_seed(0)
    model = ConvNet().eval()
    policy = Policy.of(
        {
            "conv1": Choice(Pattern.FILTER, 10, 16),  # conv2 then reads six silent channels
            "conv2": Choice(Pattern.NM, 2, 4, 4, 32),
            "depthwise": Choice(Pattern.KOFN_WEIGHT, 2, 3),
            "fc": Choice(Pattern.DENSE),  # float and dense: nothing to fit
        }
    )
    compressed = compress(model, policy)
    before = {name: dense_weight(compressed.get_submodule(name)).detach().clone() for name, _ in policy}
    calibration, held_out = torch.randn(256, 2, 12), torch.randn(256, 2, 12)
    with torch.no_grad():
        masked_error = F.mse_loss(compressed(held_out), model(held_out))
        report = reconstruct(compressed, model, [name for name, _ in policy], list(calibration.split(64)))
        fitted_error = F.mse_loss(compressed(held_out), model(held_out))
    assert list(report) == ["conv1", "conv2", "depthwise"]
    # a pruned filter's row has nothing left to fit; the other layers come closer to the dense
    # network's output, conv2 also making up for conv1's lost filters
    assert report["conv1"].fitted == pytest.approx(report["conv1"].compressed)
    assert report["conv2"].fitted < 0.6 * report["conv2"].compressed
    assert report["depthwise"].fitted < report["depthwise"].compressed
    assert fitted_error < 0.8 * masked_error
    for name, _ in policy:
        weight, mask = (
            dense_weight(compressed.get_submodule(name)),
            weight_parametrization(compressed.get_submodule(name)).mask,
        )
        assert torch.equal(weight[~mask], before[name][~mask])  # the pruned keep their dense values
        assert torch.isfinite(weight).all()
    assert torch.equal(dense_weight(compressed.fc), before["fc"])


def test_a_layer_the_policy_leaves_dense_makes_up_for_the_filters_pruned_before_it():
    torch.manual_seed(0)
    model = ConvNet().eval()
    policy = Policy.of({"conv1": Choice(Pattern.FILTER, 10, 16)})
    example = torch.randn(1, 2, 12)
    couplings = filter_couplings(model, example, discover_layers(model, example))
    compressed = compress(model, policy, couplings=couplings)
    removed = removed_inputs(policy, {"conv1": weight_parametrization(compressed.conv1).mask}, couplings)
    calibration, held_out = torch.randn(256, 2, 12), torch.randn(256, 2, 12)
    names = ["conv1", "conv2", "depthwise", "fc"]
    with torch.no_grad():
        masked_error = F.mse_loss(compressed(held_out), model(held_out))
        report = reconstruct(compressed, model, names, list(calibration.split(64)), removed=removed)
        fitted_error = F.mse_loss(compressed(held_out), model(held_out))
    assert list(report) == ["conv1", "conv2"]  # conv2 loses six inputs; the others keep theirs
    assert report["conv2"].fitted < 0.6 * report["conv2"].compressed
    lost = removed["conv2"]  # they feed zeros: left as they were, for a filter mask that moves in training
    assert torch.equal(compressed.conv2.weight[:, lost], model.conv2.weight[:, lost])
    assert fitted_error < 0.8 * masked_error


@pytest.mark.parametrize("samples", [64, 2048])
def test_the_ridge_is_chosen_on_held_out_batches_where_samples_are_few(samples):
    """A Linear reads one column per sample: 64 samples for 96 inputs let the smallest ridge fit
    the calibration noise, so the held-out batches choose a stronger one, which computes closer
    to dense on fresh inputs; 2048 samples need none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 8)).eval()
    compressed = compress(model, Policy.of({"0": Choice(Pattern.KOFN_WEIGHT, 24, 96)}))
    fixed = copy.deepcopy(compressed)
    inputs = correlated_inputs(samples + 4096, 96, seed=1)  # one distribution
    batches, fresh = list(inputs[:samples].split(samples // 4)), inputs[samples:]
    with torch.no_grad():
        masked = F.mse_loss(compressed(fresh), model(fresh)).item()
        chosen = reconstruct(compressed, model, ["0"], batches)["0"].damping
        fit_layer(fixed.get_submodule("0"), layer_inputs(fixed, ["0"], batches)["0"], DAMPING)
        errors = {net: F.mse_loss(net(fresh), model(fresh)).item() for net in (compressed, fixed)}
    assert errors[compressed] < 0.9 * masked
    if samples == 64:
        assert chosen is not None and chosen > DAMPING
        assert errors[fixed] > masked  # the smallest ridge fit the noise: worse than the masks alone
        assert errors[compressed] < 0.9 * errors[fixed]
    else:
        assert chosen == DAMPING
        assert errors[compressed] == pytest.approx(errors[fixed], rel=1e-4)


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=16).eval()
    x = torch.randn(160, 1, 40)
    y = model(x).argmax(1)  # labels the dense network gets right: the masks are what costs
    splits = Splits(x[:96], y[:96], x[96:128], y[96:128], x[128:], y[128:], num_classes=10)
    layers = discover_layers(model, x)
    policy = Policy.of({layer.name: Choice(Pattern.NM, 2, 4, 4, 32) for layer in layers})
    return model, splits, layers, policy


def settings(**kwargs) -> FinetuneSettings:
    return FinetuneSettings(train=TrainSettings(epochs=0, lr=1e-3, batch_size=32, weight_decay=0.0), **kwargs)


def test_a_one_shot_finetune_with_reconstruction_scores_better_and_reports_each_layers_fit(target):
    model, splits, layers, policy = target
    plain = finetune(model, policy, layers, splits, settings(), seed=0)
    fitted = finetune(model, policy, layers, splits, settings(reconstruct=True), seed=0)
    assert (
        evaluate(fitted.model, splits.test_x, splits.test_y).loss
        < evaluate(plain.model, splits.test_x, splits.test_y).loss
    )
    for name, _ in policy:
        metrics = fitted.metrics[name]
        assert metrics["output_error_fitted"] < metrics["output_error_compressed"]
        assert "output_error_fitted" not in plain.metrics[name]
    rows = layer_rows(layers, fitted.policy, load_latency_model("a100"), {}, fitted.metrics)
    assert all(row["output_error_fitted"] is not None for row in rows)


def test_learned_masks_are_not_fitted(target):
    model, splits, layers, policy = target
    tuned = finetune(model, policy, layers, splits, settings(reconstruct=True, mask="learned"), seed=0)
    quantized = [name for name, choice in policy if choice.w_bits <= 8]
    assert not any(fits(tuned.model.get_submodule(name)) for name, _ in policy)
    assert quantized and all("output_error_fitted" not in tuned.metrics[name] for name in quantized)


def test_reconstruct_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"finetune\.reconstruct must be true or false"):
        settings(reconstruct="yes")


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(16, 16) for _ in range(4))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 4, dim=-1)
        return self.head(F.relu(self.out(weights @ self.v(x)))).mean(1)


def test_layers_reading_one_tensor_share_a_pass_that_ends_early_and_fit_the_same():
    torch.manual_seed(0)
    model = Attention().eval()
    names = ["q", "k", "v", "out", "head"]
    policy = Policy.of({name: Choice(Pattern.NM, 2, 4, 4, 8) for name in names})
    batches = list(torch.randn(4, 8, 6, 16))
    fitted, head_calls = {}, {}
    for mode, calls in (("alone", None), ("shared", dict.fromkeys(names, 1))):
        compressed = compress(model, policy)
        head_calls[mode] = 0

        def count(*_, mode: str = mode) -> None:
            head_calls[mode] += 1

        compressed.head.register_forward_hook(count)
        reconstruct(compressed, model, names, batches, calls)
        fitted[mode] = {name: dense_weight(compressed.get_submodule(name)).detach() for name in names}
    for name in names:
        torch.testing.assert_close(fitted["shared"][name], fitted["alone"][name], rtol=1e-5, atol=1e-6)
    # alone: five layers, four whole passes each; shared: q, k and v in one pass that ends where
    # `out` reads, `out`'s ends where `head` reads, and only `head`'s own pass runs it
    assert head_calls == {"alone": 20, "shared": 4}


# The search's fits (search.reconstruct): each layer alone, on the dense network's inputs.


def test_a_layer_fit_with_its_silenced_inputs_left_out_computes_closer_to_dense_on_what_it_reads():
    torch.manual_seed(0)
    model = ConvNet().eval()
    policy = Policy.of({"conv1": Choice(Pattern.FILTER, 10, 16), "conv2": Choice(Pattern.DENSE, w_bits=4)})
    example = torch.randn(1, 2, 12)
    couplings = filter_couplings(model, example, discover_layers(model, example))
    compressed = compress(model, policy, couplings=couplings)
    masks = {"conv1": weight_parametrization(compressed.conv1).mask}
    removed = removed_inputs(policy, masks, couplings)["conv2"]
    fits = LayerFits(model, ["conv2"], list(torch.randn(256, 2, 12).split(64)))
    x = torch.randn(128, 2, 12)
    with torch.no_grad():
        live, reads = F.relu(model.conv1(x)), F.relu(compressed.conv1(x))
        dense_output = F.conv1d(live, model.conv2.weight, padding=1)

        def error(weight: torch.Tensor) -> float:  # conv2's output error on what it reads compressed
            output = F.conv1d(reads, fake_quantize_weight(weight, 4), padding=1)
            return float(F.mse_loss(output, dense_output))

        knowing, unaware = fits.weight(compressed, "conv2", removed), fits.weight(compressed, "conv2")
    assert len(removed) == 6 and reads[:, removed].abs().max() == 0
    assert (knowing[:, removed] == 0).all()  # they multiply zeros
    assert error(knowing) < min(error(unaware), error(model.conv2.weight.detach()))


def fits_target():
    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=16).eval()
    x = torch.randn(192, 1, 40)
    y = model(x).argmax(1)
    layers = discover_layers(model, x[:1])
    return model, x, y, [layer.name for layer in layers], filter_couplings(model, x[:1], layers)


def test_the_search_scores_a_compressed_policy_fitted_as_layer_fits_apply_it():
    model, x, y, names, couplings = fits_target()
    policy = Policy.of(
        {
            "conv1": Choice(Pattern.FILTER, 5, 8),
            "conv2": Choice(Pattern.DENSE, w_bits=4),  # reads conv1's silenced channels
            "conv3": Choice(Pattern.NM, 2, 4, 8, 8),
            "conv4": Choice(Pattern.KOFN_WEIGHT, 20, 48, 4, 8),
            "fc1": Choice(Pattern.NM, 1, 4, 4, 32),
            "fc2": Choice(),  # dense and float: nothing to fit
        }
    )
    other = Policy.of({name: Choice(Pattern.NM, 1, 4, 3, 32) for name in names})
    scored = {"couplings": couplings, "reference": True}
    plain = PolicyEvaluator(model, names, x[:96], y[:96], **scored)
    fitted = PolicyEvaluator(model, names, x[:96], y[:96], **scored, fit_inputs=x[96:])
    for evaluator in (plain, fitted):
        evaluator(other)  # another policy's masks and fits first: each policy starts from dense weights
    compressed = compress(model, policy, couplings=couplings)
    LayerFits(model, names, list(x[96:].split(128))).apply(compressed, policy, couplings)
    assert fitted(policy) == evaluate_against(compressed, x[:96], y[:96], fitted.reference)
    assert fitted(policy).kl < 0.5 * plain(policy).kl  # KL(dense ‖ policy): the fits bring it back
    assert fitted(Policy.of({})) == plain(Policy.of({}))  # dense and float: the dense network
    again = pickle.loads(pickle.dumps(fitted))  # a parallel env's worker rebuilds its own
    assert again(policy) == fitted(policy)


def test_fits_are_cached_per_layer_and_option():
    model, x, y, names, _ = fits_target()
    evaluator = PolicyEvaluator(model, names, x[:96], y[:96], fit_inputs=x[96:])
    low = {name: Choice(Pattern.NM, 2, 4, 4, 32) for name in names}
    evaluator(Policy.of(low))
    assert len(evaluator._fitted) == len(names)
    evaluator(Policy.of({**low, "fc2": Choice(Pattern.NM, 1, 4, 4, 32)}))  # one layer's option changes
    assert len(evaluator._fitted) == len(names) + 1
    evaluator(Policy.of({**low, "fc2": Choice()}))  # fc2 left dense and float: not fitted
    assert len(evaluator._fitted) == len(names) + 1


def test_search_reconstruct_is_off_unless_set():
    assert compose_config().search.reconstruct is False
    assert compose_config("finetune.reconstruct=true").search.reconstruct is False
    assert compose_config("search.reconstruct=true").search.reconstruct is True
