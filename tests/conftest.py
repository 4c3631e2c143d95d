"""Shared test settings: one torch thread per test process, and no progress bars."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread per test process: with pytest -n 2 on 2 cores, more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("KDEDU_PROGRESS", "0")
