"""Features: images and texts turned into CLIP features. ``backbone`` (the record a backbone plugin returns and
the one door that loads it; ``backbone_facts`` what a run needs of it without building it), ``image_features``
(the image stream: decode, encode what the cache lacks) and ``feature_cache`` (the shared on-disk cache),
``text_encoder`` (soft prompts through the text tower, exactly ``encode_text``; every open_clip text tower: CLIP's,
a CustomTextCLIP's such as SigLIP's, or plain ``encode_text``), ``shared_prefix`` (each context's prefix once) and
``text_features`` (prompts and templates to normalised features).

May import the shared modules, inputs and outputs.
"""

MAY_IMPORT = ("shared", "inputs", "outputs")  # read by tests/test_architecture.py and docs/architecture.md
