"""Logical axis names -> mesh axes: one short rule table per parallelism strategy.

Parameters carry `nnx.Param(value, logical_axes=("embed", "mlp"))`; activations name their dims at
`constrain(x, ("batch", "seq", "embed"), mesh)`. A table maps each logical name to a mesh axis
(`"data"`, `"fsdp"`, `"tensor"`), a tuple of them, or None (replicated). A name may appear more than
once: the first entry whose mesh axes are all free and divide the dim wins (MaxText style).

Resolution of one spec, dim by dim:
  * size-1 mesh axes and axes the mesh does not have are dropped;
  * a mesh axis is used at most once per spec: a later dim that would reuse one gets None
    (so activations `(batch, seq, embed)` put batch on data+fsdp and leave embed replicated);
  * a dim whose size is not divisible by the product of its mesh-axis sizes gets None
    (e.g. kv_heads=2 with tensor=4); `notes`, when given, records each such fallback.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence, Union

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MeshAxes = Union[str, tuple[str, ...], None]
RuleTable = tuple[tuple[str, MeshAxes], ...]

_REPLICATED: RuleTable = tuple(
    (name, None) for name in ("layers", "head_dim", "seq", "cache_seq", "norm", "pos", "patch", "features"))

RULE_TABLES: dict[str, RuleTable] = {
    # FSDP over `fsdp` (params' embed dim) + tensor parallelism over `tensor` (heads, mlp, vocab).
    "default": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
    ) + _REPLICATED,
    # Pure data parallelism: params replicated, batch split over every device.
    "data_parallel": (
        ("batch", ("data", "fsdp", "tensor")),
        ("embed", None), ("heads", None), ("kv_heads", None), ("mlp", None), ("vocab", None),
    ) + _REPLICATED,
    # ZeRO-3 style: params split on embed over fsdp (and tensor, if that axis is > 1), batch everywhere.
    "fsdp_only": (
        ("batch", ("data", "fsdp", "tensor")),
        ("embed", ("fsdp", "tensor")),
        ("heads", None), ("kv_heads", None), ("mlp", None), ("vocab", None),
    ) + _REPLICATED,
}


def get_rules(rules: str | RuleTable) -> RuleTable:
    """A rule table by name (a key of RULE_TABLES) or the table itself."""
    if isinstance(rules, str):
        if rules not in RULE_TABLES:
            raise ValueError(f"unknown sharding rules {rules!r} (known: {', '.join(RULE_TABLES)})")
        return RULE_TABLES[rules]
    return tuple(rules)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None, mesh: Any,
                    rules: str | RuleTable = "default", notes: list[str] | None = None) -> PartitionSpec:
    """The PartitionSpec for an array whose dims are named `logical_axes`.

    `mesh` is a `Mesh` or `AbstractMesh` (only axis names and sizes are read). `shape=None` skips the
    divisibility check (activations of unknown shape). Unknown logical names raise ValueError.
    """
    table = get_rules(rules)
    sizes = dict(mesh.shape)
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    out: list[MeshAxes] = []
    for d, name in enumerate(logical_axes):
        if name is None:
            out.append(None)
            continue
        candidates = [axes for key, axes in table if key == name]
        if not candidates:
            raise ValueError(f"logical axis {name!r} has no entry in the sharding rules "
                             f"(names: {', '.join(dict.fromkeys(k for k, _ in table))})")
        chosen: MeshAxes = None
        for axes in candidates:
            axes_t = tuple(a for a in _as_tuple(axes) if sizes.get(a, 1) > 1)
            if not axes_t:
                break  # replicated by rule (or every axis has size 1): nothing to do
            if used.intersection(axes_t):
                continue
            prod = math.prod(sizes[a] for a in axes_t)
            if shape is not None and shape[d] % prod:
                if notes is not None:
                    notes.append(f"{name}={shape[d]} not divisible by {'x'.join(axes_t)}={prod}")
                continue
            chosen = axes_t[0] if len(axes_t) == 1 else axes_t
            used.update(axes_t)
            break
        out.append(chosen)
    return PartitionSpec(*out)


def activation_spec(names: Sequence[str | None], mesh: Any, rules: str | RuleTable = "default",
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec for an activation whose dims are `names` (`batch`, `seq`, `embed`, ...)."""
    return logical_to_spec(names, shape, mesh, rules)


def batch_axes(mesh: Any, rules: str | RuleTable = "default") -> tuple[str, ...]:
    """The mesh axes the rules split a batch's leading dim over (empty when it is not split)."""
    spec = activation_spec(("batch", "seq"), mesh, rules)[0]
    return () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))


