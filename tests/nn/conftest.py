import pytest


@pytest.fixture(autouse=True)
def _tiny_layers(one_thread):
    """Every test here uses tiny layers: one torch thread (see ``tests/conftest.py``)."""
