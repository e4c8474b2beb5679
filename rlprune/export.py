"""Export a policy to a physically smaller (or int8) network that runs faster on a CPU.

* :func:`export_filter_pruned`: every layer whose choice is ``Pattern.FILTER`` keeps
  ``choice.keep`` of its output channels, the filters with the largest L1 norm; the channels
  are removed for real with Torch-Pruning's dependency graph, so coupled layers follow (the
  next layer's input channels, batch norms, the layers tied by residual adds, depthwise
  convolutions).
  - **Coupled requests** (requested layers in one group, as the convolutions that feed the
    same residual add): their filters are ranked together (:func:`rlprune.masks.tied_filter_masks`,
    as the masks are) and the group keeps the *first listed* layer's count; later requests
    on an already pruned group are ignored (:func:`export_filter_pruned` logs those that ask
    for another count).
  - The final classifier's outputs are never pruned (:class:`ConfigError`).
* :func:`effective_layers`: the :class:`LayerInfo` of the layers after export (fewer
  output and input channels), so a latency model can cost a filter-pruned network. Cost them
  with a dense choice at the layer's bits: the filter pruning is already in their shapes.
* :func:`export_int8`: post-training static int8 quantization (FX graph mode, x86/fbgemm
  engine, a few calibration batches; batch norm and ReLU are fused into the int8 convs),
  of every layer or of those a mixed-precision policy runs at 8 bits.
* :func:`to_torchscript`: the deployed form of an export, traced and frozen TorchScript. It
  runs without Python between the ops, and int8 needs it: called from Python, each quantized
  op throws and catches two C++ exceptions (PyTorch looks up ``__torch_function__`` on its
  packed weights), 24 µs for a 64x10 int8 Linear at batch 1 on an AMD EPYC.
* :func:`fold_batch_norms`: a float deploy copy with every batch norm folded into the conv
  before it (what an inference runtime does), for timing float exports fairly.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from rlprune.data import random_inputs
from rlprune.errors import ConfigError, ModelError
from rlprune.layers import PRUNABLE_TYPES, LayerInfo, dependency_graph, discover_layers, precision_sources
from rlprune.masks import pruned_filters, tied_filter_masks
from rlprune.policy import Choice, Pattern, Policy

if TYPE_CHECKING:
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

log = logging.getLogger(__name__)


def _classifier_name(model: nn.Module, example: torch.Tensor) -> str:
    """The last prunable layer in forward order: the network's output layer."""
    return discover_layers(model, example)[-1].name


