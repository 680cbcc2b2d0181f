"""Tokenizers with the AR1 special and trajectory tokens.

Two tokenizers share one interface (`encode`, `decode`, `id_of`, `vocab_size`, `traj_token_offset`,
`image_token_id`, ...):

- `Tokenizer`: a sentencepiece model trained on the reasoning corpus (`train_tokenizer`), with the
  special and trajectory tokens appended after its pieces at fixed ids. Id layout:

      [0, B)                  sentencepiece pieces (B = base_vocab_size): <unk> = 0, the 256 byte
                              pieces <0x00>..<0xFF>, then the learned pieces
      [B, B + S)              SPECIAL_TOKENS in order (S = 36): the 8 Qwen chat/vision tokens, then the
                              28 release tokens not already among them
      [B + S, B + S + 4000)   trajectory tokens <i0>..<i3999>: future bins <i0>..<i2999>
                              (`traj_token_offset`), history bins <i3000>..<i3999>
                              (`history_token_offset`)
      vocab_size = B + S + 4000

  (The release appends to Qwen's vocabulary in the other order: <i0>..<i3999>, then its special
  tokens. Ids are never compared across tokenizers; every consumer asks `id_of` / the offsets.)

- `HFTokenizerAdapter`: a Hugging Face `tokenizer.json` (the `tokenizers` library), used with a
  released checkpoint; ids are whatever that file says.

`encode` recognises special and trajectory token strings inside text and gives each a single id; between
them it runs the base model. For `Tokenizer`, `decode(encode(t)) == t` exactly for every valid
Unicode string t (whitespace runs, newlines, control characters, text containing special tokens),
because the base model is trained with identity normalisation, no dummy prefix, no whitespace
folding, and byte fallback.

The AR1 prompt template over these tokenizers is `ar1_jax.text.prompt`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "QWEN_SPECIAL_TOKENS", "RELEASE_SPECIAL_TOKENS", "SPECIAL_TOKENS", "NUM_TRAJ_TOKENS",
    "NUM_FUTURE_TRAJ_TOKENS", "PAD_TOKEN", "EOS_TOKEN", "traj_token", "train_tokenizer", "BaseTokenizer",
    "Tokenizer", "HFTokenizerAdapter",
]

#: Qwen2.5-VL / Qwen3-VL added tokens that the AR1 template uses (in Qwen's id order: 151643,
#: 151644, 151645, 151652..151656). Pad is <|endoftext|>, end of turn / eos is <|im_end|>.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
#: The release's added special tokens, in its order (NVlabs/alpamayo
#: `src/alpamayo_r1/models/base_model.py`, SPECIAL_TOKENS_KEYS, each wrapped as "<|key|>"). The release
#: adds them with `add_tokens(..., special_tokens=True)`; <|image_pad|> already exists in Qwen.
RELEASE_SPECIAL_TOKENS: tuple[str, ...] = tuple(f"<|{k}|>" for k in (
    "prompt_start", "prompt_end", "image_start", "image_pre_tkn", "image_end", "traj_history_start",
    "traj_history_pre_tkn", "traj_history_end", "cot_start", "cot_end", "meta_action_start", "meta_action_end",
    "traj_future_start", "traj_future_pre_tkn", "traj_future_end", "traj_history", "traj_future", "image_pad",
    "vectorized_wm", "vectorized_wm_start", "vectorized_wm_end", "vectorized_wm_pre_tkn", "route_start",
    "route_pad", "route_end", "question_start", "question_end", "answer_start", "answer_end",
))
#: Every special token of `Tokenizer`, in id order after the base pieces.
SPECIAL_TOKENS: tuple[str, ...] = tuple(dict.fromkeys(QWEN_SPECIAL_TOKENS + RELEASE_SPECIAL_TOKENS))
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

#: Trajectory vocabulary: <i0>..<i{NUM_TRAJ_TOKENS-1}> (release `traj_vocab_size`); future-control
#: bins take the first NUM_FUTURE_TRAJ_TOKENS, history-delta bins the rest.
NUM_TRAJ_TOKENS = 4000
NUM_FUTURE_TRAJ_TOKENS = 3000

_SP_MODEL_FILE = "sentencepiece.model"
_CONFIG_FILE = "ar1_tokenizer.json"
_SPACE = "\u2581"  # sentencepiece's whitespace symbol
_TRAJ_RE = re.compile(r"<i(0|[1-9][0-9]*)>")


def traj_token(index: int) -> str:
    """The string of trajectory token `index`: `<i{index}>`."""
    return f"<i{int(index)}>"


# ----------------------------------------------------------------------------------------------------
# Training.


def train_tokenizer(texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int = 1024, *,
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    special_tokens: Sequence[str] = SPECIAL_TOKENS) -> pathlib.Path:
    """Trains a sentencepiece model on `texts`, offline and deterministically; returns `{out_prefix}.model`.

    Settings that make every string round-trip exactly through `Tokenizer`: byte fallback (any
    character is representable), identity normalisation, no dummy prefix, whitespace kept as is;
    digits are split. Special and trajectory token strings are cut out of the corpus, so they never
    become pieces; lines are sentences. Single-threaded, no sampling: the same corpus gives the same
    model. `vocab_size` is the number of base pieces (>= 300: 256 byte pieces + <unk> + characters
    and merges); it is a soft limit on a small corpus. Also writes `{out_prefix}.vocab`.
    """
    import sentencepiece as spm

    if vocab_size < 300:
        raise ValueError(f"train_tokenizer: vocab_size must be >= 300 (256 byte pieces + <unk> + pieces), "
                         f"got {vocab_size}")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"train_tokenizer: model_type must be 'bpe' or 'unigram', got {model_type!r}")
    splitter = _special_splitter(special_tokens)
    sentences: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer: texts must be strings, got {type(text).__name__}")
        for part in splitter.split(text)[::2]:  # odd entries are the special tokens cut out
            sentences.extend(line for line in part.split("\n") if line.strip())
    if not sentences:
        raise ValueError("train_tokenizer: the corpus has no text (after removing special tokens and empty lines)")
    out_prefix = pathlib.Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_prefix=str(out_prefix), vocab_size=vocab_size,
            model_type=model_type, byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
            character_coverage=character_coverage, num_threads=1, hard_vocab_limit=False, unk_id=0, bos_id=-1,
            eos_id=-1, pad_id=-1, input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=1 << 16,
            minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"train_tokenizer: sentencepiece failed for vocab_size={vocab_size} on "
                         f"{len(sentences)} sentences: {e}") from e
    return out_prefix.with_name(out_prefix.name + ".model")


def _special_splitter(tokens: Sequence[str]) -> re.Pattern:
    """A regex whose `split` yields text pieces and, as captured groups, special/trajectory tokens."""
    alternatives = "|".join(re.escape(t) for t in sorted(set(tokens), key=len, reverse=True))
    traj = r"<i(?:0|[1-9][0-9]*)>"
    return re.compile(f"({alternatives}|{traj})" if alternatives else f"({traj})")


# ----------------------------------------------------------------------------------------------------
# Tokenizers.


class BaseTokenizer:
    """What `Tokenizer` and `HFTokenizerAdapter` share: named ids and trajectory-id helpers."""

    num_traj_tokens: int
    num_future_traj_tokens: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def id_of(self, token: str) -> int:
        raise NotImplementedError

    def is_added_id(self, token_id: int) -> bool:
        """Whether `token_id` is a special or trajectory token (not a piece of ordinary text)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return self.id_of(PAD_TOKEN)

    @property
    def eos_id(self) -> int:
        return self.id_of(EOS_TOKEN)

    @property
    def image_token_id(self) -> int:
        return self.id_of("<|image_pad|>")

    @property
    def video_token_id(self) -> int:
        return self.id_of("<|video_pad|>")

    @property
    def vision_start_token_id(self) -> int:
        return self.id_of("<|vision_start|>")

    @property
    def vision_end_token_id(self) -> int:
        return self.id_of("<|vision_end|>")

    @property
    def traj_token_offset(self) -> int:
        """Id of `<i0>`; trajectory token k has id `traj_token_offset + k`."""
        return self.id_of("<i0>")

    @property
    def history_token_offset(self) -> int:
        """Id of the first history token, `<i{num_future_traj_tokens}>`."""
        return self.traj_token_offset + self.num_future_traj_tokens

    @property
    def num_history_traj_tokens(self) -> int:
        return self.num_traj_tokens - self.num_future_traj_tokens

    def future_ids(self, bins: Iterable[int]) -> list[int]:
        """Token ids of future-control bins in [0, num_future_traj_tokens)."""
        return self._bins_to_ids(bins, self.traj_token_offset, self.num_future_traj_tokens, "future bins")

    def history_ids(self, bins: Iterable[int]) -> list[int]:
        """Token ids of history-delta bins in [0, num_traj_tokens - num_future_traj_tokens)."""
        return self._bins_to_ids(bins, self.history_token_offset, self.num_history_traj_tokens, "history bins")

    def traj_index(self, ids: Iterable[int]) -> np.ndarray:
        """k of each `<ik>` id, -1 for ids that are not trajectory tokens."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64) - self.traj_token_offset
        return np.where((arr >= 0) & (arr < self.num_traj_tokens), arr, -1)

    def _bins_to_ids(self, bins: Iterable[int], offset: int, size: int, what: str) -> list[int]:
        arr = np.asarray(list(bins) if not isinstance(bins, np.ndarray) else bins)
        if arr.ndim != 1:
            raise ValueError(f"{what}: expected a 1-D sequence, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what}: expected integers, got dtype {arr.dtype}")
        bad = np.flatnonzero((arr < 0) | (arr >= size))
        if bad.size:
            raise ValueError(f"{what}: expected values in [0, {size}), got {int(arr[bad[0]])} at index {int(bad[0])}")
        return (arr.astype(np.int64) + offset).tolist()


class Tokenizer(BaseTokenizer):
    """A sentencepiece model plus the special and trajectory tokens at fixed ids (see module docstring).

    Args:
      model: path of a `.model` file, or its bytes.
      special_tokens: the special tokens, in id order after the base pieces.
      num_traj_tokens, num_future_traj_tokens: size of the trajectory vocabulary and of its future part.
    """

    def __init__(self, model: str | os.PathLike | bytes, *, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                 num_traj_tokens: int = NUM_TRAJ_TOKENS, num_future_traj_tokens: int = NUM_FUTURE_TRAJ_TOKENS):
        import sentencepiece as spm

        if isinstance(model, (bytes, bytearray)):
            self._model_bytes = bytes(model)
        else:
            path = pathlib.Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"sentencepiece model file not found: {path}")
            self._model_bytes = path.read_bytes()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._model_bytes)
        except Exception as e:
            raise ValueError(f"not a sentencepiece model ({type(e).__name__}: {e})") from e
        special_tokens = tuple(special_tokens)
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError("special_tokens has duplicates")
        for t in special_tokens:
            if not t or _TRAJ_RE.fullmatch(t):
                raise ValueError(f"special token {t!r} is empty or has the trajectory token form <iN>")
        if not 0 < num_future_traj_tokens <= num_traj_tokens:
            raise ValueError(f"need 0 < num_future_traj_tokens ({num_future_traj_tokens}) <= num_traj_tokens "
                             f"({num_traj_tokens})")
        self.special_tokens = special_tokens
        self.num_traj_tokens = int(num_traj_tokens)
        self.num_future_traj_tokens = int(num_future_traj_tokens)
        self.base_vocab_size = self._sp.get_piece_size()
        self.special_token_offset = self.base_vocab_size
        self._traj_offset = self.base_vocab_size + len(special_tokens)
        self._special_ids = {t: self.base_vocab_size + i for i, t in enumerate(special_tokens)}
        self._splitter = _special_splitter(special_tokens)
        # Bytes of each base piece, for an exact decode (byte pieces are raw bytes; U+2581 is a space).
        table = []
        for i in range(self.base_vocab_size):
            piece = self._sp.id_to_piece(i)
            if self._sp.is_byte(i):
                table.append(bytes([int(piece[3:5], 16)]))
            elif self._sp.is_control(i):
                table.append(b"")
            elif self._sp.is_unknown(i):
                table.append("\ufffd".encode())
            else:
                table.append(piece.replace(_SPACE, " ").encode("utf-8"))
        self._piece_bytes = table
        try:  # a literal U+2581 in text is written as its three byte pieces (the symbol itself decodes to " ")
            self._space_symbol_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE.encode()]
        except Exception:  # pragma: no cover - any byte-fallback model has them
            self._space_symbol_ids = []
        if not self._space_symbol_ids or any(self._sp.is_unknown(i) for i in self._space_symbol_ids):
            raise ValueError("sentencepiece model lacks byte pieces: train it with byte_fallback=True "
                             "(ar1_jax.text.tokenizer.train_tokenizer does)")

    # -- persistence --------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes `sentencepiece.model` and `ar1_tokenizer.json` into `directory`; returns it."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _SP_MODEL_FILE).write_bytes(self._model_bytes)
        config = {
            "format": "ar1_jax.text.Tokenizer/1",
            "model_file": _SP_MODEL_FILE,
            "base_vocab_size": self.base_vocab_size,
            "special_tokens": list(self.special_tokens),
            "num_traj_tokens": self.num_traj_tokens,
            "num_future_traj_tokens": self.num_future_traj_tokens,
            "pad_token": PAD_TOKEN,
            "eos_token": EOS_TOKEN,
            "vocab_size": self.vocab_size,
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Reads a directory written by `save`; a missing or bad file is named in the error."""
        directory = pathlib.Path(directory)
        config_path = directory / _CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"tokenizer config not found: {config_path}")
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer config {config_path} is not valid JSON: {e}") from e
        for key in ("special_tokens", "num_traj_tokens", "num_future_traj_tokens"):
            if key not in config:
                raise ValueError(f"tokenizer config {config_path} has no `{key}`")
        model_path = directory / config.get("model_file", _SP_MODEL_FILE)
        if not model_path.is_file():
            raise FileNotFoundError(f"sentencepiece model file not found: {model_path}")
        tok = cls(model_path, special_tokens=config["special_tokens"], num_traj_tokens=config["num_traj_tokens"],
                  num_future_traj_tokens=config["num_future_traj_tokens"])
        if "base_vocab_size" in config and config["base_vocab_size"] != tok.base_vocab_size:
            raise ValueError(f"tokenizer config {config_path}: base_vocab_size {config['base_vocab_size']} does not "
                             f"match {model_path} ({tok.base_vocab_size} pieces)")
        return tok

    # -- vocabulary ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._traj_offset + self.num_traj_tokens

    @property
    def traj_token_offset(self) -> int:
        return self._traj_offset

    def id_of(self, token: str) -> int:
        """Id of a special token, a trajectory token `<iN>`, or a base piece; KeyError names a missing one."""
        if token in self._special_ids:
            return self._special_ids[token]
        m = _TRAJ_RE.fullmatch(token)
        if m:
            k = int(m.group(1))
            if k < self.num_traj_tokens:
                return self._traj_offset + k
            raise KeyError(f"trajectory token {token!r} is out of range: this tokenizer has "
                           f"<i0>..<i{self.num_traj_tokens - 1}>")
        piece_id = self._sp.piece_to_id(token)
        if piece_id != self._sp.unk_id() or token == self._sp.id_to_piece(self._sp.unk_id()):
            return piece_id
        raise KeyError(f"token {token!r} is not in the vocabulary (not a special token, <iN>, or base piece)")

    def token_of(self, token_id: int) -> str:
        """The string of one id: a base piece (sentencepiece notation), a special token or `<iN>`."""
        token_id = self._check_id(token_id)
        if token_id < self.base_vocab_size:
            return self._sp.id_to_piece(token_id)
        if token_id < self._traj_offset:
            return self.special_tokens[token_id - self.base_vocab_size]
        return traj_token(token_id - self._traj_offset)

    def is_added_id(self, token_id: int) -> bool:
        return self.base_vocab_size <= int(token_id) < self.vocab_size

    def _check_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range [0, {self.vocab_size})")
        return token_id

    # -- encode / decode ----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special and trajectory token strings in it become their single ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode: expected str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"encode: text is not valid Unicode ({e.reason} at index {e.start})") from None
        ids: list[int] = []
        for i, part in enumerate(self._splitter.split(text)):
            if not part:
                continue
            if i % 2:  # a captured special or trajectory token
                if part in self._special_ids:
                    ids.append(self._special_ids[part])
                    continue
                k = int(part[2:-1])
                if k < self.num_traj_tokens:
                    ids.append(self._traj_offset + k)
                    continue
            ids.extend(self._encode_plain(part))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for j, chunk in enumerate(text.split(_SPACE)):
            if j:
                ids.extend(self._space_symbol_ids)
            if chunk:
                ids.extend(self._sp.encode(chunk, out_type=int))
        return ids

    def decode(self, ids: Iterable[int], *, skip_unknown: bool = False) -> str:
        """Text of `ids`: the exact inverse of `encode`. Ids outside the vocabulary raise ValueError,
        or decode to nothing with `skip_unknown=True` (for ids sampled from a padded embedding)."""
        out = bytearray()
        base, traj_off, vocab = self.base_vocab_size, self._traj_offset, self.vocab_size
        for token_id in (ids.tolist() if isinstance(ids, np.ndarray) else ids):
            token_id = int(token_id)
            if 0 <= token_id < base:
                out += self._piece_bytes[token_id]
            elif base <= token_id < traj_off:
                out += self.special_tokens[token_id - base].encode("utf-8")
            elif traj_off <= token_id < vocab:
                out += f"<i{token_id - traj_off}>".encode()
            elif not skip_unknown:
                raise ValueError(f"decode: token id {token_id} is out of range [0, {vocab})")
        return out.decode("utf-8", errors="replace")


