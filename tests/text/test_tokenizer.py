"""Tokenizers, special/trajectory tokens (ar1_jax.text.tokenizer) and the prompt template over them
(ar1_jax.text.prompt; tested here with both tokenizers' fixtures)."""

import json
import os
import random

import numpy as np
import pytest

from ar1_jax.text import coc
from ar1_jax.text.prompt import (
    INSTRUCTION, INSTRUCTION_TRAJECTORY_ONLY, NUM_FUTURE_TOKENS, NUM_HISTORY_TOKENS, RELEASE_CAMERAS, SEG_END,
    SEG_FUTURE_START, SEG_HISTORY, SEG_IMAGE, SEG_PROMPT, SYSTEM_PROMPT, build_prompt, release_image_labels,
)
from ar1_jax.text.tokenizer import (
    QWEN_SPECIAL_TOKENS, RELEASE_SPECIAL_TOKENS, SPECIAL_TOKENS, HFTokenizerAdapter, Tokenizer, train_tokenizer,
)

SEED = int(os.environ.get("AR1_TEST_SEED", random.SystemRandom().randrange(2**31)))


def _corpus(rng, n=400):
    combos = list(coc.decision_combinations())
    texts = []
    for k in range(n):
        lon, lat, d = rng.choice(combos)
        comps = tuple(rng.sample(coc.COMPONENTS, rng.randint(0, 2)))
        texts.append(coc.format(coc.Trace(lon, lat, comps, d), k % coc.NUM_VARIANTS))
    return texts


def _random_text(rng, corpus):
    parts = []
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.1:
            parts.append(rng.choice(SPECIAL_TOKENS))
        elif r < 0.15:
            near_miss = rng.choice(["<i01>", "<i>", "<i-1>", "<|", "|>", "<|cot_start|"])
            parts.append(f"<i{rng.randint(0, 4100)}>" if rng.random() < 0.8 else near_miss)
        elif r < 0.3:
            parts.append(rng.choice([" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u2581", "\u3000", "\x00",
                                     "\u200b"]))
        elif r < 0.55:
            s = rng.choice(corpus)
            parts.append(s[rng.randint(0, len(s)):][: rng.randint(0, 40)])
        else:
            cp = rng.randrange(0x110000)
            while 0xD800 <= cp <= 0xDFFF:
                cp = rng.randrange(0x110000)
            parts.append(chr(cp))
    return "".join(parts)


@pytest.fixture(scope="module")
def corpus():
    return _corpus(random.Random(SEED))


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory, corpus):
    path = train_tokenizer(corpus + ["Ünïcödé line\twith tabs", "<|cot_start|>Stop.<|cot_end|><i7>"],
                           tmp_path_factory.mktemp("spm") / "coc", vocab_size=500)
    return Tokenizer(path)


def _hf_tokenizer_json(directory, corpus, with_tokens=True):
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(corpus, trainer)
    if with_tokens:  # the release's order on top of Qwen: Qwen tokens, <i0>.., then the release tokens
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
        hf.add_tokens([AddedToken(f"<i{k}>", special=False, normalized=False) for k in range(4000)])
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t in RELEASE_SPECIAL_TOKENS if t not in QWEN_SPECIAL_TOKENS])
    directory.mkdir(parents=True, exist_ok=True)
    hf.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory, corpus):
    pytest.importorskip("tokenizers")
    return HFTokenizerAdapter(_hf_tokenizer_json(tmp_path_factory.mktemp("hf"), corpus))


@pytest.fixture(params=["sentencepiece", "hf"])
def any_tok(request, sp_tok):
    return sp_tok if request.param == "sentencepiece" else request.getfixturevalue("hf_tok")


# ----------------------------------------------------------------------------------------------------


