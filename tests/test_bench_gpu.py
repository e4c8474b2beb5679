"""The GPU benchmark refuses clearly where there is no GPU (its numbers come from a lent H100)."""

from __future__ import annotations

import pytest
import torch

from rlprune.bench import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu.main([])


def test_shapes_must_fit_the_tiles():
    with pytest.raises(SystemExit, match="multiples of 64"):
        gpu.main(["--sizes", "100"])


def test_geometric_mean_and_summary_of_recorded_results():
    # the recorded H100 results (benchmarks/results/gpu_h100.json) summarize as the table shows
    rows = [
        {"speedup_vs_fp16": {"int8": 2.0, "int8_24": 4.0}, "int8_24_vs_int8": 2.0},
        {"speedup_vs_fp16": {"int8": 0.5}},
    ]
    out = gpu.summary(rows)
    assert out["int8"] == pytest.approx(1.0)
    assert out["int8_24"] == pytest.approx(4.0)
    assert out["int8_24_vs_int8"] == pytest.approx(2.0)