class HFTokenizerAdapter(BaseTokenizer):
    """The `Tokenizer` interface over a Hugging Face `tokenizer.json` (`tokenizers` library).

    `path` is the file or a directory holding `tokenizer.json`. With `add_missing_tokens=True`,
    tokens the file lacks are appended the way the release extends Qwen's tokenizer: missing Qwen
    chat/vision tokens first (as special tokens), then `<i0>`..`<i{num_traj_tokens-1}>` (as
    ordinary added tokens), then the release special tokens. The trajectory tokens must have
    consecutive ids. Round trips are exact when the file has no normaliser (Qwen's NFC normaliser
    makes `decode(encode(t)) == NFC(t)`) and a byte-level decoder.
    """

    def __init__(self, path: str | os.PathLike, *, add_missing_tokens: bool = False,
                 num_traj_tokens: int = NUM_TRAJ_TOKENS, num_future_traj_tokens: int = NUM_FUTURE_TRAJ_TOKENS):
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        path = pathlib.Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer.json not found: {file}")
        try:
            self._tok = HFTokenizer.from_file(str(file))
        except Exception as e:
            raise ValueError(f"{file} is not a valid tokenizers file: {e}") from e
        self.path = file
        if not 0 < num_future_traj_tokens <= num_traj_tokens:
            raise ValueError(f"need 0 < num_future_traj_tokens ({num_future_traj_tokens}) <= num_traj_tokens "
                             f"({num_traj_tokens})")
        self.num_traj_tokens = int(num_traj_tokens)
        self.num_future_traj_tokens = int(num_future_traj_tokens)
        if add_missing_tokens:
            missing = [t for t in QWEN_SPECIAL_TOKENS if self._tok.token_to_id(t) is None]
            if missing:
                self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
            if self._tok.token_to_id("<i0>") is None:
                self._tok.add_tokens([AddedToken(traj_token(k), special=False, normalized=False)
                                      for k in range(self.num_traj_tokens)])
            missing = [t for t in RELEASE_SPECIAL_TOKENS if self._tok.token_to_id(t) is None]
            if missing:
                self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self._added_ids = frozenset(int(i) for i in self._tok.get_added_tokens_decoder())
        first = self._tok.token_to_id("<i0>")
        if first is not None:
            for k in range(self.num_traj_tokens):
                if self._tok.token_to_id(traj_token(k)) != first + k:
                    raise ValueError(f"{file}: trajectory tokens are not consecutive: {traj_token(k)} has id "
                                     f"{self._tok.token_to_id(traj_token(k))}, expected {first + k} "
                                     f"(<i0> = {first}, num_traj_tokens = {self.num_traj_tokens})")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def id_of(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in {self.path} (load with add_missing_tokens=True to append "
                           f"the release tokens)")
        return int(token_id)

    def is_added_id(self, token_id: int) -> bool:
        return int(token_id) in self._added_ids

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode: expected str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], *, skip_unknown: bool = False) -> str:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
        vocab = self.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad and not skip_unknown:
            raise ValueError(f"decode: token id {bad[0]} is out of range [0, {vocab})")
        return self._tok.decode([i for i in ids if 0 <= i < vocab], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes `tokenizer.json` (with any appended tokens) into `directory`; returns it."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        return directory
