"""Shared test setup.

Triton: with no CUDA device, Triton kernels can only run under its CPU interpreter, which
must be switched on before ``triton`` is first imported; so it is switched on here, for the
whole test process, on machines without a GPU. On a GPU machine the same tests run natively.
"""

import os

import pytest


def _has_cuda_device() -> bool:
    # Ask the driver without initialising torch's CUDA state in a way that could fail.
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if "TRITON_INTERPRET" not in os.environ and not _has_cuda_device():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests and benchmarks marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Fresh random inputs every run, but the seed is printed so a failure can be replayed."""
    import random

    import torch

    seed = int(os.environ.get("REDKERN_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"replay with REDKERN_TEST_SEED={seed}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def poisoned_empty():
    """torch.empty returns NaN-filled memory, so an element a kernel forgets to write fails."""
    import torch

    old = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0])
    torch.utils.deterministic.fill_uninitialized_memory = old[1]


@pytest.fixture
def one_thread():
    """torch on one thread for the test: small tiles gain nothing from threads, a Dask task
    sets its own, and the machine is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compile_offline(tmp_path):
    """``compile_offline(script)``: run ``script`` (Python that compiles Triton kernels to NVIDIA
    machine code with ``triton.compile`` and prints "compiled") in a fresh process, without the
    interpreter and with the redkern the tests import first on its path; any machine can, no GPU
    needed. Skips where this Triton has no offline compiler or no NVIDIA backend."""
    import subprocess
    import sys
    from pathlib import Path

    def run(script: str) -> None:
        try:
            from triton.backends.compiler import GPUTarget  # noqa: F401
            from triton.compiler import ASTSource  # noqa: F401
            from triton.backends import backends
        except ImportError as e:
            pytest.skip(f"this Triton has no offline-compile API ({e})")
        if "nvidia" not in backends:
            pytest.skip(f"this Triton has no NVIDIA backend (it has {sorted(backends)})")
        import redkern

        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        root = str(Path(redkern.__file__).resolve().parent.parent)  # the redkern these tests import
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        env["TRITON_CACHE_DIR"] = str(tmp_path)
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-4000:]

    return run
