"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: tiny models gain nothing from threads, and two pytest workers with
    two threads each thrash on two cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
