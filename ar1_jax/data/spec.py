"""Batch specs: one typed description of a task's batch that every consumer reads.

A `BatchSpec` maps each field (a dotted path into the nested batch dict, e.g.
`media.image.pixel_values`) to a `Field`: its shape in named dims (`"B"` scenes, `"T"` tokens, ...
or fixed ints), its dtype and its logical axes (`batch`, `seq`, ...). From that one table come

  * `shardings(mesh, rules)`: the `NamedSharding` of every array (jit's `in_shardings`);
  * `abstract(dims, mesh, rules, shared=...)`: `ShapeDtypeStruct`s for lowering without data
    (memory estimates, compile-time benchmarks);
  * `split_microbatches(batch, m)`: every field split along its own batch dim, never by key name;
  * `pad(batch, length)`: right-padding of every `seq` dim with the field's pad value;
  * `globalize(host, mesh, rules)`: per-process host arrays -> global `jax.Array`s;
  * `weight_keys`: fields whose sums a loss divides by (exact means under gradient accumulation);
  * `check(batch)`: a host batch's fields, shapes and dtypes, with an error naming the field.

A `shared` field is a tree of arrays without a batch dim that every row uses alike (one scene's
vision layout when every scene has the same cameras): replicated, broadcast to every micro-batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

BATCH, SEQ = "batch", "seq"


@dataclasses.dataclass(frozen=True)
class Field:
    """One array of a batch.

    shape: named dims (str, resolved per batch: `"B"`, `"T"`, `"P"`, ...) or fixed sizes (int).
    dtype: numpy dtype name.
    axes: one logical axis name (or None) per dim; `"batch"` marks the batch dim, `"seq"` the padded
      token dim.
    pad: the fill value of new `seq` positions (`pad_id` = the config's pad token).
    weight: a loss divides by this field's sum (see `BatchSpec.weight_keys`).
    optional: the field (or the subtree holding it) may be absent or None.
    shared: a tree of arrays with no batch dim, replicated (shape/axes unused).
    """

    shape: tuple[str | int, ...] = ()
    dtype: str = "float32"
    axes: tuple[str | None, ...] = ()
    pad: Any = None
    weight: bool = False
    optional: bool = False
    shared: bool = False

    def __post_init__(self):
        if not self.shared and len(self.shape) != len(self.axes):
            raise ValueError(f"Field: shape {self.shape} and axes {self.axes} differ in length")

    @property
    def batch_dim(self) -> int | None:
        return self.axes.index(BATCH) if BATCH in self.axes else None

    @property
    def seq_dim(self) -> int | None:
        return self.axes.index(SEQ) if SEQ in self.axes else None


def _get(tree: Mapping, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """The fields of one task's batch (see the module docstring).

    fields: dotted path -> Field, in a fixed order.
    tokens: the field whose sum counts a batch's tokens (tokens/s in the metrics).
    """

    name: str
    fields: Mapping[str, Field]
    tokens: str | None = None

    @property
    def weight_keys(self) -> tuple[str, ...]:
        return tuple(k for k, f in self.fields.items() if f.weight)

    def present(self, batch: Mapping) -> Iterator[tuple[str, Field, Any]]:
        """(path, field, value) of every field present (not None) in `batch`."""
        for path, field in self.fields.items():
            value = _get(batch, path)
            if value is not None:
                yield path, field, value

    # -- host-side ----------------------------------------------------------------------------------

    def check(self, batch: Mapping) -> dict[str, int]:
        """Checks `batch`'s fields against the spec; returns the named dims' sizes.

        ValueError names the field: a required one missing, an unknown top-level key, a wrong rank,
        dtype or a dim whose size disagrees with another field's.
        """
        dims: dict[str, int] = {}
        known = {p.split(".")[0] for p in self.fields}
        extra = sorted(k for k in batch if k not in known)
        if extra:
            raise ValueError(f"{self.name} batch: unknown field(s) {extra} (known: {sorted(known)})")
        for path, field in self.fields.items():
            value = _get(batch, path)
            if value is None:
                if not field.optional:
                    raise ValueError(f"{self.name} batch: field `{path}` is missing")
                continue
            if field.shared:
                continue
            shape = np.shape(value)
            if len(shape) != len(field.shape):
                raise ValueError(f"{self.name} batch: field `{path}` has shape {shape}, expected "
                                 f"{len(field.shape)} dims {field.shape}")
            if np.dtype(value.dtype) != np.dtype(field.dtype):
                raise ValueError(f"{self.name} batch: field `{path}` has dtype {value.dtype}, expected {field.dtype}")
            for name, size in zip(field.shape, shape):
                want = dims.setdefault(name, size) if isinstance(name, str) else name
                if size != want:
                    raise ValueError(f"{self.name} batch: field `{path}` has shape {shape}, expected {field.shape} "
                                     f"with {name}={want}")
        return dims

    def pad(self, batch: dict, length: int, pad_id: int) -> dict:
        """`batch` (host numpy) right-padded to `length` on every `seq` dim: fields' pad values, where
        `"pad_id"` stands for `pad_id`."""
        out = dict(batch)
        for path, field, x in self.present(batch):
            d = field.seq_dim
            if d is None or x.shape[d] == length:
                continue
            if x.shape[d] > length:
                raise ValueError(f"cannot pad field `{path}` of {x.shape[d]} tokens to {length}")
            fill = pad_id if field.pad == "pad_id" else field.pad
            extra = list(x.shape)
            extra[d] = length - x.shape[d]
            _set(out, path, np.concatenate([x, np.full(extra, fill, x.dtype)], d))
        return out

    # -- device-side --------------------------------------------------------------------------------

    def partition_specs(self, mesh: Any, rules: Any) -> dict:
        """A tree like the batch of `PartitionSpec`s (shared fields: a replicated spec, a leaf that
        stands for their whole subtree)."""
        from jax.sharding import PartitionSpec as P

        from ar1_jax.parallel.rules import activation_spec

        out: dict = {}
        for path, field in self.fields.items():
            _set(out, path, P() if field.shared else activation_spec(field.axes, mesh, rules))
        return out

    def shardings(self, mesh: Any, rules: Any, shared: Mapping[str, Any] | None = None) -> dict:
        """`NamedSharding`s of every field, a tree like the batch. A shared field's keys come from
        `shared[path]` (a tree of its arrays or their shapes); without it, one replicated sharding
        stands for the whole subtree (jit broadcasts a prefix)."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        out = jax.tree.map(lambda s: NamedSharding(mesh, s), self.partition_specs(mesh, rules),
                           is_leaf=lambda x: isinstance(x, P))
        for path, tree in (shared or {}).items():
            _set(out, path, jax.tree.map(lambda _: NamedSharding(mesh, P()), tree))
        return out

    def abstract(self, dims: Mapping[str, int], mesh: Any, rules: Any,
                 shared: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
        """`ShapeDtypeStruct`s of a batch with named dims `dims`, carrying `shardings(mesh, rules)`.
        `shared[path]`: the shared field's arrays (or ShapeDtypeStructs); optional fields left out of
        `shared` are omitted."""
        import jax

        shardings = self.shardings(mesh, rules, shared)
        out: dict = {}
        shared = shared or {}
        for path, field in self.fields.items():
            sharding = _get(shardings, path)
            if field.shared:
                if path in shared:
                    _set(out, path, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                                                 shared[path], sharding))
                continue
            shape = tuple(dims[d] if isinstance(d, str) else d for d in field.shape)
            _set(out, path, jax.ShapeDtypeStruct(shape, np.dtype(field.dtype), sharding=sharding))
        return out

    def globalize(self, host: Mapping, mesh: Any, rules: Any, num_processes: int) -> dict:
        """This process's rows of a batch (numpy) -> global `jax.Array`s: each field's batch dim is
        `num_processes` times the local one, split over the mesh as `shardings` says; shared fields
        (identical on every process) are replicated."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        from ar1_jax.parallel.rules import activation_spec

        def put(x, spec, batch_dim):
            shape = list(x.shape)
            if batch_dim is not None:
                shape[batch_dim] *= num_processes
            return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x, tuple(shape))

        out: dict = {}
        for path, field, x in self.present(host):
            if field.shared:
                _set(out, path, jax.tree.map(lambda a: put(np.asarray(a), P(), None), x))
            else:
                _set(out, path, put(x, activation_spec(field.axes, mesh, rules), field.batch_dim))
        return out

    def split_microbatches(self, batch: Mapping, m: int) -> dict:
        """`batch` split into `m` micro-batches along a new leading axis, every field along its batch dim.

        Micro-batch k takes rows k, k+m, k+2m, ... so that, with the batch sharded over devices in
        contiguous blocks, every micro-batch keeps rows on every device (no data moves). Shared fields
        are broadcast to every micro-batch. Traceable (jnp).
        """
        import jax
        import jax.numpy as jnp

        out: dict = {}
        for path, field, x in self.present(batch):
            if field.shared:
                _set(out, path, jax.tree.map(lambda a: jnp.broadcast_to(a, (m,) + a.shape), x))
                continue
            d = field.batch_dim
            if d is None:
                raise ValueError(f"field `{path}` has no batch dim to split into micro-batches")
            if x.ndim != len(field.shape):
                raise ValueError(f"micro-batches split field `{path}` along its batch dim: it needs shape "
                                 f"{field.shape}, got {x.shape}")
            if m == 1:
                _set(out, path, x[None])
                continue
            b = x.shape[d]
            if b % m:
                raise ValueError(f"field `{path}`: batch {b} does not split into {m} micro-batches")
            rows = x.reshape(x.shape[:d] + (b // m, m) + x.shape[d + 1:])  # row i*m + k -> [.., i, k, ..]
            _set(out, path, jnp.moveaxis(rows, d + 1, 0))
        return out
