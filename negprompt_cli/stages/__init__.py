"""The stages: each one command's work over loaded things (fit_pos, fit_neg, transfer, score, report, hub, cache,
benchmark). Stages import the core (the shared modules, every core folder, ``world`` and ``detector``), never
each other and never a composer; the composers (cli, demo, pipeline, benchmark run) chain them.
"""

# read by tests/test_architecture.py and docs/architecture.md
MAY_IMPORT = ("shared", "inputs", "outputs", "features", "training", "scoring", "report", "benchmark", "world",
              "detector")
OWN_FOLDER = False  # a stage never imports another stage
