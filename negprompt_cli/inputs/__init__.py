"""Inputs: where images come from, up to pixels. ``image_list`` owns what an image file is, the sorted folder
walk and the compact ``ImageList`` that ``score`` and ``cache build`` stream; ``image_folders`` reads ImageFolder
trees, class-name files and the seeded few-shot split; ``displayed`` is how every path decodes an image (as a
viewer shows it: EXIF orientation, 16-bit pixels scaled); ``pixels`` decodes JPEGs and applies open_clip's eval
transform as batched tensor ops (the GPU decode path); ``containers`` reads images inside WebDataset shards,
Parquet files, ``save_to_disk`` folders and ``hf://datasets/`` snapshots in place, each sample an item that reads
like a file. New sources (embeddings) go here, one reader per source.

May import the shared modules only: nothing here knows about models, features, training or scores.
"""

MAY_IMPORT = ("shared",)  # read by tests/test_architecture.py and docs/architecture.md
