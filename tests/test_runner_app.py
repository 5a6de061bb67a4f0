"""spade_app.runner.run_guarded in a tiny Streamlit script driven by AppTest."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from spade_app import compute, runner
from tests.app_testing import TIMEOUT


def _script(outcome: str, device: str) -> None:
    import streamlit as st
    import torch

    from spade.errors import ConfigError
    from spade_app import compute, runner

    def work(progress):
        progress("solve", 0.5)
        st.session_state["held"] = compute.gpu_lock().locked()
        if outcome == "spade":
            raise ConfigError("Choose at least one saliency method.")
        if outcome == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 42

    st.session_state["result"] = runner.run_guarded("Working…", device, work, failed="Work failed",
                                                    done=lambda result: f"Done: {result}")


def _run(outcome: str, device: str = "cpu") -> AppTest:
    at = AppTest.from_function(_script, args=(outcome, device), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def test_success_returns_the_result_and_completes_the_status():
    at = _run("ok")
    assert at.session_state["result"] == 42
    assert not at.error
    [status] = at.status
    assert (status.label, status.state) == ("Done: 42", "complete")
    assert [bar.proto.text for bar in status.get("progress")] == ["solve: 50%"]  # drawn in the box


@pytest.mark.parametrize("outcome, message, label", [
    ("spade", "Choose at least one saliency method.", "Work failed"),
    ("oom", runner.OOM_HINT, "Work failed: out of GPU memory"),
])
def test_errors_are_shown_and_give_none(outcome, message, label):
    at = _run(outcome)
    assert at.session_state["result"] is None
    assert at.error[0].value == message
    [status] = at.status
    assert (status.label, status.state) == (label, "error")


@pytest.mark.parametrize("outcome", ["ok", "oom"])
def test_cuda_work_holds_the_gpu_slot_and_releases_it(outcome):
    at = _run(outcome, device="cuda")  # gpu_slot only looks at the device type, so no GPU is needed
    assert at.session_state["held"] is True
    assert not compute.gpu_lock().locked()
