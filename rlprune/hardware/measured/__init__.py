"""A latency lookup table measured on the machine at hand (docs/algorithms.md, "Measured table").

``latency(layer, choice)`` is the time of one batch of ``batch_size`` samples through the
layer's op on this CPU, as a deployed network runs it: traced and frozen TorchScript
(:meth:`MeasuredModel.deploy`), less the cost of calling a deployed module. It is timed
with :mod:`torch.utils.benchmark` at a fixed thread count in short blocks over interleaved
rounds, its fastest block, beside a marker op that whole networks are read against, in a quiet
stretch of the machine (:class:`QuietTimer`, or the timer the model is handed). Eager PyTorch
is not what is modelled: there each int8 op costs about 20 µs more at batch 1 (two C++
exceptions per call), and more after float ops.

What is measured, and what is not:

* Only what changes CPU time in PyTorch is measured: dense FP32 (``32`` bits), INT8 (``8``
  bits, ``torch.ao`` quantized Linear / Conv1d / Conv2d on the x86/fbgemm engine, quantized
  input, per-channel qint8 weights, as a deployed int8 layer runs between other int8 layers),
  and fewer channels (filter pruning runs the smaller dense layer
  ``layer.with_channels(in, keep)``; upstream pruning is the caller's adjusted ``LayerInfo``).
  Where an op has no int8 kernel on this machine it is costed at FP32 (see
  :attr:`MeasuredModel.int8_fallbacks`).
* Shape-keeping sparse patterns (k-of-n, N:M, unstructured) run dense in PyTorch on a CPU:
  they cost the same as dense at their bits, and ``nm_options`` is empty.
* The op is followed by its ``epilogue`` (``relu``: an elementwise ReLU on the output, fused
  into the int8 kernel as a deployed ``ConvReLU``/``LinearReLU`` is; ``none``: the op alone).
  Every hidden layer of the zoo is followed by an activation, whose cost scales with the
  layer's output and so belongs to the layer. Batch norm is assumed folded (deploy), so every
  op has a bias: a layer and its deployed, folded self share one table entry.
* Channel counts are measured on a grid (multiples of ``channel_step``) and interpolated
  bilinearly in ``(c_in, c_out)`` between the four neighbouring grid points; a count below
  ``channel_step`` is measured as it is. Depthwise convolutions interpolate along ``c``;
  other grouped convolutions are measured exactly. Every other dimension (kernel, stride,
  padding, spatial size, batch) is part of the table's key. ``local_cpu`` measures every count
  (``channel_step: 1``): off multiples of 8 the kernels slow down in steps, which no
  interpolation follows (a 3x3 conv on 8x8, INT8 at batch 1: 16 to 16 channels 11.9 µs, 15 to
  15 16.4 µs; FP32 at batch 32: 336 and 432 µs).
* 2-D convs run channels-last (``memory_format``), in their weights and activations, as
  their networks are deployed: on this machine's CPU that ran a float resnet20 at batch 1 in
  0.54x (8x8 inputs) to 0.84x (32x32) of its time in the default order, and the int8 layers
  of a mixed network return channels-last activations anyway, so the float layers after them
  ran so whatever the weights (one int8 stem took 100 µs off a 692 µs float resnet20 where
  its own op was worth 8).

Measurements are cached as JSON in ``cache_dir/latency/`` (:class:`TableCache`), keyed by
CPU model (:func:`cpu_model`), torch's CPU kernels (AVX2, AVX512, ...), torch version and
thread count (:func:`cpu_key`; one file per key, with a SHA-256 checksum over key and
entries). A corrupt, truncated or foreign (other key) file is ignored and rebuilt. Given the
cache contents the model is deterministic; a shape not in the cache is measured on first use
(or in a batch with :meth:`MeasuredModel.prepare`, with a progress bar).

The parts, each usable alone (a GPU table reuses the timer, the cache and the calibration):

* :mod:`~rlprune.hardware.measured.timing`: the :class:`Timer` protocol and :class:`QuietTimer`
  (blocks in rounds, a marker op, quiet stretches of a shared machine);
* :mod:`~rlprune.hardware.measured.cache`: :class:`TableCache`, one checksummed JSON file per key;
* :mod:`~rlprune.hardware.measured.ops`: grid points, op specs, the ops built from them;
* :mod:`~rlprune.hardware.measured.networks`: the stubbed, narrowed and half-width networks a
  calibration times;
* :mod:`~rlprune.hardware.measured.calibration`: the fit of ops timed alone to networks timed
  whole (plain data in and out);
* :mod:`~rlprune.hardware.measured.machine`: the CPU's name, int8 engine and cache key;
* :mod:`~rlprune.hardware.measured.settings`: a table's settings, read from its config and checked;
* :mod:`~rlprune.hardware.measured.model`: :class:`MeasuredModel`, which composes them.
"""

from rlprune.hardware.measured.cache import TableCache
from rlprune.hardware.measured.calibration import Calibration, FitLayer, fit
from rlprune.hardware.measured.machine import INT8_ENGINES, cpu_key, cpu_model, int8_engine
from rlprune.hardware.measured.model import CACHE_FORMAT, CALIBRATION_REPEATS, MeasuredModel
from rlprune.hardware.measured.ops import EMPTY_CALL, EPILOGUES, MEMORY_FORMATS
from rlprune.hardware.measured.settings import MEASURED_SETTINGS
from rlprune.hardware.measured.timing import (
    MARKER_EVERY,
    QUIET_WAIT,
    Group,
    Marker,
    QuietTimer,
    Timer,
    Timing,
    time_in_turns,
    time_rounds,
)

__all__ = [
    "CACHE_FORMAT",
    "CALIBRATION_REPEATS",
    "EMPTY_CALL",
    "EPILOGUES",
    "INT8_ENGINES",
    "MARKER_EVERY",
    "MEASURED_SETTINGS",
    "MEMORY_FORMATS",
    "QUIET_WAIT",
    "Calibration",
    "FitLayer",
    "Group",
    "Marker",
    "MeasuredModel",
    "QuietTimer",
    "TableCache",
    "Timer",
    "Timing",
    "cpu_key",
    "cpu_model",
    "fit",
    "int8_engine",
    "time_in_turns",
    "time_rounds",
]
