"""Benchmarks: scripts that print a table last and write the same numbers as JSON.

Run one with ``python -m rlprune.bench <name> [options]``; ``--help`` lists the options.
Figures are compared side by side within one run, because these machines are shared and noisy.
"""

BENCHMARKS = {
    "search": "rlprune.bench.search",
    "masks": "rlprune.bench.masks",
    "latency": "rlprune.bench.latency",
    "soak": "rlprune.bench.soak",
}
