"""`ar1 <command>`: the one command line of ar1_jax.

Commands: data, train, rl, eval, infer, bench, convert, demo, configs, one module each group
(`ar1_jax/cli/<group>.py`: its parser, then parse -> library call -> print); `main.py` assembles the
parser, `common.py` holds what they share. Heavy modules (jax, the model, the converters, the benches)
are imported inside the handlers, so a command works while the parts other commands need are still
missing.

Exit codes: 0 success; 1 the command ran and failed; 2 bad usage, config or input (the message names
it); 3 the command is not yet available in this version.
"""

from ar1_jax.cli.common import EXIT_FAILED, EXIT_NOT_AVAILABLE, EXIT_OK, EXIT_USAGE, CLIError, NotAvailable
from ar1_jax.cli.main import build_parser, main

__all__ = ["EXIT_FAILED", "EXIT_NOT_AVAILABLE", "EXIT_OK", "EXIT_USAGE", "CLIError", "NotAvailable",
           "build_parser", "main"]
