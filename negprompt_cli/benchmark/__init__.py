"""Benchmark protocols as data (``protocols/*.json``, read by ``protocol``) and the check of a data root
against one (``layout``). ``negprompt benchmark list | check`` is ``stages/benchmark.py``; ``benchmark run``
composes the stages in ``composers/benchmark_run.py``.

May import the shared modules and inputs.
"""

MAY_IMPORT = ("shared", "inputs")  # read by tests/test_architecture.py and docs/architecture.md
