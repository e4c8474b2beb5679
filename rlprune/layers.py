"""Find the prunable layers of a network and describe them as plain data.

A traced forward pass on one example gives each Conv1d/Conv2d/Linear its input and output
feature-map sizes, from which MACs follow. Everything downstream (hardware models, the env,
the report) works on :class:`LayerInfo` and never on modules.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from rlprune.errors import ModelError
from rlprune.training import eval_mode

if TYPE_CHECKING:
    import torch_pruning as tp

PRUNABLE_TYPES: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
}


@dataclass(frozen=True)
class LayerInfo:
    """Shapes and costs of one prunable layer, for a single input sample.

    Attributes:
        name: the module's qualified name in the model (``model.get_submodule(name)``).
        kind: ``linear``, ``conv1d`` or ``conv2d``.
        in_channels: input channels (Linear: in_features).
        out_channels: output channels (Linear: out_features).
        kernel_size: kernel extent per spatial dim; ``()`` for Linear.
        stride: stride per spatial dim; ``()`` for Linear.
        groups: convolution groups (1 for Linear).
        in_shape: shape of the input activation of one sample, channels first.
        out_shape: shape of the output activation of one sample, channels first.
        has_bias: whether the layer adds a bias.
        neighbours: the other layers whose outputs meet this layer's at one precision (a
            network deployed in mixed float/int8 converts once for each pair that differs):
            the layer its input comes from (through pooling, activations and reshapes), and,
            where its output is summed with others' (a residual add runs at the precision of
            its first operand's layer), the layers those come from (:func:`precision_sources`).
        calls: how often the layer runs in one forward pass: more than once for a module its
            network calls again (a block applied repeatedly, as ALBERT's). Shapes and costs are
            those of its first call; a latency model charges every call
            (:meth:`rlprune.hardware.LatencyModel.latency`).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    has_bias: bool = True
    neighbours: tuple[str, ...] = ()
    calls: int = 1

    @property
    def reduction(self) -> int:
        """Length of the reduction dimension of the 2-D weight view: ``c_in/g * prod(kernel)``."""
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the layer's weight: ``(c_out, c_in/g, *kernel)`` (Linear: ``(out, in)``)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def depthwise(self) -> bool:
        """A conv whose every output channel reads one input channel of its own."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def params(self) -> int:
        """Number of weights (bias excluded)."""
        return self.out_channels * self.reduction

    @property
    def out_positions(self) -> int:
        """Output positions per sample: spatial size for convs, leading dims for Linear."""
        if self.kind == "linear":
            return math.prod(self.out_shape[:-1]) if len(self.out_shape) > 1 else 1
        return math.prod(self.out_shape[1:])

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample: ``positions * c_out * c_in/g * prod(kernel)``."""
        return self.out_positions * self.params

    @property
    def in_elements(self) -> int:
        """Input activation elements per sample."""
        return math.prod(self.in_shape)

    @property
    def out_elements(self) -> int:
        """Output activation elements per sample."""
        return math.prod(self.out_shape)

    def with_channels(self, in_channels: int, out_channels: int) -> LayerInfo:
        """The same layer with fewer channels, as after filter pruning here or upstream."""
        in_shape = _set_channels(self.in_shape, in_channels, self.kind)
        out_shape = _set_channels(self.out_shape, out_channels, self.kind)
        groups = self.groups
        if groups > 1 and groups == self.in_channels:  # depthwise stays depthwise
            groups = in_channels
        return replace(
            self,
            in_channels=in_channels,
            out_channels=out_channels,
            groups=groups,
            in_shape=in_shape,
            out_shape=out_shape,
        )


def _set_channels(shape: tuple[int, ...], channels: int, kind: str) -> tuple[int, ...]:
    if kind == "linear":
        return (*shape[:-1], channels)
    return (channels, *shape[1:])


def _describe(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerInfo:
    kind = PRUNABLE_TYPES[type(module)]
    if kind == "linear":
        return LayerInfo(
            name=name,
            kind=kind,
            in_channels=module.in_features,
            out_channels=module.out_features,
            kernel_size=(),
            stride=(),
            groups=1,
            in_shape=tuple(x.shape[1:]),
            out_shape=tuple(y.shape[1:]),
            has_bias=module.bias is not None,
        )
    return LayerInfo(
        name=name,
        kind=kind,
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        groups=module.groups,
        in_shape=tuple(x.shape[1:]),
        out_shape=tuple(y.shape[1:]),
        has_bias=module.bias is not None,
    )


def discover_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """All Conv1d/Conv2d/Linear layers of ``model`` that run on ``example``, in forward order.

    Args:
        model: the network; it is run once in eval mode and left unchanged.
        example: a batch of at least one input sample.

    Raises:
        ModelError: when the model rejects the input, returns no tensor, or has no prunable layer.
    """
    found: dict[str, LayerInfo] = {}  # in the order of their first calls
    calls: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if type(module) in PRUNABLE_TYPES:

            def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                if name not in found:  # a module called again is one layer, described at its first call
                    found[name] = _describe(name, mod, inputs[0], output)
                calls[name] = calls.get(name, 0) + 1

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), eval_mode(model):
            output = model(example[:1])
    except Exception as exc:  # the user's model: any failure means the shapes do not fit
        raise ModelError(
            f"the model rejects an input of shape {tuple(example[:1].shape)}: {exc}. "
            "Check that model and data configs agree on channels and input size."
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(output, torch.Tensor):
        raise ModelError(
            f"{type(model).__name__} returns a {type(output).__name__}, not a tensor of logits: its "
            "forward must return them (a Hugging Face model: wrap it in rlprune.models.hf.CausalLM "
            "or SequenceClassifier)"
        )
    if not found:
        raise ModelError(
            f"{type(model).__name__} has no prunable layer (Conv1d, Conv2d or Linear) "
            "on its forward path; rlprune needs at least one."
        )
    neighbours = _neighbours(model, list(found))
    return [replace(layer, neighbours=neighbours[name], calls=calls[name]) for name, layer in found.items()]


def neighbour_pairs(layers: Sequence[LayerInfo]) -> list[tuple[str, str]]:
    """Each pair of neighbouring layers among ``layers`` (:attr:`LayerInfo.neighbours`), by name:
    the neighbour first, the layer that names it second."""
    names = {layer.name for layer in layers}
    return [(other, layer.name) for layer in layers for other in layer.neighbours if other in names]


def precision_sources(graph: torch.fx.Graph, layers: Collection[str]) -> dict[torch.fx.Node, str]:
    """The layer whose precision each node of ``graph`` computes in, where one does.

    A prunable layer computes in its own; any other op in that of its first operand that has
    one (pooling, activations, reshapes, and the residual adds, as :func:`rlprune.export.export_int8`
    places them); the network input and constants in none.
    """
    source: dict[torch.fx.Node, str] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in layers:
            source[node] = str(node.target)
            continue
        first = next((source[n] for n in node.all_input_nodes if n in source), None)
        if first is not None:
            source[node] = first
    return source


def _neighbours(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each layer's :attr:`LayerInfo.neighbours`, from the model's FX graph; where the model
    cannot be traced (then it has no torch.ao int8 export either), the layer before it."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # the user's model: any failure means no graph
        return {name: tuple(names[i - 1 : i]) for i, name in enumerate(names)}
    source = precision_sources(graph, set(names))
    found: dict[str, list[str]] = {name: [] for name in names}
    for node in graph.nodes:
        operands = [source[n] for n in node.all_input_nodes if n in source]
        if node.op == "call_module" and node.target in found:
            found[str(node.target)] += operands
        elif len(operands) > 1:  # an add: its other operands convert to its first one's precision
            found[operands[0]] += operands[1:]
    return {name: tuple(dict.fromkeys(n for n in found[name] if n != name)) for name in names}


def select_layers(layers: list[LayerInfo], exclude_first: bool, exclude_last: bool) -> list[LayerInfo]:
    """The layers the search decides for, after the first/last exclusion settings.

    Raises:
        ModelError: when the exclusions leave nothing to search.
    """
    start = 1 if exclude_first else 0
    stop = len(layers) - 1 if exclude_last else len(layers)
    chosen = layers[start:stop]
    if not chosen:
        raise ModelError(
            f"the model has {len(layers)} prunable layer(s) and the exclusion settings "
            "remove all of them; set layers.exclude_first=false or layers.exclude_last=false."
        )
    return chosen


@dataclass(frozen=True)
class FilterCoupling:
    """What removing one of a layer's filters does to the rest of the network.

    Attributes:
        feeds: ``(name, channels)`` of every prunable layer that reads these filters:
            ``channels[f]`` are its input channels that filter ``f`` feeds, which the export
            removes with it (one for a conv, the positions of the channel for a Linear after a
            flatten).
        fixed: why this layer's filters cannot be pruned at all (a depthwise conv, a reshape
            Torch-Pruning cannot map, or the network's outputs); ``None`` when they can.
        norms: ``(name, offset)`` of the batch norms whose channels go with the filters, which
            sit at ``offset`` in theirs (past a concatenation): a pruned filter must also silence
            them, or their shift keeps a constant channel alive.
        followers: the depthwise convs whose channels are these filters' (a depthwise conv's
            outputs are its inputs): they lose the same channels and share this layer's decision.
        tied: the other prunable layers whose output channels are these (they meet in a residual
            add): the filters of all of them are kept or removed together, as one decision.
    """

    feeds: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] = ()
    fixed: str | None = None
    norms: tuple[tuple[str, int], ...] = ()
    followers: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()

    @property
    def consumers(self) -> tuple[tuple[str, int], ...]:
        """``(name, inputs)`` of every layer that reads these filters: it loses ``inputs`` input
        channels per filter removed."""
        return tuple((name, len(channels[0])) for name, channels in self.feeds)

    @property
    def blocked(self) -> str | None:
        """Why this layer's filters cannot be pruned on their own, or ``None``."""
        if self.fixed or not self.tied:
            return self.fixed
        return (
            f"its output channels are tied to {sorted(self.tied)} (they meet in an elementwise op: a "
            "residual add, a gate), so they are pruned only together with theirs"
        )


def pruning_groups(
    names: Iterable[str], couplings: Mapping[str, FilterCoupling]
) -> Iterator[tuple[str, FilterCoupling]]:
    """Each of ``names`` (layers whose choices remove filters) that has a coupling, with it, once
    per group tied by a residual add: tied layers remove the same filters, so the layers reading
    them lose those once."""
    done: set[str] = set()
    for name in names:
        if name in couplings and name not in done:
            done.update(couplings[name].tied)
            yield name, couplings[name]


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced on ``example[:1]``.

    Torch-Pruning warns of parameters outside any layer (a ViT's position embedding) that it
    would prune along with the channels they are added to. A layer whose channels run through
    one is never filter-pruned here (:func:`filter_couplings` gives the reason, and the report
    shows it), so the warning is left out.
    """
    import torch_pruning as tp

    with torch.enable_grad(), warnings.catch_warnings():  # the graph is traced through autograd
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
        # a tuple: a bare tensor is first unpacked along its batch dim (a forward on one unbatched
        # sample, which may fail noisily or, worse, run)
        return tp.DependencyGraph().build_dependency(model, example_inputs=(example[:1],))


# why the filters of a layer whose output channels are split into heads stay (split_channels)
SPLIT_CHANNELS = (
    "its output channels are reshaped into groups (attention heads, a channel shuffle); "
    "removing filters would regroup them"
)


def filter_couplings(
    model: nn.Module, example: torch.Tensor, layers: list[LayerInfo]
) -> dict[str, FilterCoupling]:
    """The :class:`FilterCoupling` of each of ``layers``, read off Torch-Pruning's dependency graph.

    The graph is traced once on ``example[:1]``; ``model`` is left unchanged.
    """
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    names |= {param: name for name, param in model.named_parameters()}
    prunable = {layer.name for layer in layers}
    try:
        graph = dependency_graph(model, example)
    except Exception as exc:  # Torch-Pruning fails on some graphs (torchvision's ShuffleNetV2)
        why = f"Torch-Pruning cannot trace the network's channel dependencies ({type(exc).__name__}: {exc})"
        return {layer.name: FilterCoupling(fixed=why) for layer in layers}
    split = split_channels(model, example, [layer.name for layer in layers])
    couplings = {}
    for layer in layers:
        if layer.name in split:
            # never pruned; and from such a layer Torch-Pruning's search of the graph may not end
            # (from a Llama's queries and keys, through the rotary embedding)
            couplings[layer.name] = FilterCoupling(fixed=SPLIT_CHANNELS)
            continue
        module = model.get_submodule(layer.name)
        prune = tp.prune_linear_out_channels if layer.kind == "linear" else tp.prune_conv_out_channels
        filters = list(range(layer.out_channels))
        feeds: dict[str, list[list[int]]] = {}
        tied: list[str] = []
        norms: dict[str, int] = {}
        unmapped: list[str] = []
        unmasked: list[str] = []
        grouped: list[str] = []
        for item in graph.get_pruning_group(module, prune, idxs=filters).items:
            dep, idxs = item.dep, item.idxs
            target, other = dep.target.module, names.get(dep.target.module)
            if isinstance(target, nn.LayerNorm | nn.GroupNorm | nn.Parameter):
                unmasked.append(other)
            if _grouped(target) and other != layer.name:
                grouped.append(other)
            if isinstance(target, nn.modules.batchnorm._BatchNorm):
                offset = min(idxs)
                if sorted(idxs) == list(range(offset, offset + len(filters))):
                    norms.setdefault(other, offset)  # after a concatenation the filters sit at an offset
                else:
                    unmapped.append(other)
            if other not in prunable or other == layer.name:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                # a tie keeps the same filters; one at an offset (a concatenation that meets a
                # residual add) does not, and is not searched
                (tied if sorted(idxs) == filters else unmapped).append(other)
            elif max(idxs) >= _inputs(target):
                unmapped.append(other)
            else:
                channels = feeds.setdefault(other, [[] for _ in filters])
                for idx, root in zip(idxs, item.root_idxs, strict=True):
                    channels[root].append(idx)
        followers = [name for name in dict.fromkeys(tied) if is_depthwise(model.get_submodule(name))]
        tied = [name for name in dict.fromkeys(tied) if name not in followers]
        couplings[layer.name] = FilterCoupling(
            tuple((name, tuple(map(tuple, channels))) for name, channels in feeds.items()),
            _fixed(module, unmapped, unmasked, grouped, feeds),
            tuple(norms.items()),
            tuple(followers),
            tuple(tied),
        )
    return couplings


def _fixed(
    module: nn.Module, unmapped: list[str], unmasked: list[str], grouped: list[str], feeds: dict
) -> str | None:
    """Why a layer's filters cannot be pruned at all, or ``None``."""
    if is_depthwise(module):
        return "it is a depthwise conv: its channels are those of the layer that feeds it"
    if _grouped(module):
        return (
            f"it is a grouped conv ({module.groups} groups): removing single filters would leave its "
            "groups unequal"
        )
    if grouped:
        return f"its filters feed the grouped conv(s) {sorted(set(grouped))}, whose groups must stay equal"
    if unmasked:
        return (
            f"its channels also run through {sorted(set(unmasked))} (a layer norm or a parameter added "
            "to them), which a mask cannot take out of the computation as the export does"
        )
    if unmapped:
        return (
            f"Torch-Pruning maps its channels onto other indices of {sorted(set(unmapped))} (a reshape "
            "such as attention heads, or a concatenation that meets a residual add, lies between them)"
        )
    if not feeds:
        return "its outputs are the network's outputs"
    return None


class _ChannelSplits(TorchFunctionMode):
    """Follows the output channels of some layers through one forward pass and collects the
    layers whose channel dim a reshape splits into several dims.

    A tensor carries its layers' channels when it is one of their outputs, a slice of one along
    the channel dim (the queries of a fused ``qkv`` projection), or the result of any op with the
    shape of one (a scale, a norm, a residual add, a dtype cast): attention often scales or
    normalizes the queries before it splits them into heads.
    """

    RESHAPES = frozenset({torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten})
    SLICES = frozenset(
        {
            torch.Tensor.__getitem__,
            torch.Tensor.split,
            torch.split,
            torch.Tensor.chunk,
            torch.chunk,
            torch.Tensor.narrow,
            torch.narrow,
            torch.Tensor.tensor_split,
            torch.tensor_split,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        # tensor id -> (the tensor, weakly, so that none is kept alive; its layers; its channel dim)
        self.carried: dict[int, tuple[weakref.ref, frozenset[str], int]] = {}
        self.split: set[str] = set()

    def carry(self, tensor: torch.Tensor, names: frozenset[str], dim: int) -> None:
        """Mark ``tensor`` as carrying the channels of ``names`` along ``dim``."""
        self.carried[id(tensor)] = (weakref.ref(tensor), names, dim % tensor.dim())

    def channels(self, value: object) -> tuple[frozenset[str], int] | None:
        """The layers whose channels ``value`` carries and its channel dim, or ``None``."""
        entry = self.carried.get(id(value))
        if entry is None or entry[0]() is not value:  # a freed tensor's id may be reused
            return None
        return entry[1], entry[2]

    def __torch_function__(
        self, func: Callable, types: Collection[type], args: tuple = (), kwargs: dict | None = None
    ) -> object:
        result = func(*args, **(kwargs or {}))
        sources = [(a, seen) for a in (*args, *(kwargs or {}).values()) if (seen := self.channels(a))]
        if not sources:
            return result
        if func in self.RESHAPES and sources[0][0] is args[0] and torch.is_tensor(result):
            names, dim = sources[0][1]
            if _splits(tuple(args[0].shape), dim, tuple(result.shape)):
                self.split |= names
            return result
        names = frozenset().union(*(seen[0] for _, seen in sources))
        for out in result if isinstance(result, tuple | list) else (result,):
            for source, (_, dim) in sources if torch.is_tensor(out) else ():
                sliced = func in self.SLICES and _narrowed(source.shape, dim, out.shape)
                if out.shape == source.shape or sliced:
                    self.carry(out, names, dim)
                    break
        return result


def _splits(before: tuple[int, ...], dim: int, after: tuple[int, ...]) -> bool:
    """Whether a reshape from ``before`` to ``after`` splits dim ``dim`` into two or more dims above
    1 and keeps the others (not a view adding unit dims, as a squeeze-excite gate's
    ``(N, C) -> (N, C, 1, 1)``)."""
    trailing = len(before) - dim - 1
    channel = after[dim : len(after) - trailing]
    return (
        after[:dim] == before[:dim]
        and after[len(after) - trailing :] == before[dim + 1 :]
        and sum(size > 1 for size in channel) > 1
    )


def _narrowed(before: torch.Size, dim: int, after: torch.Size) -> bool:
    """Whether ``after`` is ``before`` with fewer channels along ``dim`` and every other dim kept."""
    return (
        len(after) == len(before)
        and 0 < after[dim] < before[dim]
        and all(a == b for i, (a, b) in enumerate(zip(after, before, strict=True)) if i != dim)
    )


def split_channels(model: nn.Module, example: torch.Tensor, names: Collection[str]) -> set[str]:
    """The layers among ``names`` whose output channels a reshape splits into several dims (the
    heads of attention, the groups of a channel shuffle), seen in one forward pass on
    ``example[:1]`` (:class:`_ChannelSplits`). Their filters cannot be removed one by one: each
    group must keep its size, and a rotary embedding pairs channels within a head."""
    watcher = _ChannelSplits()

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str) -> None:
        if torch.is_tensor(output):
            watcher.carry(output, frozenset({name}), -1 if isinstance(module, nn.Linear) else 1)

    hooks = [
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name))
        for name in names
    ]
    try:
        with torch.no_grad(), eval_mode(model), watcher:
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return watcher.split


def _inputs(module: nn.Module) -> int:
    """The input channels (features) of a conv or linear layer."""
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _grouped(module: object) -> bool:
    """A conv with groups that is not depthwise."""
    groups = getattr(module, "groups", 1)
    return isinstance(module, nn.Conv1d | nn.Conv2d) and groups > 1 and not is_depthwise(module)


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel reads one input channel of its own."""
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == module.in_channels == module.out_channels
