"""Report: the pieces of ``negprompt report``'s output. ``page`` (the self-contained HTML page), ``table``
(markdown tables, also the Hub model card's), ``images`` (thumbnails of the images that matter) and
``screenshot`` (a headless-browser picture of a page: the docs' screenshot and a rendering test; never needed
to write a report).

May import the shared modules, inputs (images decoded as they were scored), outputs and scoring.
"""

MAY_IMPORT = ("shared", "inputs", "outputs", "scoring")  # read by tests/test_architecture.py and docs/architecture.md
