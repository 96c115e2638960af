"""The ``negprompt`` Typer app and what its commands share: one-line errors and exit codes, Ctrl-C and
SIGTERM handling, the root options, path checks before any import of torch, and the option aliases."""


from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .. import __version__
from ..console import cell, emit_json, err, info, show_progress
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    NegPromptError,
    Terminated,
)

EPILOG = ("Exit codes: 0 ok, 1 runtime error, 2 usage or invalid input, 3 not found, "
          "4 hub/network, 5 incompatible artifact, 130 interrupted, 141 stdout closed, 143 terminated. "
          "Set NEGPROMPT_DEBUG=1 for tracebacks.")

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="negprompt",
    help="Learn negative prompts so CLIP flags out-of-distribution images (NegPrompt, CVPR 2024).",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings=HELP_OPTIONS,
)

F = TypeVar("F", bound=Callable[..., Any])


def command_family(name: str, *, help: str, short_help: str) -> typer.Typer:
    """A group of subcommands (``negprompt cache build``), added to the app with the app's help options."""
    family = typer.Typer(help=help, no_args_is_help=True, context_settings=HELP_OPTIONS)
    app.add_typer(family, name=name, short_help=short_help)
    return family
RANK_EXIT_GRACE_SECONDS = 3.0


def reports_errors(func: F) -> F:
    """Turn every failure into one line on stderr and its documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("NEGPROMPT_DEBUG", "") not in ("", "0")
        show_progress(True)  # the front end draws the library's progress (--quiet still hides it)
        previous = _terminate_like_interrupt()
        _signals["sigint"] = False
        previous_int = _note_ctrl_c()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except NegPromptError as exc:
            if debug:
                traceback.print_exc()
            rank = _other_rank()
            if rank is not None and not exc.rank_specific and exc.exit_code != EXIT_RUNTIME:
                # Every rank met it alike: rank 0 says it once. Leave rank 0 time to say it before torchrun,
                # seeing this rank exit, stops the others (a SIGTERM now just ends this process quietly).
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(RANK_EXIT_GRACE_SECONDS)
                raise typer.Exit(exc.exit_code) from None
            info(f"Error{_rank_tag()}: {exc.message}")
            if exc.hint:
                info(f"Hint: {exc.hint}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            for note in getattr(exc, "__notes__", []):  # e.g. where the checkpoint was saved
                info(note)
            terminated = isinstance(exc, Terminated)
            _signals["announced"] = True  # a network wait's watchdog (network_wait) need not say it again
            err.print("Terminated." if terminated else "Interrupted.", markup=False)
            raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # the reader of stdout went away (`| head`, `| true`): stop quietly, as command-line tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:
            if debug:
                traceback.print_exc()
            where = f" ({exc.filename})" if exc.filename else ""
            info(f"Error: {exc.strerror or exc}{where}")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                err.print("Hint: free some space (or point --out / --cache-dir elsewhere); nothing half-written "
                          "was left behind", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_RUNTIME) from None
        except Exception as exc:  # unexpected: still one line unless debugging
            if debug:
                traceback.print_exc()
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's is no MemoryError
                err.print("Error: out of memory", markup=False)
                err.print("Hint: use a smaller --batch-size (or --text-chunk)", markup=False)
                raise typer.Exit(EXIT_RUNTIME) from None
            info(f"Error: unexpected {type(exc).__name__}: {exc}")
            err.print("Hint: set NEGPROMPT_DEBUG=1 for the traceback and report it", markup=False)
            raise typer.Exit(EXIT_RUNTIME) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)

    return wrapper  # type: ignore[return-value]


# Whether the last command was stopped by a real Ctrl-C (SIGINT), not by code raising KeyboardInterrupt. The command
# ends in exit 130 either way (Typer turns KeyboardInterrupt into it); a program that runs commands in-process (the
# test suite's CliRunner, see tests/conftest.py) reads this to let the user's Ctrl-C stop it too.
_signals = {"sigint": False, "announced": False}
NETWORK_EXIT_GRACE_SECONDS = 1.0


def interrupted_by_user() -> bool:
    return _signals["sigint"]


def _note_ctrl_c():
    """Ctrl-C raises KeyboardInterrupt as always, and is noted as a real signal."""
    def handler(signum, frame):
        _signals["sigint"] = True
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


@contextmanager
def network_wait() -> Iterator[None]:
    """Ctrl-C and SIGTERM end a Hub transfer within about a second, as everywhere else (exit 130 / 143).

    huggingface_hub downloads and uploads in worker threads, which no signal stops and which the interpreter
    waits for on the way out: a stalled server held a SIGTERM for as long as its socket stayed open. Inside this
    block a signal still raises as usual (so cleanup runs), and a watchdog ends the process with the usual line
    and exit code if it has not ended one second later. Nothing is half-written by then: the Hub cache keeps
    only complete files, and outputs are written after the transfer (atomically)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    watchdogs: list[threading.Timer] = []

    def stop(signum, frame):
        terminated = signum == signal.SIGTERM
        if not terminated:
            _signals["sigint"] = True
        watchdog = threading.Timer(NETWORK_EXIT_GRACE_SECONDS, _exit_now, args=(terminated,))
        watchdog.daemon = True
        watchdog.start()
        watchdogs.append(watchdog)
        raise Terminated() if terminated else KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        # Out of the block: the watchdog is needed only while a transfer thread the interpreter would wait for
        # is still alive (a program running the CLI in-process goes on after the command).
        if not [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]:
            for watchdog in watchdogs:
                watchdog.cancel()


