"""Errors that the CLI turns into one line on stderr and a documented exit code.

Every failure a user can cause by what they type or point us at is raised as a
:class:`NegPromptError` subclass, so the CLI never has to guess how to report it.
"""

from __future__ import annotations

# Documented exit codes (README "Exit codes"; `negprompt --help` epilog).
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_HUB = 4
EXIT_INCOMPATIBLE = 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (as a shell pipeline reports SIGPIPE)
EXIT_TERMINATED = 143  # SIGTERM (schedulers, timeout)


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so training saves its checkpoint on the way out."""


class NegPromptWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one "Warning:" line)."""


class NegPromptNotice(NegPromptWarning):
    """Something the user is told before it happens, not a problem (the CLI prints it as one "Note:" line), e.g.
    which Hub repository weights are about to be fetched from."""


class NegPromptError(Exception):
    """Base class: a message for the user, an optional hint, and the exit code to use."""

    exit_code = EXIT_RUNTIME
    # In a torchrun job: True when only this rank can report the error (about its own share of the images);
    # errors every rank meets alike (the same options and files) are printed by rank 0 only.
    rank_specific = False

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(NegPromptError):
    """An option value or an input file's content is invalid."""

    exit_code = EXIT_USAGE


class NotFoundError(NegPromptError):
    """A path the user named does not exist."""

    exit_code = EXIT_NOT_FOUND


class HubError(NegPromptError):
    """Weights or artifacts could not be fetched (offline, missing on the Hub, auth)."""

    exit_code = EXIT_HUB


class IncompatibleArtifactError(NegPromptError):
    """A prompts file is not a negprompt artifact, is corrupt, or belongs to another backbone."""

    exit_code = EXIT_INCOMPATIBLE


class OutOfMemory(NegPromptError):
    """The device ran out of memory; the message names what to lower."""

    exit_code = EXIT_RUNTIME
