"""Parts of ar1_jax that arrive in later versions: where each arrives, and importing one that may be
missing (`NotAvailable` instead of a bare ModuleNotFoundError). Read by the CLI."""

from __future__ import annotations

import importlib
import types

# Where each missing piece arrives; one place so that messages stay consistent.
ARRIVES_WITH = {
    "kernels_bench": "the kernels benchmark, ar1_jax.bench.kernels",
    "compile_bench": "the compile-time benchmark, ar1_jax.bench.compile_time",
    "vlm": "the VLM backbone, ar1_jax.model.vlm",
    "convert": "the HF converter, ar1_jax.convert.hf",
}


class NotAvailable(Exception):
    """`ar1 <command>: not yet available (arrives with ...)`; the CLI exits 3 on it."""

    def __init__(self, command: str, arrives_with: str):
        super().__init__(f"ar1 {command}: not yet available (arrives with {arrives_with})")
        self.command, self.arrives_with = command, arrives_with


def import_optional(module: str, command: str, arrives_with: str) -> types.ModuleType:
    """Imports `module`; if it (or its package) does not exist yet, raises NotAvailable.

    An ImportError raised from inside an existing module is a real bug and propagates."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        missing_is_ours = e.name in {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        if missing_is_ours:
            raise NotAvailable(command, arrives_with) from None
        raise