def batch_shard_count(mesh: Any, rules: str | RuleTable = "default") -> int:
    """How many ways a batch's leading dim is split on `mesh` (the product of `batch_axes`)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def constrain(x: jax.Array, names: Sequence[str | None], mesh: Any,
              rules: str | RuleTable = "default") -> jax.Array:
    """`with_sharding_constraint` on `x` by logical names; a no-op without a mesh or on 1 device."""
    if mesh is None or mesh.size == 1:
        return x
    spec = logical_to_spec(names, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _axes_of(path: tuple, v: nnx.Variable, missing: list[str]) -> tuple[str | None, ...]:
    ndim = len(v.get_value().shape)
    axes = v.get_metadata().get("logical_axes")
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if axes is None:
        if ndim > 0:
            missing.append(f"{name} {type(v).__name__}{tuple(v.get_value().shape)}")
        return (None,) * ndim
    axes = tuple(axes)
    if len(axes) != ndim:
        raise ValueError(f"{name}: logical_axes {axes} has {len(axes)} names but the value has shape "
                         f"{tuple(v.get_value().shape)} (stacked with nnx.vmap/scan? it does not add "
                         f"'layers' to logical_axes: name every dim)")
    return axes


def _as_state(state: Any) -> Any:
    return nnx.state(state) if isinstance(state, nnx.Module) else state


def logical_specs(state: Any) -> Any:
    """The state's tree with each Variable replaced by its logical-axes tuple (None per unnamed dim).

    Non-scalar Variables without `logical_axes` are replicated and listed in one warning.
    """
    missing: list[str] = []
    out = jax.tree_util.tree_map_with_path(lambda p, v: _axes_of(p, v, missing), _as_state(state),
                                           is_leaf=_is_var)
    if missing:
        log.warning("replicating %d variables without logical_axes: %s", len(missing), ", ".join(missing))
    return out


def param_shardings(state: Any, mesh: jax.sharding.Mesh, rules: str | RuleTable = "default") -> Any:
    """A State shaped like `state` whose Variables hold `NamedSharding`s instead of arrays.

    Works on concrete and `nnx.eval_shape`'d state (or a Module). Because the Variables (and their
    metadata) are kept, the result matches the state's pytree structure exactly and can be passed as
    `in_shardings` / `out_shardings` of a `jax.jit` taking or returning that state.
    """
    missing: list[str] = []
    notes: list[str] = []

    def one(path, v):
        axes = _axes_of(path, v, missing)
        spec = logical_to_spec(axes, v.get_value().shape, mesh, rules, notes)
        return v.replace(NamedSharding(mesh, spec))

    out = jax.tree_util.tree_map_with_path(one, _as_state(state), is_leaf=_is_var)
    if missing:
        log.warning("replicating %d variables without logical_axes: %s", len(missing), ", ".join(missing))
    if notes:
        log.warning("sharding fell back to replicated for %d dims: %s", len(notes), "; ".join(sorted(set(notes))))
    return out


# ----------------------------------------------------------------------------------------------------
# Activation constraints inside model code: the mesh comes from `jax.set_mesh(...)` and the rule
# table from `use_rules(...)`, so pure model functions take no mesh argument.

_RULES_STACK: list[str | RuleTable] = ["default"]


class use_rules:
    """Context manager selecting the rule table that `shard_activation` uses while tracing."""

    def __init__(self, rules: str | RuleTable):
        self.rules = get_rules(rules) if isinstance(rules, str) else rules
        self.name = rules

    def __enter__(self):
        _RULES_STACK.append(self.name)
        return self

    def __exit__(self, *exc):
        _RULES_STACK.pop()


def shard_activation(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains activation `x` (dims named `names`) to the current mesh's layout; a no-op when no
    mesh is set (`jax.set_mesh`) or it has one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(names, x.shape, mesh, _RULES_STACK[-1])
    return jax.lax.with_sharding_constraint(x, spec)


def batch_mesh_axes() -> str | tuple[str, ...] | None:
    """The mesh axes the current rules put `batch` on, for `jax.vmap(..., spmd_axis_name=...)` over
    examples; None without a mesh (`jax.set_mesh`) or on one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return logical_to_spec(("batch",), None, mesh, _RULES_STACK[-1])[0]


def mesh_context(mesh: Any, rules: str | RuleTable = "default"):
    """`jax.set_mesh(mesh)` + `use_rules(rules)` as one context (a null context without a mesh): what a
    caller tracing model functions for a mesh enters, so activation constraints apply."""
    import contextlib

    if mesh is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(use_rules(rules))
    return stack
