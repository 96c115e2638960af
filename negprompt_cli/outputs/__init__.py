"""Outputs: what negprompt writes and reads back as files. ``atomic`` (temporary file, then rename; never over
what is not ours), ``artifact`` (prompts as safetensors with their metadata), ``score_file`` (the score CSV /
JSONL format and its reader) and ``score_output`` (where scores stream to: a file, stdout, a pipe).

May import the shared modules only: a format never depends on how its contents were computed.
"""

MAY_IMPORT = ("shared",)  # read by tests/test_architecture.py and docs/architecture.md
