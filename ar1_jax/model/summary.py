"""Parameter counts of a model (an nnx module, a runner holding `params`, or a plain pytree)."""

from __future__ import annotations

from typing import Any


def count_params(model: Any) -> tuple[int, dict[str, int], list[str]]:
    """(total, per top-level submodule, dtypes) of a model's parameters (nnx module or pytree)."""
    import jax
    from flax import nnx

    if isinstance(model, nnx.Module):
        state = nnx.state(model, nnx.Param)
    elif hasattr(model, "params"):  # a runner holding its parameters (ar1_jax.model.vlm.VLMRunner)
        state = model.params
    else:  # a plain pytree of arrays
        state = model
    total, groups, dtypes = 0, {}, set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        size = int(getattr(leaf, "size", 0))
        if not size:
            continue
        total += size
        head = path[0] if path else None
        key = str(getattr(head, "key", getattr(head, "name", getattr(head, "idx", head))))
        groups[key] = groups.get(key, 0) + size
        if hasattr(leaf, "dtype"):
            dtypes.add(str(leaf.dtype))
    return total, groups, sorted(dtypes)


def human_count(n: int) -> str:
    """1234567 -> '1.23M' (B, M, K)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
