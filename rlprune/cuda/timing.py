"""Time GPU work as replays of a captured CUDA graph (docs/gpu.md, "Timing").

A deployed network on a GPU is launched from a graph (or a runtime such as TensorRT), so the
host-side cost of each Python call (launch, cuSPARSELt planning) is not what it pays. The
timer captures the work once and times replays with CUDA events: the median over ``rounds``
blocks, each long enough (``block_time``) to dwarf the events' resolution.

An op timed alone finds its weights in the L2 cache (60 MB on an H200) on every replay; inside
a network the other layers evict them. So the caller may pass several copies of an op on
distinct buffers: one graph runs them in turn, and the time is per copy.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from rlprune.cuda.deploy import CudaDeployment, deploy_cuda
from rlprune.cuda.ops import OpSpec, build_op
from rlprune.data import as_inputs
from rlprune.layers import FilterCoupling
from rlprune.policy import Pattern, Policy

Call = Callable[[], object]


class SharedMemory:
    """A memory pool and the one stream that every warm-up and capture of a timer allocates on.

    Without it, each capture empties the allocator's cache and allocates its work's memory
    afresh (``torch.cuda.graph`` does so); with it, successive captures reuse the pool's memory.
    Sharing is safe because a timer releases each graph before it captures the next, so no two
    graphs that share memory ever run. One stream, because the allocator reuses a block only on
    the stream it was allocated on.
    """

    def __init__(self) -> None:
        self.pool = torch.cuda.MemPool()
        self.stream = torch.cuda.Stream()

    @staticmethod
    def supported() -> bool:
        """Whether this torch has memory pools that allocations can be routed to."""
        return hasattr(torch.cuda, "MemPool") and hasattr(torch.cuda, "use_mem_pool")


class CudaGraphTimer:
    """Seconds per call of GPU work, as the median of CUDA-graph replay blocks.

    Args:
        rounds: timed blocks; the median is returned.
        block_time: seconds of replays per block (at least one replay).
        warmup: untimed calls before capture (kernel selection, cuSPARSELt plans, allocations).
        share_memory: warm up and capture every timing in one :class:`SharedMemory` (where
            torch has memory pools); after a capture that fails in it, the timer goes back to a
            fresh side stream and private pool per capture (:attr:`memory_error` says why).

    Attributes:
        walls: host seconds the last :meth:`seconds` spent in each phase: ``warmup``, ``free``
            (emptying the allocator's cache, which a capture without shared memory does first),
            ``capture``, and ``replays`` (with the graph's release).
        memory_error: why shared memory was given up, or ``None``.
    """

    def __init__(
        self, rounds: int = 7, block_time: float = 0.01, warmup: int = 3, share_memory: bool = True
    ) -> None:
        if rounds < 1 or block_time <= 0 or warmup < 1:
            raise ValueError(
                f"rounds ({rounds}) and warmup ({warmup}) >= 1 and block_time ({block_time}) > 0"
            )
        self.rounds, self.block_time, self.warmup = rounds, block_time, warmup
        self.share_memory = share_memory and SharedMemory.supported()
        self.walls: dict[str, float] = {}
        self.memory_error: str | None = None
        self._memory: SharedMemory | None = None

    def seconds(self, calls: Sequence[Call]) -> float:
        """Median seconds of one call, over replays of a graph that runs each of ``calls`` once.

        ``calls`` are copies of the same work on distinct buffers (one is fine).
        """
        if not calls:
            raise ValueError("nothing to time: pass at least one call")
        walls: dict[str, float] = {}
        with torch.no_grad():
            graph = self._capture(calls, walls)
            started = time.perf_counter()
            replay_s = _block_seconds(graph, 1)
            replays = max(1, round(self.block_time / max(replay_s, 1e-7)))
            blocks = [_block_seconds(graph, replays) / replays for _ in range(self.rounds)]
        del graph
        self.walls = {**walls, "replays": time.perf_counter() - started}
        return statistics.median(blocks) / len(calls)

    def _capture(self, calls: Sequence[Call], walls: dict[str, float]) -> torch.cuda.CUDAGraph:
        if self.share_memory:
            try:
                self._memory = self._memory or SharedMemory()
                return capture(calls, self.warmup, walls, self._memory)
            except RuntimeError as exc:  # an allocator that refuses the pool: time as before
                self.share_memory, self._memory = False, None
                self.memory_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                torch.cuda.synchronize()
        return capture(calls, self.warmup, walls)


def capture(
    calls: Sequence[Call],
    warmup: int = 3,
    walls: dict[str, float] | None = None,
    memory: SharedMemory | None = None,
) -> torch.cuda.CUDAGraph:
    """A CUDA graph that runs each of ``calls`` once, warmed up on a side stream first.

    With ``memory``, the warm-up and the capture allocate from its pool on its stream. Without
    it, the warm-up runs on a fresh stream and the capture in a private pool of its own, after
    the allocator's cache is emptied (as ``torch.cuda.graph`` does; done here first so it is
    timed apart). ``walls``, when given, receives the host seconds of the ``warmup``, of that
    emptying (``free``; 0 with ``memory``) and of the ``capture``.
    """
    started = time.perf_counter()
    stream = memory.stream if memory else torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    routed = torch.cuda.use_mem_pool(memory.pool) if memory else contextlib.nullcontext()
    with torch.cuda.stream(stream), routed:
        for _ in range(warmup):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    warmed = time.perf_counter()
    if memory is None:
        torch.cuda.empty_cache()
    freed = time.perf_counter()
    graph = torch.cuda.CUDAGraph()
    shared = {"pool": memory.pool.id, "stream": memory.stream} if memory else {}
    with torch.cuda.graph(graph, **shared):
        for call in calls:
            call()
    if walls is not None:
        walls.update(warmup=warmed - started, free=freed - warmed, capture=time.perf_counter() - freed)
    return graph


def _block_seconds(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


class CudaTimer:
    """The :class:`~rlprune.hardware.local_gpu.GpuTimer` of a real GPU: builds what the deployed
    network runs and times it with a :class:`CudaGraphTimer`.

    Args:
        dtype: the float dtype's name.
        rounds, block_time: the graph timer's settings.
        max_copies: at most this many copies of an op on distinct buffers per timing (L2).
        device: the GPU (default: the current CUDA device).

    Raises:
        ConfigError: when torch sees no CUDA GPU.
    """

    def __init__(
        self,
        dtype: str = "float16",
        rounds: int = 7,
        block_time: float = 0.01,
        max_copies: int = 16,
        device: str | torch.device | None = None,
    ) -> None:
        from rlprune.errors import ConfigError

        if not torch.cuda.is_available():
            raise ConfigError(
                "hardware=local_gpu measures the CUDA GPU at hand, and torch sees none here; "
                "pick a profile instead (hardware=h200, h100, a100) or run on a machine with a GPU"
            )
        self.device = torch.device(device or f"cuda:{torch.cuda.current_device()}")
        self.dtype, self.max_copies = dtype, max_copies
        self.graph_timer = CudaGraphTimer(rounds=rounds, block_time=block_time)
        self.l2_bytes = int(getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 0))
        self._deployments: dict[tuple[int, Policy], CudaDeployment] = {}

    def device_key(self) -> dict[str, object]:
        """The GPU's name and capability, its driver, torch, CUDA and cuSPARSELt versions."""
        props = torch.cuda.get_device_properties(self.device)
        cusparselt = getattr(torch.backends, "cusparselt", None)
        return {
            "gpu": props.name,
            "capability": list(torch.cuda.get_device_capability(self.device)),
            "memory": props.total_memory,
            "driver": _driver_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cusparselt": cusparselt.version() if cusparselt and cusparselt.is_available() else None,
        }

    def op_seconds(self, specs: Sequence[OpSpec]) -> list[float]:
        """Seconds per call of each op (see :class:`CudaGraphTimer` for the copies)."""
        generator = torch.Generator().manual_seed(0)
        out = []
        for spec in specs:
            copies = self.copies(spec)
            built = [build_op(spec, self.device, generator) for _ in range(copies)]
            out.append(self.graph_timer.seconds([functools.partial(op, x) for op, x in built]))
            del built
        torch.cuda.empty_cache()
        return out

    def copies(self, spec: OpSpec) -> int:
        """How many copies of ``spec`` on distinct buffers exceed twice the L2 (at most ``max_copies``)."""
        per_copy = spec.weight_bytes + 2 * spec.activation_bytes
        return max(1, min(self.max_copies, math.ceil(2 * self.l2_bytes / max(per_copy, 1))))

    def network_seconds(
        self, model: nn.Module, policies: Sequence[Policy], example: torch.Tensor
    ) -> list[float]:
        """Seconds per batch of ``model`` deployed under each policy, at ``example``'s batch size."""
        out = []
        for policy in policies:
            deployment = self.deployed(model, policy, example)
            x = deployment.inputs(example)
            out.append(self.graph_timer.seconds([functools.partial(deployment.network, x)]))
        torch.cuda.empty_cache()
        return out

    def deployed(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> CudaDeployment:
        """``model`` deployed under ``policy``, kept for the next batch size (deploying costs seconds)."""
        key = (id(model), policy)
        if key not in self._deployments:
            dtype = getattr(torch, self.dtype)
            self._deployments[key] = deploy_policy(model, policy, example, self.device, dtype)
        return self._deployments[key]


def deploy_policy(
    model: nn.Module, policy: Policy, example: torch.Tensor, device: torch.device | str, dtype: torch.dtype
) -> CudaDeployment:
    """The dense ``model`` with ``policy``'s masks (by magnitude) baked in, deployed on the GPU."""
    sample = as_inputs(example[:2], torch.float32, "cpu")
    baked = baked_policy(model, policy, sample)
    return deploy_cuda(baked, policy, sample, [as_inputs(example, torch.float32, "cpu")], device, dtype)


def baked_policy(
    model: nn.Module,
    policy: Policy,
    example: torch.Tensor,
    couplings: Mapping[str, FilterCoupling] | None = None,
) -> nn.Module:
    """A float CPU copy of the dense ``model`` with ``policy``'s masks (by magnitude) baked in.

    ``couplings`` are the model's filter couplings, traced here when a filter choice needs them
    and none are given (tracing a large network costs seconds: pass them for many policies).
    """
    from rlprune.compress import bake, compress
    from rlprune.layers import discover_layers, filter_couplings

    if couplings is None and any(c.pattern is Pattern.FILTER for _, c in policy):
        sample = example.to(next(model.parameters()).device)
        couplings = filter_couplings(model, sample, discover_layers(model, sample))
    # compress copies the model: the masks are computed where it lives, the copy then moves
    return bake(compress(model, policy, couplings=couplings)).float().cpu().eval()


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
