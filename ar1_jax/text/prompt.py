"""The AR1 prompt template: one sequence of images, history tokens, reasoning and future tokens.

`build_prompt` lays out one AR1 sequence in the release's chat template (ChatML as rendered by the
Qwen3-VL-Instruct chat template, with the release's special tokens) and says which positions are
which (`Segments`), for the SFT loss and for the model's embedding merge. It works with either
tokenizer of `ar1_jax.text.tokenizer` (it asks `id_of` / the trajectory offsets, never fixed ids).
`release_image_labels` writes the optional per-image camera / frame labels of the release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ar1_jax.text.tokenizer import BaseTokenizer

__all__ = [
    "NUM_HISTORY_TOKENS", "NUM_FUTURE_TOKENS", "SYSTEM_PROMPT", "INSTRUCTION", "INSTRUCTION_TRAJECTORY_ONLY",
    "RELEASE_CAMERAS", "CAMERA_DISPLAY_NAMES", "Segments", "build_prompt", "release_image_labels", "SEG_PROMPT",
    "SEG_IMAGE", "SEG_HISTORY", "SEG_REASONING", "SEG_FUTURE_START", "SEG_FUTURE", "SEG_END", "SEGMENT_NAMES",
]

#: Tokens per sequence (release `tokens_per_history_traj`, `tokens_per_future_traj`).
NUM_HISTORY_TOKENS = 48
NUM_FUTURE_TOKENS = 128

#: Release chat template texts (`chat_template/conversation.py`, `helper.py`).
SYSTEM_PROMPT = "You are a driving assistant that generates safe and accurate actions."
INSTRUCTION = "output the chain-of-thought reasoning of the driving process, then output the future trajectory."
INSTRUCTION_TRAJECTORY_ONLY = "output the future trajectory."

#: Release cameras in the order images are fed (sorted by the release camera index), with the display
#: names the release writes before a camera's images when `include_camera_ids` is on
#: (`common/constants.py`).
RELEASE_CAMERAS: tuple[str, ...] = (
    "camera_cross_left_120fov", "camera_front_wide_120fov", "camera_cross_right_120fov", "camera_front_tele_30fov")
CAMERA_DISPLAY_NAMES: dict[str, str] = {
    "camera_cross_left_120fov": "Front left camera",
    "camera_front_wide_120fov": "Front camera",
    "camera_cross_right_120fov": "Front right camera",
    "camera_front_tele_30fov": "Front telephoto camera",
    "camera_rear_left_70fov": "Rear left camera",
    "camera_rear_tele_30fov": "Rear camera",
    "camera_rear_right_70fov": "Rear right camera",
}

#: Segment kinds of `Segments.kind`.
SEG_PROMPT = 0  # chat scaffolding, system prompt, instruction, image labels, vision/history markers
SEG_IMAGE = 1  # <|image_pad|>: replaced by vision-tower embeddings
SEG_HISTORY = 2  # the history trajectory tokens
SEG_REASONING = 3  # <|cot_start|>, the reasoning text, <|cot_end|>
SEG_FUTURE_START = 4  # <|traj_future_start|>: the last token the action expert attends to
SEG_FUTURE = 5  # the discrete future trajectory tokens
SEG_END = 6  # <|traj_future_end|> and the assistant's <|im_end|>
SEGMENT_NAMES = ("prompt", "image", "history", "reasoning", "future_start", "future", "end")


@dataclass(frozen=True)
class Segments:
    """Which positions of a `build_prompt` sequence are what.

    Attributes:
      kind: int8 [L], one SEG_* code per position.
      image_spans: (start, stop) of each image's <|image_pad|> run, in image order.
      history_span: (start, stop) of the history tokens.
      reasoning_span: (start, stop) of the reasoning text between the CoT markers (stop = L while the
        reasoning is still to be generated); None without a CoT block.
      future_start_index: position of <|traj_future_start|>, or None.
      future_span: (start, stop) of the future tokens, or None.
    """

    kind: np.ndarray
    image_spans: tuple[tuple[int, int], ...]
    history_span: tuple[int, int]
    reasoning_span: tuple[int, int] | None
    future_start_index: int | None
    future_span: tuple[int, int] | None

    @property
    def image_mask(self) -> np.ndarray:
        return self.kind == SEG_IMAGE

    @property
    def history_mask(self) -> np.ndarray:
        return self.kind == SEG_HISTORY

    @property
    def reasoning_mask(self) -> np.ndarray:
        """The reasoning block, CoT markers included."""
        return self.kind == SEG_REASONING

    @property
    def future_mask(self) -> np.ndarray:
        """The discrete future trajectory tokens only."""
        return self.kind == SEG_FUTURE

    @property
    def prompt_mask(self) -> np.ndarray:
        return self.kind == SEG_PROMPT

    def loss_mask(self, *, reasoning: bool = True, trajectory: bool = True) -> np.ndarray:
        """Positions whose token is a training target, as in the release's label mask: the CoT block
        markers included (`reasoning`), and <|traj_future_start|> .. <|traj_future_end|> plus the
        assistant's <|im_end|> (`trajectory`). Weight the position's next-token loss on its token."""
        kinds = ([SEG_REASONING] if reasoning else []) + ([SEG_FUTURE_START, SEG_FUTURE, SEG_END] if trajectory else [])
        return np.isin(self.kind, kinds)


def release_image_labels(camera_names: Sequence[str], frames_per_camera: int, *, include_camera_ids: bool = False,
                         include_frame_nums: bool = False) -> list[str]:
    """Per-image label texts as the release writes them (camera-major order, cameras as given):
    "<display name>: " before each camera's first frame (`include_camera_ids`) and "frame j " before
    frame j (`include_frame_nums`). Both off (the AR1 release config) gives empty labels."""
    labels = []
    for cam in camera_names:
        if include_camera_ids and cam not in CAMERA_DISPLAY_NAMES:
            raise ValueError(f"unknown camera {cam!r}; known: {', '.join(CAMERA_DISPLAY_NAMES)}")
        for j in range(frames_per_camera):
            label = f"{CAMERA_DISPLAY_NAMES[cam]}: " if include_camera_ids and j == 0 else ""
            labels.append(label + (f"frame {j} " if include_frame_nums else ""))
    return labels


def build_prompt(tok: BaseTokenizer, *, num_images: int, image_token_counts: Sequence[int],
                 history_token_ids: Sequence[int], cot: str | None, include_future_start: bool,
                 future_token_ids: Sequence[int] | None = None, reasoning: bool = True,
                 image_labels: Sequence[str] | None = None, num_history_tokens: int = NUM_HISTORY_TOKENS,
                 num_future_tokens: int = NUM_FUTURE_TOKENS, system_prompt: str = SYSTEM_PROMPT
                 ) -> tuple[np.ndarray, Segments]:
    """Token ids of one AR1 sequence in the release chat template, and its `Segments`.

    Layout (ChatML as rendered by the Qwen3-VL-Instruct chat template; `{x}` is filled in, text
    between special tokens is encoded as one piece, exactly as encoding the whole string would):

        <|im_start|>system\\n{system_prompt}<|im_end|>\\n
        <|im_start|>user\\n
          for each image i: {image_labels[i]}<|vision_start|><|image_pad|> x image_token_counts[i]<|vision_end|>
          <|traj_history_start|>{48 history tokens <i3000+b>}<|traj_history_end|>
          {INSTRUCTION}<|im_end|>\\n                    (INSTRUCTION_TRAJECTORY_ONLY when reasoning=False)
        <|im_start|>assistant\\n
          <|cot_start|>{cot}<|cot_end|>                 (reasoning=True; with cot=None the sequence ends
                                                        after <|cot_start|>: the generation prompt)
          <|traj_future_start|>                         (include_future_start)
          {128 future tokens <i b>}<|traj_future_end|><|im_end|>\\n   (future_token_ids given: training)

    The four uses: generation prompt (cot=None, include_future_start=False); expert prefix (cot,
    include_future_start=True): prompt + reasoning + <|traj_future_start|>, the tokens whose KV the
    action expert reads; full training sequence (cot, future_token_ids); trajectory-only (reasoning=False).

    Args:
      tok: a `Tokenizer` or `HFTokenizerAdapter`.
      num_images, image_token_counts: number of images and the merged-token count of each (e.g. 180
        for a 320x576 frame with Qwen3-VL), in feed order: camera-major, frames oldest first.
      history_token_ids: history-delta bins in [0, num_traj_tokens - num_future_traj_tokens), as made by
        `ar1_jax.action.tokens`; written as <i{num_future_traj_tokens + b}>.
      cot: the reasoning text (plain text; special tokens are refused), or None.
      include_future_start: end the assistant turn's prefix with <|traj_future_start|>.
      future_token_ids: future-control bins in [0, num_future_traj_tokens), written as <i{b}>.
      reasoning: whether the sequence has a CoT block (the release's cot component).
      image_labels: text before each image (see `release_image_labels`); None: none.
    Returns:
      ids (int32 [L]) and `Segments`.
    """
    if num_images != len(image_token_counts):
        raise ValueError(f"build_prompt: num_images={num_images} but image_token_counts has "
                         f"{len(image_token_counts)} entries")
    if any(int(n) <= 0 for n in image_token_counts):
        raise ValueError(f"build_prompt: image_token_counts must be positive, got {list(image_token_counts)}")
    if image_labels is not None and len(image_labels) != num_images:
        raise ValueError(f"build_prompt: image_labels has {len(image_labels)} entries for {num_images} images")
    if len(history_token_ids) != num_history_tokens:
        raise ValueError(f"build_prompt: history_token_ids has {len(history_token_ids)} entries, expected "
                         f"{num_history_tokens}")
    if not reasoning and cot is not None:
        raise ValueError("build_prompt: cot given with reasoning=False")
    if reasoning and cot is None and include_future_start:
        raise ValueError("build_prompt: include_future_start needs the reasoning (cot) to precede it; pass cot, "
                         "or reasoning=False for a trajectory-only sequence")
    if future_token_ids is not None:
        if not include_future_start:
            raise ValueError("build_prompt: future_token_ids given with include_future_start=False")
        if len(future_token_ids) != num_future_tokens:
            raise ValueError(f"build_prompt: future_token_ids has {len(future_token_ids)} entries, expected "
                             f"{num_future_tokens}")

    try:
        history = tok.history_ids(history_token_ids)
    except ValueError as e:
        raise ValueError(f"build_prompt: history_token_ids: {e}") from None
    future = None
    if future_token_ids is not None:
        try:
            future = tok.future_ids(future_token_ids)
        except ValueError as e:
            raise ValueError(f"build_prompt: future_token_ids: {e}") from None

    ids: list[int] = []
    kinds: list[int] = []

    def add(token_ids: Sequence[int], kind: int) -> tuple[int, int]:
        start = len(ids)
        ids.extend(token_ids)
        kinds.extend([kind] * len(token_ids))
        return start, len(ids)

    def text(s: str, kind: int = SEG_PROMPT) -> tuple[int, int]:
        return add(tok.encode(s), kind)

    def special(name: str, kind: int = SEG_PROMPT) -> int:
        return add([tok.id_of(name)], kind)[0]

    text(f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n")
    image_id = tok.image_token_id
    image_spans = []
    for i, count in enumerate(image_token_counts):
        if image_labels is not None and image_labels[i]:
            label_ids = tok.encode(image_labels[i])
            if any(tok.is_added_id(t) for t in label_ids):
                raise ValueError(f"build_prompt: image_labels[{i}] contains a special token: {image_labels[i]!r}")
            add(label_ids, SEG_PROMPT)
        special("<|vision_start|>")
        image_spans.append(add([image_id] * int(count), SEG_IMAGE))
        special("<|vision_end|>")
    special("<|traj_history_start|>")
    history_span = add(history, SEG_HISTORY)
    special("<|traj_history_end|>")
    text((INSTRUCTION if reasoning else INSTRUCTION_TRAJECTORY_ONLY) + "<|im_end|>\n<|im_start|>assistant\n")

    reasoning_span = None
    if reasoning:
        special("<|cot_start|>", SEG_REASONING)
        if cot is None:
            reasoning_span = (len(ids), len(ids))
        else:
            cot_ids = tok.encode(cot)
            if any(tok.is_added_id(t) for t in cot_ids):
                raise ValueError(f"build_prompt: cot contains a special or trajectory token: {cot!r}")
            reasoning_span = add(cot_ids, SEG_REASONING)
            special("<|cot_end|>", SEG_REASONING)
    future_start_index = future_span = None
    if include_future_start:
        future_start_index = special("<|traj_future_start|>", SEG_FUTURE_START)
    if future is not None:
        future_span = add(future, SEG_FUTURE)
        special("<|traj_future_end|>", SEG_END)
        special("<|im_end|>", SEG_END)
        text("\n")

    kind = np.asarray(kinds, dtype=np.int8)
    if reasoning_span is not None and cot is None:
        reasoning_span = (reasoning_span[0], len(ids))
    segments = Segments(kind=kind, image_spans=tuple(image_spans), history_span=history_span,
                        reasoning_span=reasoning_span, future_start_index=future_start_index, future_span=future_span)
    return np.asarray(ids, dtype=np.int32), segments
