"""The `ar1` parser and `main`: each command group registers its subcommands from its own module
(data, train, rl, eval, infer, bench, convert, demo, viz, experiment); `configs` lives here."""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import sys
from typing import Sequence

from ar1_jax.cli import bench, convert, data, demo, eval as eval_cli, experiment, infer, rl, train, viz
from ar1_jax.cli.common import (EXIT_NOT_AVAILABLE, EXIT_OK, CLIError, Formatter, NotAvailable, load_config,
                                print_help, sub)


def build_parser() -> argparse.ArgumentParser:
    from ar1_jax import __version__

    parser = argparse.ArgumentParser(
        prog="ar1",
        formatter_class=Formatter,
        description="Alpamayo-R1 (a reasoning vision-language-action model for driving) in JAX/Flax.",
        epilog="Run `ar1 <command> --help` for a command's options.\n"
               "Exit codes: 0 ok, 1 failed, 2 bad usage/config/input, 3 not yet available.",
    )
    parser.add_argument("--version", action="version", version=f"ar1_jax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    data.register(subparsers)
    train.register(subparsers)
    rl.register(subparsers)
    eval_cli.register(subparsers)
    infer.register(subparsers)
    bench.register(subparsers)
    convert.register(subparsers)
    demo.register(subparsers)
    viz.register(subparsers)
    experiment.register(subparsers)
    _register_configs(subparsers)
    parser.set_defaults(func=print_help(parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NotAvailable as e:
        print(e, file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------------
# `ar1 configs`.


def _register_configs(subparsers) -> None:
    p = sub(subparsers, "configs", "List the named configs, or print one as JSON.",
            "Without options: one line per config in configs/. With --show NAME: the full config\n"
            "(after any --set overrides) as JSON.",
            epilog="example: ar1 configs --show tiny --set model.text.num_layers=4")
    p.add_argument("--show", metavar="NAME_OR_PATH", help="print this config as JSON")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="override a field of the shown config (repeatable)")
    p.set_defaults(func=cmd_configs)


def cmd_configs(args: argparse.Namespace) -> int:
    from ar1_jax.config import to_dict

    if args.show:
        cfg = load_config(args.show, args.overrides)
        print(json.dumps(to_dict(cfg), indent=2))
        return EXIT_OK
    if args.overrides:
        raise CLIError("--set needs --show NAME (it changes the config being shown)")
    docs = _config_docs()
    width = max(map(len, docs), default=0)
    for name, doc in docs.items():
        print(f"{name:<{width}}  {doc}")
    return EXIT_OK


def _config_docs() -> dict[str, str]:
    """First paragraph of each named config module's docstring, as one line (read, not imported)."""
    from ar1_jax.config import available_configs
    import ar1_jax.configs as pkg

    root = pathlib.Path(pkg.__file__).parent
    docs = {}
    for name in available_configs():
        try:
            doc = ast.get_docstring(ast.parse((root / f"{name}.py").read_text())) or ""
        except (OSError, SyntaxError) as e:
            doc = f"(unreadable: {e})"
        docs[name] = " ".join(doc.split("\n\n")[0].split())
    return docs
