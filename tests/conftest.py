"""Test-session setup shared by every test file."""

import os

# The suite runs subprocesses (CLI, the Streamlit server) beside the test process; libgomp's
# busy-waiting threads would make them fight for the 2 cores. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers) each worker computes on one torch thread, so that the
    workers together use the machine's cores without oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def app_navigation(monkeypatch):
    """AppTest in st.navigation mode on every run (see tests.app_testing.NavigationPagesManager)."""
    import streamlit.testing.v1.app_test as app_test_module

    from tests.app_testing import NavigationPagesManager

    monkeypatch.setattr(app_test_module, "PagesManager", NavigationPagesManager)


@pytest.fixture(scope="module")
def one_thread():
    """Small models gain nothing from torch's intra-op threads, and on a busy 2-core machine threads contend
    badly: a module that asks for this runs on one thread (the count is restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tf32_allowed():
    """TF32 switched on for the test (a GPU's default for convolutions; the flags exist on CPU builds too), the
    caller's setting restored afterwards: for checks that the library switches it off where it must."""
    import torch

    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
