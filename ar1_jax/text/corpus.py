"""The default reasoning corpus and the tokenizer trained on it (for configs with our id layout
and no released tokenizer): every CoC decision combination in three phrasings."""

from __future__ import annotations

import pathlib

from ar1_jax.text import coc
from ar1_jax.text import tokenizer as tok_lib


def coc_corpus(variants: int = 3) -> list[str]:
    return [coc.format(coc.Trace(lon, lat, direction=d), variant=v)
            for lon, lat, d in coc.decision_combinations() for v in range(variants)]


def default_tokenizer(base_vocab: int, cache_dir: str | pathlib.Path) -> tok_lib.Tokenizer:
    """Loads `cache_dir`'s tokenizer if it has `base_vocab` pieces, else trains and saves one."""
    cache_dir = pathlib.Path(cache_dir)
    try:
        tok = tok_lib.Tokenizer.load(cache_dir)
        if tok.base_vocab_size == base_vocab:
            return tok
    except (FileNotFoundError, ValueError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = tok_lib.train_tokenizer(coc_corpus(), cache_dir / "coc", vocab_size=base_vocab)
    tok = tok_lib.Tokenizer(model)
    tok.save(cache_dir)
    return tok
