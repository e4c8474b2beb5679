"""Long-run soak (issue: reliability): does memory stay flat over a search of thousands of evaluations?

Runs one search on the default target (or ``--overrides``) and samples the process's resident
memory every ``--every`` evaluations: current RSS (``/proc/self/status``) and peak RSS
(``getrusage``). Growth is measured from the first sample (after ``--every`` evaluations, when
the caches that are meant to fill have filled) to the last.

    python -m rlprune.bench soak [--evaluations 5000] [--agent ppo] [--every 1000]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from rlprune.api import search
from rlprune.bench import QUIET, load
from rlprune.config import compose_config
from rlprune.envs import Outcome
from rlprune.io import write_json_atomic


def rss_mib() -> float:
    """Current resident memory of this process, MiB (peak where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_mib()


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    """Run the soak; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench soak", description=__doc__)
    parser.add_argument("--evaluations", type=int, default=5000)
    parser.add_argument("--every", type=int, default=1000, help="evaluations between samples")
    parser.add_argument("--agent", default="ppo")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args(argv)

    overrides = [*QUIET, f"agent={args.agent}", f"search.evaluations={args.evaluations}", *args.overrides]
    cfg = compose_config(overrides)
    target, hardware = load(cfg)
    started = time.perf_counter()
    samples = [{"evaluations": 0, "rss_mib": rss_mib(), "peak_mib": peak_mib(), "seconds": 0.0}]

    def sample(outcome: Outcome, improved: bool) -> None:
        if outcome.episode % args.every == 0:
            samples.append(
                {
                    "evaluations": outcome.episode,
                    "rss_mib": rss_mib(),
                    "peak_mib": peak_mib(),
                    "seconds": time.perf_counter() - started,
                }
            )

    result = search(cfg, target, hardware, listeners=[sample])
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    results = {
        "benchmark": "soak",
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "settings": {"evaluations": args.evaluations, "every": args.every, "agent": args.agent},
        "overrides": overrides,
        "samples": samples,
        "rss_growth": (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"],
        "peak_growth": (last["peak_mib"] - first["peak_mib"]) / first["peak_mib"],
        "best_reward": result.best.accuracy,
        "seconds": result.seconds,
    }
    write_json_atomic(args.out, results)

    print(f"soak: {args.agent}, {result.evaluations} evaluations in {result.seconds:.0f} s")
    print(f"{'evaluations':>11} {'seconds':>8} {'RSS MiB':>8} {'peak MiB':>9}")
    for s in samples:
        print(f"{s['evaluations']:>11} {s['seconds']:>8.1f} {s['rss_mib']:>8.1f} {s['peak_mib']:>9.1f}")
    print(
        f"growth from {first['evaluations']} to {last['evaluations']} evaluations: "
        f"RSS {results['rss_growth']:+.1%}, peak {results['peak_growth']:+.1%}"
    )
    print(f"written to {args.out}")
    return results
