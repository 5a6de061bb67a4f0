"""The command line (``python -m spade``, ``python -m spade.trojan``): argument parsing and terminal output
over the ``spade`` library, which itself never prints."""
