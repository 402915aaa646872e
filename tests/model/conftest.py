import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from 2 threads, and one thread does not spin-wait (OpenMP
    barriers) when other processes hold the cores: steadier test times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
