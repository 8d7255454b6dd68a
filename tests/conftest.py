"""Shared test configuration: seeding, a clean param store, device and dtype options.

Options:

- ``--device cpu|cuda`` (default cpu): tests taking the ``device`` fixture run there; with
  ``cuda`` and no GPU they are skipped.
- ``--dtype float64|float32|all`` (default all): tests taking the ``dtype`` fixture run in
  each selected dtype.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"],
                     help="device for tests using the `device` fixture")
    parser.addoption("--dtype", default="all", choices=["all", *_DTYPES],
                     help="dtype(s) for tests using the `dtype` fixture")


def pytest_generate_tests(metafunc):
    if "dtype" in metafunc.fixturenames:
        choice = metafunc.config.getoption("--dtype")
        names = list(_DTYPES) if choice == "all" else [choice]
        metafunc.parametrize("dtype", [_DTYPES[n] for n in names], ids=names)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--device") == "cuda" and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs --device cuda and a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request):
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from the same seed, an empty param store and validation on."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny networks only pay for intra-op synchronization
    (and stall on busy hosts). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tolerance(dtype, float64=1e-8, float32=1e-3):
    """Absolute tolerance appropriate for ``dtype``."""
    return float64 if dtype == torch.float64 else float32
