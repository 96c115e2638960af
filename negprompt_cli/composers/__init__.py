"""Composers: what strings stages together for a user — the command line (``cli``, its shared options in
``cli_options``), the one-command fit-pos → fit-neg ``pipeline``, the offline ``demo`` and ``benchmark run``.
Nothing outside this folder imports them (tests/test_architecture.py)."""
