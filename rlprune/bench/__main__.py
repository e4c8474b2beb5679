"""``python -m rlprune.bench <name> [options]``."""

from __future__ import annotations

import importlib
import sys

from rlprune.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark named by the first argument with the remaining arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m rlprune.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
