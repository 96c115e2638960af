"""Training: prompts learned over cached features. ``loop`` (the optimisation loop and its schedule),
``data`` (training and validation features), ``learners`` (the learner contract a plugin implements),
``losses`` (NegPrompt's losses), ``checkpoint`` (``--resume``), ``class_parallel`` (text encoding split over
torchrun ranks) and ``memory`` (``--text-chunk auto``).

May import the shared modules, inputs, outputs and features; never scoring (a score never needs training).
"""

MAY_IMPORT = ("shared", "inputs", "outputs", "features")  # read by tests/test_architecture.py and docs