def export_filter_pruned(model: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
    """A physically smaller copy of ``model`` with the policy's filter pruning applied.

    Args:
        model: the network (unchanged; a deep copy is pruned). Weight parametrizations from
            :mod:`rlprune.compress` must be removed first.
        policy: per layer a choice; only ``Pattern.FILTER`` choices prune (``keep`` of
            ``group = out_channels`` filters kept). Other patterns are ignored here.
        example: an input batch, for tracing the dependency graph.

    Raises:
        ConfigError: a filter choice on the final classifier, on an unknown layer, or with a
            group that is not the layer's ``out_channels``.
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    classifier = _classifier_name(pruned, example)
    requests = [(name, c) for name, c in policy if c.pattern is Pattern.FILTER]
    modules = dict(pruned.named_modules())
    _check_filter_choices(modules, requests, classifier)
    if not any(c.keep < c.group for _, c in requests):
        return pruned
    graph = dependency_graph(pruned, example)

    def group(name: str, idxs: list[int]) -> tp.dependency.Group:
        module = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        return graph.get_pruning_group(module, fn, idxs=idxs)

    def tied_modules(pruning: tp.dependency.Group) -> set[nn.Module]:
        """The modules whose output channels the group prunes (tied by residual adds)."""
        return {dep.target.module for dep, _ in pruning if graph.is_out_channel_pruning_fn(dep.handler)}

    # Rank filters on the original weights, before upstream pruning shrinks their inputs, so the
    # choice of filters does not depend on the order of the policy; requested layers tied by a
    # residual add rank them together, as the masks do.
    drop: dict[str, list[int]] = {}
    for name, choice in requests:
        if name in drop:
            continue
        coupled = tied_modules(group(name, [0]))
        tied = [n for n, _ in requests if n == name or modules[n] in coupled]
        kept = tied_filter_masks({n: modules[n].weight.detach().abs() for n in tied}, choice.keep)
        drop |= {n: pruned_filters(kept[n]) for n in tied}
    done: dict[nn.Module, int] = {}  # pruned module -> the filters its group keeps
    for name, choice in requests:
        module = modules[name]
        if module in done:
            if done[module] != choice.keep:
                log.info(
                    "filter choice for '%s' ignored: its group was pruned to %d filters", name, done[module]
                )
            continue
        idxs = drop[name]
        pruning = group(name, idxs)
        coupled = tied_modules(pruning)
        if idxs:
            if not graph.check_pruning_group(pruning):
                raise ModelError(f"filter choice for '{name}' would remove every channel of a coupled layer")
            with torch.no_grad():
                pruning.prune()
        done |= dict.fromkeys(coupled, choice.keep)
    return pruned


def _check_filter_choices(
    modules: Mapping[str, nn.Module], requests: Sequence[tuple[str, Choice]], classifier: str
) -> None:
    """Refuse a filter choice on a layer that is not a Conv/Linear, whose group is not its
    output count, or that would prune the classes of the final ``classifier``."""
    for name, choice in requests:
        module = modules.get(name)
        if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            raise ConfigError(
                f"filter choice for '{name}': the model has no Conv1d/Conv2d/Linear of that name"
            )
        out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        if choice.group != out:
            raise ConfigError(
                f"filter choice {choice.keep}:{choice.group} on layer '{name}' must have "
                f"group = out_channels = {out}"
            )
        if name == classifier and choice.keep < choice.group:
            raise ConfigError(
                f"layer '{name}' is the final classifier: its {out} outputs are the classes and cannot be "
                "filter-pruned; exclude it from filter pruning (layers.exclude_last=true)"
            )


def effective_layers(
    model: nn.Module, layers: Sequence[LayerInfo], policy: Policy, example: torch.Tensor
) -> list[LayerInfo]:
    """The ``LayerInfo`` of each of ``layers`` in the filter-pruned export, in the same order.

    Output channels shrink where the policy (or a coupled layer) prunes filters, input
    channels where an upstream layer does, so the reductions of the next layers are smaller
    too. Cost them with a dense choice at each layer's bits.
    """
    exported = export_filter_pruned(model, policy, example)
    found = {info.name: info for info in discover_layers(exported, example)}
    missing = [layer.name for layer in layers if layer.name not in found]
    if missing:
        raise ModelError(f"layers {missing} are not on the exported model's forward path")
    return [found[layer.name] for layer in layers]


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A float copy for inference with every ``conv -> batch norm`` pair folded into the conv."""
    from torch.fx.experimental.optimization import fuse

    copy_ = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in copy_.modules()):
        return copy_
    return fuse(copy_)


def to_torchscript(
    model: nn.Module, example: torch.Tensor, channels_last: bool = False
) -> torch.jit.ScriptModule:
    """``model`` traced on ``example`` and frozen: what a deployment loads (``torch.jit.save``/``load``).

    Freezing inlines the submodules and folds the weights into constants, so a call runs the
    ops alone. Tracing records one path through ``forward``: data-dependent control flow is
    fixed to the example's. With ``channels_last``, 4-D weights are stored channels-last (NHWC):
    a 2-D conv then returns channels-last activations whatever its input's order, and the
    layers after it run on them (int8 convs do so anyway). On this machine's CPU that ran a
    float resnet20 at batch 1 in 0.54x (8x8 inputs) to 0.84x (32x32) of its time.

    Raises:
        ModelError: when the model cannot be traced.
    """
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's warnings on constants and Python values
        example = example.clone()  # an inference tensor cannot be traced
        try:
            module = copy.deepcopy(model).eval()
            if channels_last:
                module = module.to(memory_format=torch.channels_last)
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as exc:  # any failure inside the model's forward
            raise ModelError(f"{type(model).__name__} cannot be traced to TorchScript: {exc}") from exc
        return torch.jit.freeze(traced)


