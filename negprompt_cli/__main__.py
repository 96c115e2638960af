"""``python -m negprompt_cli`` and the ``negprompt`` console script."""

from __future__ import annotations

MAY_IMPORT = ("shared", "composers")  # starts the command line (tests/test_architecture.py)


def main() -> None:
    from .composers.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