def test_special_token_lists():
    assert len(RELEASE_SPECIAL_TOKENS) == 29 == len(set(RELEASE_SPECIAL_TOKENS))
    for t in ("<|cot_start|>", "<|cot_end|>", "<|traj_history_start|>", "<|traj_history_end|>", "<|traj_history|>",
              "<|traj_future_start|>", "<|traj_future_end|>", "<|traj_future|>", "<|meta_action_start|>",
              "<|route_pad|>", "<|answer_end|>", "<|image_pad|>"):
        assert t in RELEASE_SPECIAL_TOKENS
    assert len(SPECIAL_TOKENS) == len(set(SPECIAL_TOKENS)) == 8 + 28
    assert SPECIAL_TOKENS[:8] == QWEN_SPECIAL_TOKENS
    assert set(SPECIAL_TOKENS) == set(QWEN_SPECIAL_TOKENS) | set(RELEASE_SPECIAL_TOKENS)


def test_round_trip_exact(sp_tok, corpus):
    rng = random.Random(SEED + 1)
    for _ in range(1500):
        s = _random_text(rng, corpus)
        ids = sp_tok.encode(s)
        assert all(0 <= i < sp_tok.vocab_size for i in ids)
        assert sp_tok.decode(ids) == s, (SEED, repr(s))
        assert sp_tok.decode(np.asarray(ids, np.int32)) == s
    for s in ["", " ", "  \n\n\t ", "\u2581", " \u2581 \u2581\u2581x", "\r\n", "\x00\x01\x7f", "e\u0301 \ufb01",
              "<|cot_start|>Stop.<|cot_end|>", "<i3999><i4000><i0012>", "<|not_a_token|>", "x" * 10_000]:
        assert sp_tok.decode(sp_tok.encode(s)) == s, repr(s)


def test_layout_and_single_ids(sp_tok):
    base, n_special = sp_tok.base_vocab_size, len(SPECIAL_TOKENS)
    assert sp_tok.special_token_offset == base
    assert sp_tok.traj_token_offset == base + n_special
    assert sp_tok.history_token_offset == base + n_special + 3000
    assert sp_tok.vocab_size == base + n_special + 4000
    for k, t in enumerate(SPECIAL_TOKENS):
        assert sp_tok.encode(t) == [base + k] == [sp_tok.id_of(t)]
        assert sp_tok.token_of(base + k) == t
    rng = random.Random(SEED + 2)
    for k in [0, 2999, 3000, 3999] + [rng.randrange(4000) for _ in range(50)]:
        assert sp_tok.encode(f"<i{k}>") == [sp_tok.traj_token_offset + k] == [sp_tok.id_of(f"<i{k}>")]
    assert len(sp_tok.encode("<i4000>")) > 1
    ids = sp_tok.encode("<|cot_start|>Stop to yield.<|cot_end|><|traj_future_start|>")
    assert ids[0] == sp_tok.id_of("<|cot_start|>") and ids[-2:] == [sp_tok.id_of("<|cot_end|>"),
                                                                     sp_tok.id_of("<|traj_future_start|>")]
    assert all(i < base for i in ids[1:-2])
    assert sp_tok.image_token_id == sp_tok.id_of("<|image_pad|>")
    assert (sp_tok.pad_id, sp_tok.eos_id) == (sp_tok.id_of("<|endoftext|>"), sp_tok.id_of("<|im_end|>"))
    assert sp_tok.future_ids([0, 2999]) == [sp_tok.traj_token_offset, sp_tok.traj_token_offset + 2999]
    assert sp_tok.history_ids([0, 999]) == [sp_tok.history_token_offset, sp_tok.history_token_offset + 999]
    assert sp_tok.traj_index([sp_tok.traj_token_offset + 5, 3]).tolist() == [5, -1]
    with pytest.raises(ValueError, match=r"history bins: expected values in \[0, 1000\), got 1000"):
        sp_tok.history_ids([1, 1000])
    with pytest.raises(KeyError, match="<i4000>"):
        sp_tok.id_of("<i4000>")
    with pytest.raises(KeyError, match="nope"):
        sp_tok.id_of("<|nope|>")


