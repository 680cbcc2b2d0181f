"""Create, place and describe model state by its logical axes, without materialising it on one device.

    model = init_sharded(lambda: VLA(cfg, rngs=nnx.Rngs(0)), mesh)       # sharded from the start
    state = shard_state(state, mesh)                                       # re-place existing state
    graphdef, target = abstract_state(make_model, mesh)                    # orbax restore target
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from ar1_jax.parallel.rules import RuleTable, param_shardings


def abstract_state(make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                   rules: str | RuleTable = "default") -> tuple[Any, Any]:
    """(graphdef, state) where each Variable holds a `ShapeDtypeStruct` carrying its target `.sharding`.

    Nothing is allocated. The state is what `ocp.args.StandardRestore` takes to restore a checkpoint
    straight into the sharded layout.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make_model))
    shardings = param_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return graphdef, target


def init_sharded(make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                 rules: str | RuleTable = "default") -> nnx.Module:
    """Builds the module returned by `make_model` with every Variable created directly in its sharding.

    `make_model` takes no arguments (close over the config and seed); it is traced twice: once under
    `nnx.eval_shape` for shapes and metadata, once under `jax.jit` with `out_shardings`, so each device
    only ever computes and holds its own shard. Values equal an unsharded init with the same seed
    (threefry RNG is partitionable).
    """
    graphdef, init = sharded_init_fn(make_model, mesh, rules)
    return nnx.merge(graphdef, init())


def sharded_init_fn(make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                    rules: str | RuleTable = "default") -> tuple[Any, Callable[[], Any]]:
    """(graphdef, jitted zero-argument function returning the sharded state): `init_sharded`'s parts,
    for callers that want to lower/compile it (memory analysis) or merge it themselves."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make_model))
    shardings = param_shardings(abstract, mesh, rules)
    return graphdef, jax.jit(lambda: nnx.split(make_model())[1], out_shardings=shardings)


def shard_state(state: Any, mesh: jax.sharding.Mesh, rules: str | RuleTable = "default") -> Any:
    """`state` (an nnx State, e.g. from `nnx.split`) device_put to the shardings its logical axes ask for."""
    return jax.device_put(state, param_shardings(state, mesh, rules))
