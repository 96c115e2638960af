"""Composers: what strings stages together for a user — the command line (``cli``, its shared options in
``cli_options``), the one-command fit-pos → fit-neg ``pipeline``, the offline ``demo`` and ``benchmark run``.
They may import anything; nothing outside this folder imports them (tests/test_architecture.py).
"""

MAY_IMPORT = ("*",)  # read by tests/test_architecture.py and docs/architecture.md
