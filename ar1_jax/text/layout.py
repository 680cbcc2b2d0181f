"""Token-id layouts of AR1 vocabularies, computed from the tokenizers' declared orders.

Two layouts exist:
  * ours (`ar1_jax.text.tokenizer.Tokenizer`): base pieces [0, B), then SPECIAL_TOKENS, then <i0>..;
  * the release's (Qwen3 tokenizer of 151669 entries, then <i0>..<i3999>, then its 28 new special
    tokens in SPECIAL_TOKENS_KEYS order; <|image_pad|> reuses Qwen's id), vocab 155697.
Configs call these so that ids are never typed by hand.
"""

from __future__ import annotations

import dataclasses

from ar1_jax.config import Config, ConfigError, TokenConfig
from ar1_jax.text.tokenizer import NUM_TRAJ_TOKENS, RELEASE_SPECIAL_TOKENS, SPECIAL_TOKENS

QWEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
            "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
QWEN3_BASE_VOCAB = 151669  # len(Qwen3 tokenizer) before AR1's additions


def _token_config(ids: dict[str, int], traj_offset: int) -> TokenConfig:
    return TokenConfig(
        traj_token_offset=traj_offset, cot_start_id=ids["<|cot_start|>"], cot_end_id=ids["<|cot_end|>"],
        traj_history_start_id=ids["<|traj_history_start|>"], traj_history_end_id=ids["<|traj_history_end|>"],
        traj_future_start_id=ids["<|traj_future_start|>"], traj_future_end_id=ids["<|traj_future_end|>"],
        eos_id=ids["<|im_end|>"], pad_id=ids["<|endoftext|>"])


def vision_ids(ids: dict[str, int]) -> dict[str, int]:
    """The backbone config's image/video/vision-start/end ids."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def ours(base_vocab_size: int) -> tuple[dict[str, int], TokenConfig, int]:
    """(special token -> id, TokenConfig, vocab size) of our sentencepiece tokenizer with B pieces."""
    ids = {tok: base_vocab_size + i for i, tok in enumerate(SPECIAL_TOKENS)}
    offset = base_vocab_size + len(SPECIAL_TOKENS)
    return ids, _token_config(ids, offset), offset + NUM_TRAJ_TOKENS


def release(base_vocab: int = QWEN3_BASE_VOCAB, qwen_ids: dict[str, int] | None = None
            ) -> tuple[dict[str, int], TokenConfig, int]:
    """(special token -> id, TokenConfig, vocab size) of the released Alpamayo-R1-10B tokenizer:
    <i0>.. at `base_vocab`, then the new special tokens; `qwen_ids` overrides Qwen's own ids."""
    ids = {**QWEN_IDS, **(qwen_ids or {})}
    next_id = base_vocab + NUM_TRAJ_TOKENS
    for tok in RELEASE_SPECIAL_TOKENS:
        if tok not in ids:
            ids[tok] = next_id
            next_id += 1
    return ids, _token_config(ids, base_vocab), next_id


def with_our_tokens(cfg: Config, base_vocab_size: int = 512) -> Config:
    """`cfg` retargeted to our tokenizer's ids (B base pieces): its TokenConfig and the backbone's vision ids
    become `ours(B)`'s, and the vocabulary keeps its size (the embedding and LM head keep their shapes;
    the rows past our ids go unused, as Qwen's padded rows do). For synthetic-data runs of release-layout
    configs (throughput, MFU, memory) where the release tokenizer is not at hand."""
    ids, tokens, vocab = ours(base_vocab_size)
    if vocab > cfg.model.text.vocab_size:
        raise ConfigError(f"with_our_tokens: our layout needs {vocab} ids, more than {cfg.name!r}'s vocabulary of "
                          f"{cfg.model.text.vocab_size}")
    return dataclasses.replace(cfg, tokens=tokens, model=dataclasses.replace(cfg.model, **vision_ids(ids)))


def tokenizer_fits(tok, cfg: Config) -> bool:
    """Whether `tok`'s ids are `cfg`'s: the same `<i0>` offset and no id past the model's vocabulary (a
    larger vocabulary is fine: its extra rows go unused, like Qwen's padding and `with_our_tokens`)."""
    return tok.traj_token_offset == cfg.tokens.traj_token_offset and tok.vocab_size <= cfg.model.text.vocab_size
