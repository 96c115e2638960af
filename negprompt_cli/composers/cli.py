"""The ``negprompt`` command line (Typer): the app and its commands, one module per family, registered here in
the order ``negprompt --help`` lists them. Commands stay thin: parse, call the library, report."""

from __future__ import annotations

from importlib import import_module

from .app import app, interrupted_by_user

COMMAND_FAMILIES = ("commands_train", "commands_score", "commands_data", "commands_hub", "commands_info")
for _family in COMMAND_FAMILIES:  # importing a family registers its commands on ``app``
    import_module(f"{__package__}.{_family}")

__all__ = ["app", "interrupted_by_user", "main"]


def main() -> None:
    app()