def _exit_now(terminated: bool) -> None:
    if not _signals["announced"]:
        err.print("Terminated." if terminated else "Interrupted.", markup=False)
    sys.stderr.flush()
    os._exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _terminate_like_interrupt():
    """SIGTERM raises Terminated (a KeyboardInterrupt), so checkpoints are saved as on Ctrl-C."""
    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded): leave signals alone
        return None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from ..errors import NegPromptNotice

    label = "Note" if issubclass(category, NegPromptNotice) else "Warning"
    info(f"{label}{_rank_tag()}: {message}")


def _other_rank() -> int | None:
    """This process's rank in a torchrun job of several processes, when it is not rank 0."""
    if "RANK" not in os.environ:  # not torchrun: answer without importing torch (errors print at once)
        return None
    from ..distributed import launched_by_torchrun

    if not launched_by_torchrun() or os.environ.get("WORLD_SIZE") == "1" or os.environ.get("RANK") == "0":
        return None
    return int(os.environ["RANK"]) if os.environ["RANK"].isdigit() else None


def _rank_tag() -> str:
    rank = _other_rank()
    return f" (rank {rank})" if rank is not None else ""


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"negprompt {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """negprompt command line."""


MISSING = {"--data": "data directory not found", "--pos": "prompts file not found",
           "--prompts": "prompts file not found", "--classes": "class-names file not found",
           "--names": "class-names file not found", "--train-classes": "class-names file not found",
           "--calibrate": "calibration images not found", "IMAGES": "not found", "--lexicon": "lexicon not found",
           "--features": "saved features not found", "--negatives": "negative-label list not found"}


def check_paths(*given: tuple[str, Any]) -> None:
    """A mistyped path fails here, in a fraction of a second, before the stage (and torch) is imported."""
    from ..errors import NotFoundError

    for flag, value in given:
        text = str(value)  # a Path folds hf:// to hf:/; a brace pattern names shards (inputs/containers.py)
        if value is None or text.startswith(("hf://", "hf:/")):
            continue
        if flag == "IMAGES" and "{" in text:  # only then is the inputs package (and numpy) imported here
            from ..inputs.containers import is_brace_pattern  # noqa: PLC0415

            if is_brace_pattern(text):
                continue
        if flag in ("--lexicon", "--negatives") and not Path(value).exists():
            from ..scoring.lexicon import is_registered_name  # noqa: PLC0415 (light: no torch, no numpy)

            if is_registered_name(text):
                continue  # a registered lexicon's or list's name (``wordnet``): resolved once the plugins load
        if not Path(value).exists():
            raise NotFoundError(f"{MISSING[flag]}: {value}")


def finish(message: str, summary: dict[str, Any], as_json: bool) -> None:
    """A command's closing line on stderr, and its summary on stdout with --json."""
    info(message)
    if as_json:
        emit_json(summary)


def note_is_new(cache_dir: Path | None, prompts_id: str, scorer: str) -> bool:
    """The note that a scorer ignores the trained negative prompts: once per prompts file and scorer, remembered
    in the feature cache (``--cache-dir``), so that it is read rather than scrolled past on every run."""
    from ..environment import default_cache_dir
    from ..features.feature_cache import first_time

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return first_time(root, f"negatives-unused:{prompts_id}:{scorer}")


def _prompts_path(value: str, offline: bool = False) -> Path:
    """A prompts file, or an hf://ORG/NAME[@REVISION] reference resolved through the Hub cache."""
    from ..stages.hub import hub_options, is_hub_ref, resolve_prompts

    if not is_hub_ref(value):
        return Path(value)
    with network_wait():
        return resolve_prompts(value, hub_options(offline))


def print_report(report: dict[str, Any], out: Path | None) -> None:
    """The paper-style table on stderr."""
    from rich.table import Table

    from ..report.table import TABLE_HEADER, table_rows

    table = Table(*TABLE_HEADER, title=cell(f"negprompt OOD report ({report['scorer']})"),
                  caption=cell(f"FPR convention: {report['fpr_convention']} — {report['fpr_definition']}"))
    for row in table_rows(report):
        table.add_row(*(cell(value) for value in row))
    err.print(table)
    if report["id"]["accuracy"] is not None:
        info(f"ID accuracy: {100 * report['id']['accuracy']:.2f}% on {report['id']['n']} images")
    from ..report.page import threshold_sentence

    info(threshold_sentence(report))
    if out is not None:
        info(f"Report: {out / 'report.html'}")
