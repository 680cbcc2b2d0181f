"""What every `ar1` command shares: exit codes, the errors that end a command, config loading and the
parser helpers (a command's subparser, its --config/--set options)."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
from typing import Callable, Sequence

from ar1_jax.optional import ARRIVES_WITH, NotAvailable, import_optional

__all__ = ["ARRIVES_WITH", "EXIT_FAILED", "EXIT_NOT_AVAILABLE", "EXIT_OK", "EXIT_USAGE", "CLIError", "Formatter",
           "NotAvailable", "add_config_args", "existing_dir", "import_optional", "load_config", "print_help", "sub"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_AVAILABLE = 3


class CLIError(Exception):
    """Ends the command with `error: <message>` on stderr and the given exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def load_config(name: str, overrides: Sequence[str] | None):
    """`get_config(name, overrides)`; a bad name or field ends the command with exit code 2."""
    from ar1_jax.config import ConfigError, get_config

    try:
        return get_config(name, list(overrides or ()))
    except ConfigError as e:
        raise CLIError(str(e)) from None


def existing_dir(path: str, flag: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_dir():
        raise CLIError(f"{flag} {p}: no such directory")
    return p


# ----------------------------------------------------------------------------------------------------
# Parser helpers.


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, metavar="NAME_OR_PATH",
                   help="a named config (see `ar1 configs`) or a .py file defining get_config()"
                        + (f" (default: {default})" if default else ""))
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="override one config field by its dotted path, e.g. model.text.num_layers=4 "
                        "(repeatable)")


def sub(subparsers, name: str, summary: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand whose --help shows `summary`, then `description` (line breaks kept), then `epilog`."""
    return subparsers.add_parser(name, help=summary, description=f"{summary}\n\n{description}".strip(),
                                 epilog=epilog or None, formatter_class=Formatter)


def print_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A handler for a command given without its action: its help on stderr, exit code 2."""
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return handler


def note_config_changes(workdir: pathlib.Path, cfg) -> None:
    """Says on stderr which fields differ from the run's saved config.json (a rerun with other flags)."""
    from ar1_jax.train import startup

    changes = startup.config_changes(workdir, cfg)
    if changes:
        print(f"note: config differs from the run's saved {workdir / 'config.json'} in: {'; '.join(changes)}",
              file=sys.stderr)


@contextlib.contextmanager
def driver_errors():
    """Around a training-driver run (`ar1 train`, `ar1 rl`): a bad config, input or checkpoint (ValueError
    includes a bad record and another model's checkpoint) becomes a CLIError (exit 2), divergence one
    with exit 1."""
    from ar1_jax.config import ConfigError
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train import driver

    try:
        yield
    except (ConfigError, ValueError, FileNotFoundError, ckpt_lib.DamagedCheckpoint) as e:
        raise CLIError(str(e)) from None
    except driver.TrainingDiverged as e:
        raise CLIError(f"training diverged: {e}", EXIT_FAILED) from None


def run_outcome(result, workdir: pathlib.Path, metric: str, label: str) -> int:
    """Prints how a driver run (`train.driver.RunResult`) ended, with its last `metric` as `label`, and
    returns the exit code: 143 preempted (SIGTERM), 130 interrupted, else 0."""
    last = result.last_metrics
    value = f", {label} {last[metric]:.4f}" if last.get(metric) is not None else ""
    print(f"{result.reason} at step {result.step}{value}; latest checkpoint: step {result.checkpoint_step} in "
          f"{workdir / 'checkpoints'}; metrics: {workdir / 'metrics.jsonl'}")
    if result.reason in ("preempted", "interrupted", "stopped"):
        print("rerun the same command to continue", flush=True)
    return exit_code(result)


def exit_code(result) -> int:
    """A driver run's exit code: 143 preempted (SIGTERM), 130 interrupted, else 0."""
    return 128 + 15 if result.reason == "preempted" else (130 if result.reason == "interrupted" else EXIT_OK)
