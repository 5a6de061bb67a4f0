"""The command line (``python -m spade``, ``python -m tools.demo_model``): argument parsing and terminal output
over the ``spade`` library, which itself never prints."""