def test_encode_decode_errors(sp_tok):
    with pytest.raises(ValueError, match="not valid Unicode"):
        sp_tok.encode("a\ud800b")
    with pytest.raises(TypeError):
        sp_tok.encode(b"bytes")
    with pytest.raises(ValueError, match=str(sp_tok.vocab_size)):
        sp_tok.decode([1, sp_tok.vocab_size])
    assert sp_tok.decode([sp_tok.vocab_size + 3, -1] + sp_tok.encode("ok"), skip_unknown=True) == "ok"


def test_save_load(sp_tok, tmp_path, corpus):
    sp_tok.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "ar1_tokenizer.json").read_text())
    assert config["special_tokens"] == list(SPECIAL_TOKENS) and config["vocab_size"] == sp_tok.vocab_size
    loaded = Tokenizer.load(tmp_path / "tok")
    rng = random.Random(SEED + 3)
    for _ in range(200):
        s = _random_text(rng, corpus)
        assert loaded.encode(s) == sp_tok.encode(s)
        assert loaded.decode(sp_tok.encode(s)) == s
    assert loaded.vocab_size == sp_tok.vocab_size and loaded.traj_token_offset == sp_tok.traj_token_offset
    (tmp_path / "tok" / "sentencepiece.model").unlink()
    with pytest.raises(FileNotFoundError, match="sentencepiece.model"):
        Tokenizer.load(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="ar1_tokenizer.json"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ar1_tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="ar1_tokenizer.json"):
        Tokenizer.load(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        Tokenizer(tmp_path / "nothing.model")


def test_training_is_deterministic_and_checked(tmp_path, corpus):
    a = Tokenizer(train_tokenizer(corpus, tmp_path / "a" / "m", 400))
    b = Tokenizer(train_tokenizer(corpus, tmp_path / "b" / "m", 400))
    pieces = [a.token_of(i) for i in range(a.base_vocab_size)]
    assert pieces == [b.token_of(i) for i in range(b.base_vocab_size)]
    assert not any(t in p for p in pieces for t in ("<|", "|>"))  # special tokens were cut out of the corpus
    with pytest.raises(ValueError, match="vocab_size must be >= 300"):
        train_tokenizer(corpus, tmp_path / "c" / "m", 100)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", "<|cot_start|>", "\n\n"], tmp_path / "d" / "m", 400)


def test_hf_adapter_round_trip(hf_tok, corpus):
    rng = random.Random(SEED + 4)
    for _ in range(1000):
        s = _random_text(rng, corpus)
        assert hf_tok.decode(hf_tok.encode(s)) == s, (SEED, repr(s))
    for t in SPECIAL_TOKENS:
        assert hf_tok.encode(t) == [hf_tok.id_of(t)]
    off = hf_tok.traj_token_offset
    for k in [0, 2999, 3000, 3999] + [rng.randrange(4000) for _ in range(50)]:
        assert hf_tok.encode(f"<i{k}>") == [off + k]
    assert hf_tok.history_token_offset == off + 3000
    assert hf_tok.is_added_id(hf_tok.image_token_id) and not hf_tok.is_added_id(hf_tok.encode("a")[0])
    with pytest.raises(KeyError, match="<|nope|>"):
        hf_tok.id_of("<|nope|>")


def test_hf_adapter_adds_release_tokens_and_checks_files(tmp_path, corpus):
    pytest.importorskip("tokenizers")
    base = _hf_tokenizer_json(tmp_path / "base", corpus, with_tokens=False)
    with pytest.raises(KeyError, match="add_missing_tokens"):
        HFTokenizerAdapter(base).id_of("<i0>")
    tok = HFTokenizerAdapter(base, add_missing_tokens=True)
    n_base = HFTokenizerAdapter(base).vocab_size
    assert tok.id_of("<|endoftext|>") == n_base  # Qwen tokens, then <i0>.., then the release tokens
    assert tok.traj_token_offset == n_base + len(QWEN_SPECIAL_TOKENS)
    assert tok.id_of("<|prompt_start|>") == tok.traj_token_offset + 4000
    assert tok.vocab_size == n_base + len(SPECIAL_TOKENS) + 4000
    tok.save(tmp_path / "saved")
    again = HFTokenizerAdapter(tmp_path / "saved")
    assert again.encode("<|cot_start|>Stop.<i5>") == tok.encode("<|cot_start|>Stop.<i5>")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizerAdapter(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------
# Prompt template.


def _expected_text(counts, history, cot, future):
    s = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
    s += "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in counts)
    s += "<|traj_history_start|>" + "".join(f"<i{3000 + b}>" for b in history) + "<|traj_history_end|>"
    s += INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n<|cot_start|>" + cot + "<|cot_end|><|traj_future_start|>"
    s += "".join(f"<i{b}>" for b in future) + "<|traj_future_end|><|im_end|>\n"
    return s


def test_build_prompt_training_layout(any_tok):
    tok = any_tok
    rng = np.random.default_rng(SEED)
    counts = rng.integers(1, 30, size=int(rng.integers(1, 6))).tolist()
    history = rng.integers(0, 1000, NUM_HISTORY_TOKENS).tolist()
    future = rng.integers(0, 3000, NUM_FUTURE_TOKENS).tolist()
    cot = "Stop to yield to the pedestrian crossing ahead."
    ids, seg = build_prompt(tok, num_images=len(counts), image_token_counts=counts, history_token_ids=history,
                            cot=cot, include_future_start=True, future_token_ids=future)
    assert ids.dtype == np.int32 and seg.kind.shape == ids.shape
    assert tok.decode(ids) == _expected_text(counts, history, cot, future)
    assert tok.encode(tok.decode(ids)) == ids.tolist()  # same as tokenizing the whole string

    assert (ids == tok.image_token_id).sum() == seg.image_mask.sum() == sum(counts)
    assert len(seg.image_spans) == len(counts)
    for (start, stop), n in zip(seg.image_spans, counts):
        assert stop - start == n and (ids[start:stop] == tok.image_token_id).all()
        assert ids[start - 1] == tok.vision_start_token_id and ids[stop] == tok.vision_end_token_id
    h0, h1 = seg.history_span
    assert h1 - h0 == seg.history_mask.sum() == 48
    assert ids[h0:h1].tolist() == [tok.history_token_offset + b for b in history]
    assert ids[h0 - 1] == tok.id_of("<|traj_history_start|>") and ids[h1] == tok.id_of("<|traj_history_end|>")
    r0, r1 = seg.reasoning_span
    assert tok.decode(ids[r0:r1]) == cot
    assert ids[r0 - 1] == tok.id_of("<|cot_start|>") and ids[r1] == tok.id_of("<|cot_end|>")
    assert seg.reasoning_mask.sum() == r1 - r0 + 2
    assert ids[seg.future_start_index] == tok.id_of("<|traj_future_start|>") and seg.future_start_index == r1 + 1
    f0, f1 = seg.future_span
    assert f1 - f0 == seg.future_mask.sum() == 128 and f0 == seg.future_start_index + 1
    assert ids[f0:f1].tolist() == [tok.traj_token_offset + b for b in future]
    assert ids[f1:f1 + 2].tolist() == [tok.id_of("<|traj_future_end|>"), tok.eos_id]
    assert tok.decode(ids[f1 + 2:]) == "\n"
    kinds = seg.kind.tolist()
    assert kinds[f1:f1 + 2] == [SEG_END, SEG_END] and kinds[-1] == SEG_PROMPT
    assert kinds[seg.future_start_index] == SEG_FUTURE_START
    # The prompt is everything before the CoT block except images and history.
    assert set(kinds[: r0 - 1]) == {SEG_PROMPT, SEG_IMAGE, SEG_HISTORY}
    assert seg.loss_mask().sum() == (r1 - r0 + 2) + 1 + 128 + 2
    assert seg.loss_mask(reasoning=False).sum() == 1 + 128 + 2
    assert seg.loss_mask(trajectory=False).sum() == r1 - r0 + 2
    assert not (seg.loss_mask() & (seg.image_mask | seg.history_mask | seg.prompt_mask)).any()


def test_build_prompt_generation_modes(any_tok):
    tok = any_tok
    rng = np.random.default_rng(SEED + 1)
    counts = [7] * 16
    history = rng.integers(0, 1000, 48).tolist()
    common = dict(num_images=16, image_token_counts=counts, history_token_ids=history)

    ids, seg = build_prompt(tok, cot=None, include_future_start=False, **common)
    assert ids[-1] == tok.id_of("<|cot_start|>") and seg.future_start_index is None and seg.future_span is None
    assert seg.reasoning_span == (len(ids), len(ids))
    assert tok.decode(ids).endswith(f"{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n<|cot_start|>")
    assert seg.image_mask.sum() == 16 * 7

    ids2, seg2 = build_prompt(tok, cot="Keep lane.", include_future_start=True, **common)
    assert ids2[-1] == tok.id_of("<|traj_future_start|>") and seg2.future_start_index == len(ids2) - 1
    assert ids2[: len(ids)].tolist() == ids.tolist()  # the expert prefix extends the generation prompt

    ids3, seg3 = build_prompt(tok, cot="Keep lane.", include_future_start=False, **common)
    assert ids3[-1] == tok.id_of("<|cot_end|>") and ids3.tolist() == ids2[:-1].tolist()

    ids4, seg4 = build_prompt(tok, cot=None, reasoning=False, include_future_start=True,
                              future_token_ids=list(range(128)), **common)
    text = tok.decode(ids4)
    assert "<|cot_start|>" not in text and f"{INSTRUCTION_TRAJECTORY_ONLY}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n<|traj_future_start|>" + "".join(f"<i{b}>" for b in range(128))
                         + "<|traj_future_end|><|im_end|>\n")
    assert seg4.reasoning_span is None and not seg4.reasoning_mask.any() and seg4.future_mask.sum() == 128


def test_build_prompt_image_labels(sp_tok):
    labels = release_image_labels(RELEASE_CAMERAS, 4, include_camera_ids=True, include_frame_nums=True)
    assert labels[:2] == ["Front left camera: frame 0 ", "frame 1 "] and labels[4] == "Front camera: frame 0 "
    assert release_image_labels(RELEASE_CAMERAS, 4) == [""] * 16
    ids, seg = build_prompt(sp_tok, num_images=16, image_token_counts=[3] * 16, history_token_ids=[0] * 48,
                            cot=None, include_future_start=False, image_labels=labels)
    text = sp_tok.decode(ids)
    assert "user\nFront left camera: frame 0 <|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>" \
           "frame 1 <|vision_start|>" in text
    assert seg.image_mask.sum() == 48 and all(seg.kind[s - 1] == SEG_PROMPT for s, _ in seg.image_spans)


def test_build_prompt_validation(sp_tok):
    ok = dict(num_images=1, image_token_counts=[4], history_token_ids=[0] * 48, cot="Stop.", include_future_start=True)
    build_prompt(sp_tok, **ok)
    cases = [
        (dict(num_images=2), "num_images=2"),
        (dict(history_token_ids=[0] * 47), "47 entries, expected 48"),
        (dict(history_token_ids=[3000] * 48), r"history_token_ids: .*\[0, 1000\), got 3000"),
        (dict(future_token_ids=[0] * 127), "127 entries, expected 128"),
        (dict(future_token_ids=[3000] * 128), r"future_token_ids: .*\[0, 3000\)"),
        (dict(future_token_ids=[0] * 128, include_future_start=False), "include_future_start=False"),
        (dict(cot=None), "needs the reasoning"),
        (dict(cot="Stop.<|cot_end|>"), "special"),
        (dict(reasoning=False), "reasoning=False"),
        (dict(image_token_counts=[0]), "positive"),
        (dict(image_labels=["a", "b"]), "image_labels"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            build_prompt(sp_tok, **{**ok, **change})
    ids, seg = build_prompt(sp_tok, **{**ok, "num_future_tokens": 4, "future_token_ids": [1, 2, 3, 4]})
    assert ids[seg.future_span[0]:seg.future_span[1]].tolist() == sp_tok.future_ids([1, 2, 3, 4])
