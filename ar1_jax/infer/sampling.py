"""Next-token sampling and the one decode loop over a preallocated KV cache.

`sample` draws one id per row (greedy is temperature 0); `decode` runs it in a `lax.while_loop`,
feeding each drawn token through a model step until the budget is spent or every row has fed its
stop token (or ended its text: `end_ids`, replaced by the stop token). Greedy draws take the argmax of
the raw logits (no softmax, no sort); a temperature draw computes its log-prob once, from the same
normalised logits it samples from. Both `Engine` (reasoning, K samples, stop at `<|traj_future_start|>`) and
`VLMRunner.generate` (greedy, no stop token) decode through it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ar1_jax.model.kv_cache import KVCache

#: One decode step: `(tokens [N] int32, cache) -> (next-token logits [N, V], cache)`; the step writes
#: the tokens at slot `cache.length` and advances `cache.next_position` by one.
Step = Callable[[jax.Array, KVCache], tuple[jax.Array, KVCache]]


def ban_range(logits, start: int, stop: int):
    """Sets logits of ids in [start, stop) to -inf (AR1 masks trajectory tokens while reasoning)."""
    ids = jnp.arange(logits.shape[-1])
    return jnp.where((ids >= start) & (ids < stop), -jnp.inf, logits)


def allow_range(logits, start: int, stop: int):
    """Sets logits of ids outside [start, stop) to -inf (RL draws trajectory tokens from their range only)."""
    ids = jnp.arange(logits.shape[-1])
    return jnp.where((ids >= start) & (ids < stop), logits, -jnp.inf)


def drawn_logp(logits, tokens, temperature: float):
    """log-prob `[N]` of `tokens [N]` under softmax(logits / temperature) (before any top-p cut: the
    distribution a policy-gradient ratio compares against); 0 for greedy decoding."""
    if temperature == 0.0:
        return jnp.zeros(tokens.shape, jnp.float32)
    x = logits.astype(jnp.float32) / temperature
    return jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(x, axis=-1)


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
        # A log-depth scan, not jnp.cumsum: when the vocabulary axis is sharded (tensor parallelism),
        # XLA lowers cumsum to an all-gather and an O(V^2) reduce-window (seconds per token on CPU).
        mass_before = jax.lax.associative_scan(jnp.add, probs, axis=-1) - probs
        sorted_logits = jnp.where(mass_before < top_p, sorted_logits, -jnp.inf)
        logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
    if per_row_keys(key):  # row i draws with key[i] alone: its draw does not depend on the other rows
        return jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, logits).astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def per_row_keys(key) -> bool:
    """Whether `key` is a vector of typed PRNG keys `[N]`, one per row (else one key for all rows)."""
    return key is not None and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1


class Decoded(NamedTuple):
    """What `decode` returns (N rows, R = `max_tokens`).

    tokens: int32 [N, R], the decoded tokens in order. With `stop_id`, a row's entries after its stop
      token are 0 (a row that stopped feeds filler until every row has stopped; nothing reads those
      slots: the stop slot bounds each row's prefix).
    steps: int32 [], tokens fed through the model step (R - 1 without `stop_id`).
    stop_slot: int32 [N], the cache slot the stop token was written to (-1: none; no `stop_id`).
    stop_position: int32 [N], the rotary position of that stop token.
    forced: bool [N], the stop token was forced: at the last step (never drawn within the budget), or in
      place of an `end_ids` token (the row ended its text without it).
    cache: the cache after the last step.
    logp: float32 [N, R], each token's log-prob under the temperature-scaled distribution it was drawn
      from (after `ban` / `allow`, before top-p; `drawn_logp`); a forced stop token keeps the drawn one's.
    """

    tokens: jax.Array
    steps: jax.Array
    stop_slot: jax.Array
    stop_position: jax.Array
    forced: jax.Array
    cache: KVCache
    logp: jax.Array


def decode(step: Step, cache: KVCache, logits, key, *, max_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, ban: tuple[int, int] | None = None, allow: tuple[int, int] | None = None,
           stop_id: int | None = None, end_ids: tuple[int, ...] = ()) -> Decoded:
    """Decodes up to `max_tokens` tokens per row from the prefilled `cache` in a `lax.while_loop`.

    Args:
      step: the model's decode step (see `Step`).
      cache: a cache with room for `max_tokens` more slots.
      logits: [N, V] the logits of the first token to draw (the prefill's last position).
      key: PRNG key for the draws (one split per drawn token), or typed keys `[N]`, one per row, so
        that a row's draws do not depend on the batch it is in; None is allowed with temperature 0.
      max_tokens: the budget R (static).
      temperature, top_p: see `sample` (temperature 0 = greedy).
      ban: an id range [start, stop) never drawn (AR1: the trajectory tokens while reasoning).
      allow: the only id range [start, stop) drawn (RL: the future trajectory tokens).
      stop_id: with it, every drawn token is fed and the loop ends once every row has fed `stop_id`
        ("stop one token after": the stop token's KV is in the cache); a row that has not drawn it
        by the last step has it forced there. Without it, all R tokens are drawn and the last one is
        not fed (nothing reads the cache after it).
      end_ids: with `stop_id`, ids that end a row's text (end of text / turn): drawn, the row stops as
        if it had drawn `stop_id`, which is fed in its place (reported as `forced`).
    """
    n = logits.shape[0]
    greedy = temperature == 0.0
    if key is None and not greedy:
        raise ValueError("decode: sampling with temperature > 0 needs a PRNG key")

    def draw(logits, key):
        if ban is not None:
            logits = ban_range(logits, *ban)
        if allow is not None:
            logits = allow_range(logits, *allow)
        tok = sample(logits, key, temperature=temperature, top_p=top_p)
        return tok, drawn_logp(logits, tok, temperature)

    def split(key):
        if key is None:
            return None, None
        if per_row_keys(key):
            pair = jax.vmap(jax.random.split)(key)  # [N, 2]
            return pair[:, 0], pair[:, 1]
        return jax.random.split(key)

    key, sub = split(key)
    first, first_logp = draw(logits, sub)
    state = dict(step=jnp.int32(0), token=first, token_logp=first_logp, tokens=jnp.zeros((n, max_tokens), jnp.int32),
                 logp=jnp.zeros((n, max_tokens), jnp.float32),
                 cache=cache, stop_slot=jnp.full((n,), -1, jnp.int32), stop_position=jnp.zeros((n,), jnp.int32),
                 forced=jnp.zeros((n,), bool), key=key)
    num_fed = max_tokens if stop_id is not None else max_tokens - 1

    def cond(s):
        going = s["step"] < num_fed
        return going & jnp.any(s["stop_slot"] < 0) if stop_id is not None else going

    def body(s):
        c, tok, forced = s["cache"], s["token"], s["forced"]
        stop_slot, stop_position = s["stop_slot"], s["stop_position"]
        tok_logp = s["token_logp"]
        if stop_id is not None:
            done = stop_slot >= 0  # stopped at an earlier step: filler from here on
            ended = jnp.zeros_like(done)
            for e in end_ids:
                ended = ended | (tok == e)
            must_force = ((s["step"] == max_tokens - 1) & (tok != stop_id)) | ended
            must_force = must_force & ~done
            tok = jnp.where(must_force, stop_id, tok)
            is_stop = (tok == stop_id) & ~done
            stop_slot = jnp.where(is_stop, c.length, stop_slot)
            stop_position = jnp.where(is_stop, c.next_position, stop_position)
            forced = forced | must_force
            tok = jnp.where(done, 0, tok)
            tok_logp = jnp.where(done, 0.0, tok_logp)
        next_logits, c = step(tok, c)
        key, sub = split(s["key"])
        nxt, nxt_logp = draw(next_logits, sub)
        return dict(step=s["step"] + 1, token=nxt, token_logp=nxt_logp, tokens=s["tokens"].at[:, s["step"]].set(tok),
                    logp=s["logp"].at[:, s["step"]].set(tok_logp), cache=c, stop_slot=stop_slot,
                    stop_position=stop_position, forced=forced, key=key)

    s = jax.lax.while_loop(cond, body, state)
    tokens, logp = s["tokens"], s["logp"]
    if stop_id is None:
        tokens = tokens.at[:, max_tokens - 1].set(s["token"])
        logp = logp.at[:, max_tokens - 1].set(s["token_logp"])
    return Decoded(tokens, s["step"], s["stop_slot"], s["stop_position"], s["forced"], s["cache"], logp)
