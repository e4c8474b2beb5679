"""Hardware latency models: (layer, pattern, keep/group, bits) -> seconds per batch.

Every model implements :class:`LatencyModel`; pick one with ``hardware=<name>`` (a file in
``conf/hardware``) and build it with :func:`build_latency_model`:

* :class:`RooflineModel` over a :class:`DeviceProfile` (``a100``, ``h100``, ``h200``,
  ``jetson_orin``, ``arm_cpu``): peak rate per precision, bandwidth, and the sparsity
  patterns the device accelerates;
* :class:`BitFusionModel` (``bitfusion``): a bit-flexible accelerator, cycle formula from
  Sharma et al. (ISCA 2018);
* :class:`BopsModel` (``bops``): the bit-operations proxy;
* :class:`MeasuredModel` (``local_cpu``): a lookup table measured on this CPU with
  ``torch.utils.benchmark``, cached per CPU model (with its family and model numbers),
  torch's CPU kernels, torch version and thread count.
"""

from rlprune.hardware.base import LatencyModel, effective_cells, network_latency, with_fewer_inputs
from rlprune.hardware.bitfusion import BitFusionModel, BitFusionProfile, perf_factor
from rlprune.hardware.bops import BopsModel, BopsProfile
from rlprune.hardware.factory import (
    available_hardware,
    build_latency_model,
    hardware_config_dir,
    latency_model_kinds,
    load_hardware_config,
    load_latency_model,
    register_latency_model,
)
from rlprune.hardware.measured import MeasuredModel
from rlprune.hardware.profile import SOURCE_KINDS, DeviceProfile, NMOption, SparseKernel
from rlprune.hardware.roofline import RooflineModel, RooflineTerms
from rlprune.hardware.storage import log2_binomial_bits, weight_storage_bits

__all__ = [
    "SOURCE_KINDS",
    "BitFusionModel",
    "BitFusionProfile",
    "BopsModel",
    "BopsProfile",
    "DeviceProfile",
    "LatencyModel",
    "MeasuredModel",
    "NMOption",
    "RooflineModel",
    "RooflineTerms",
    "SparseKernel",
    "available_hardware",
    "build_latency_model",
    "effective_cells",
    "hardware_config_dir",
    "latency_model_kinds",
    "load_hardware_config",
    "load_latency_model",
    "log2_binomial_bits",
    "network_latency",
    "perf_factor",
    "register_latency_model",
    "weight_storage_bits",
    "with_fewer_inputs",
]
