"""Scoring: everything between text features and a decision. ``setup`` resolves, once, what a score needs besides
the images (scorer, τ, mined labels, the stored threshold's verdict); ``scores`` turns features into a scorer's
scores; ``negative_labels`` and ``lexicon`` mine NegLabel / CSP labels; ``adaptive`` is ``score --adaptive``;
``thresholds`` says where a threshold applies; ``metrics`` measures (sklearn)."""
