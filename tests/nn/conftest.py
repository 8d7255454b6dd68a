import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny layers: intra-op threads only add synchronization (and stall on busy hosts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
