"""Scoring: everything between text features and a decision. ``setup`` resolves, once, what a score needs besides
the images (scorer, τ, mined labels, the stored threshold's verdict); ``scores`` turns features into a scorer's
scores; ``negative_labels`` and ``lexicon`` mine NegLabel / CSP labels; ``adaptive`` is ``score --adaptive``;
``thresholds`` says where a threshold applies and ``calibration`` what it promises; ``metrics`` measures
(sklearn);
``explain`` says why an image scored as it did.

May import the shared modules, inputs, outputs and features; never training.
"""

MAY_IMPORT = ("shared", "inputs", "outputs", "features")  # read by tests/test_architecture.py and docs/architecture.md
