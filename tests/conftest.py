"""Test-session setup shared by every test file."""

import os

# The suite runs subprocesses (CLI, the Streamlit server) beside the test process; libgomp's
# busy-waiting threads would make them fight for the 2 cores. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
