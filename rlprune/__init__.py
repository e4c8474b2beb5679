"""rlprune: reinforcement-learning search for per-layer sparsity and bit-widths under a latency budget.

The programmatic API mirrors the command line (see :mod:`rlprune.api`)::

    from rlprune import api
    report = api.run(cfg, "runs/demo")
    report = api.run_network(net, (x_train, y_train, x_test, y_test), "runs/mine", ["budget.latency=0.5"])
"""

__version__ = "0.1.0"
