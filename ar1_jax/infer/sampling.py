"""Next-token sampling: greedy, temperature and nucleus (top-p), with banned id ranges."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ban_range(logits, start: int, stop: int):
    """Sets logits of ids in [start, stop) to -inf (AR1 masks trajectory tokens while reasoning)."""
    ids = jnp.arange(logits.shape[-1])
    return jnp.where((ids >= start) & (ids < stop), -jnp.inf, logits)


def sample(logits, key, *, temperature: float, top_p: float):
    """One id per row of `logits [N, V]`: argmax when temperature == 0, else a draw from the
    temperature-scaled distribution restricted to the smallest set of ids whose probability mass
    reaches `top_p` (the most likely id always stays)."""
    logits = logits.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        sorted_logits = jnp.where(mass_before < top_p, sorted_logits, -jnp.inf)
        logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