def int8_supported() -> str | None:
    """The torch.ao engine that quantizes Linear/Conv on this CPU (x86 or fbgemm), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


def export_int8(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor] | None = None,
    float_layers: Collection[str] = (),
) -> nn.Module:
    """Post-training static int8 quantization (FX graph mode) of ``model`` for this CPU.

    Weights are per-channel qint8, activations per-tensor quint8 with ranges from the
    calibration batches (default: 4 batches of 16 standard-normal samples shaped like
    ``example``). Conv + batch norm + ReLU are fused into one int8 op (:func:`_as_fx_patterns`).
    Layers named in ``float_layers`` stay float (a mixed-precision policy): the export
    dequantizes before them and quantizes after, as torch.ao places those ops, and every op
    whose first operand comes from a float layer runs float too: the max-pools, ReLUs and
    reshapes after it, and a residual add (:func:`_float_after_floats`).

    Raises:
        ModelError: when this CPU has no int8 engine or the model cannot be traced/quantized.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = int8_supported()
    if engine is None:
        raise ModelError(
            f"no int8 engine for Linear/Conv on this CPU (torch.ao engines: "
            f"{torch.backends.quantized.supported_engines}); run the model in float"
        )
    unknown = set(float_layers) - {name for name, _ in model.named_modules()}
    if unknown:
        raise ConfigError(f"float_layers {sorted(unknown)} are not modules of {type(model).__name__}")
    qconfigs = get_default_qconfig_mapping(engine)
    for name in float_layers:
        qconfigs.set_module_name(name, None)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                traced = _as_fx_patterns(torch.fx.symbolic_trace(copy.deepcopy(model).eval()))
                custom = _float_after_floats(traced, float_layers, qconfigs)
                prepared = prepare_fx(traced, qconfigs, (example[:1],), prepare_custom_config=custom)
                gen = torch.Generator().manual_seed(0)
                batches = calibration or [random_inputs(example, 16, gen) for _ in range(4)]
                with torch.no_grad():
                    for batch in batches:
                        prepared(batch)
                return convert_fx(prepared)
            except Exception as exc:  # tracing or a missing quantized op
                raise ModelError(
                    f"{type(model).__name__} cannot be quantized to int8 with torch.ao FX ({engine}): {exc}"
                ) from exc
    finally:
        torch.backends.quantized.engine = previous


class _FloatOp(nn.Module):
    """A function call between layers, as a module torch.ao does not trace into or quantize."""

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.function(*args, **kwargs)


def _float_after_floats(
    graph: torch.fx.GraphModule, float_layers: Collection[str], qconfigs: QConfigMapping
) -> PrepareCustomConfig:
    """Leave float every op between layers whose first operand a float layer computes.

    torch.ao runs every op its global qconfig covers in int8: a float conv2 of a residual block
    then quantizes before the add, and even a float ReLU's output is quantized for the next
    float layer to dequantize, conversions that no pair of layers shows. Run at its first
    operand's layer's precision (:func:`rlprune.layers.precision_sources`), an op converts
    only where its operands' layers differ, as :attr:`rlprune.layers.LayerInfo.neighbours`
    counts. Such a function call becomes a :class:`_FloatOp` (in ``graph``), such a module
    (other than a batch norm, which fuses into its conv) gets no qconfig (in ``qconfigs``);
    returns the config that keeps torch.ao out of the :class:`_FloatOp`.
    """
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    layers = {name for name, module in graph.named_modules() if type(module) in PRUNABLE_TYPES}
    source = precision_sources(graph.graph, layers)
    for i, node in enumerate(list(graph.graph.nodes)):
        if source.get(node) not in float_layers or (node.op == "call_module" and node.target in layers):
            continue
        if node.op == "call_function":
            graph.add_submodule(f"float_op_{i}", _FloatOp(node.target))
            node.op, node.target = "call_module", f"float_op_{i}"
        elif node.op == "call_module" and not isinstance(
            graph.get_submodule(str(node.target)), nn.modules.batchnorm._BatchNorm
        ):
            qconfigs.set_module_name(str(node.target), None)
    graph.recompile()
    return PrepareCustomConfig().set_non_traceable_module_classes([_FloatOp])


def _as_fx_patterns(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` with ``torch.relu`` / ``Tensor.relu`` / ``Tensor.flatten`` spelled as torch.ao's patterns.

    torch.ao fuses Conv, Linear and add with ``F.relu`` but not with ``torch.relu`` or
    ``x.relu()``, and keeps ``torch.flatten`` quantized but dequantizes around ``x.flatten``:
    the same ops spelled otherwise would run a float ReLU between a dequantize and a quantize
    after every int8 layer (1.2-1.5x slower int8 CNNs at batch 1 on an AMD EPYC).
    """
    for node in graph.graph.nodes:
        if node.target is torch.relu or (node.op == "call_method" and node.target == "relu"):
            node.op, node.target = "call_function", nn.functional.relu
        elif node.op == "call_method" and node.target == "flatten":
            node.op, node.target = "call_function", torch.flatten
    graph.recompile()
    return graph
