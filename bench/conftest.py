"""Fixtures for the benchmark suites: each benchmark records what it measured in extra_info."""

import pytest
import torch

import redkern
from redkern import benchmarking as B


@pytest.fixture
def record(benchmark):
    """``record(flops=..., pixels=..., error=..., backend=..., dtype=...)`` after a benchmark ran:
    stores the figures (and GFLOP/s, megapixels/s from the median) in extra_info."""

    def _record(*, flops=None, pixels=None, error=None, **info):
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None and stats.stats is not None else None
        extra = benchmark.extra_info
        extra.update(info)
        extra["threads"] = torch.get_num_threads()
        extra["cpu"] = B.cpu_model_name()
        extra["torch"] = torch.__version__
        if error is not None:
            extra["max_rel_error"] = error
        if flops is not None:
            extra["flops"] = flops
            if median:
                extra["gflops_per_s"] = flops / median / 1e9
        if pixels is not None and median:
            extra["megapixels_per_s"] = pixels / median / 1e6
        if error is not None:
            assert error == error, "NaN error"  # NaN never passes

    return _record


@pytest.fixture(scope="session")
def cpu_isa():
    from redkern import _C

    return _C.selected_isa()
