"""(image, chat prompt, completion) -> model inputs, with labels on the completion only.

Shared by the SFT loop and the on-policy trainers. Rules that keep training honest:

* The prompt is rendered by the model's own chat template and expanded by the model's own
  processor (which turns one ``<|image_pad|>`` into as many as the image has tokens), so
  what the model is trained on is exactly what an engine will feed it at sampling time.
* Prompt and completion are tokenised separately, as generation sees them: the completion
  continues after the prompt's last token; a joint tokenisation could merge across that
  boundary and train on token sequences the model never produces.
* Only completion tokens (and the closing end-of-turn token, so the model learns to stop)
  carry labels; everything else is ``IGNORE_INDEX``.
* Truncation never cuts the prompt (which holds the image-token block): an over-long
  completion is cut at its tail, and a prompt longer than ``max_length`` is an error the
  caller counts and skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipeline.core.images import decode_image
from pipeline.sampling.prompts import user_message

IGNORE_INDEX = -100


class PromptTooLong(ValueError):
    """The prompt alone (image tokens included) exceeds ``max_length``."""


@dataclass
class Encoded:
    """One example as token ids plus the processor's image tensors for it."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # (patches, patch_dim) for this example's images
    image_grid_thw: torch.Tensor | None  # (n_images, 3)
    mm_token_type_ids: list[int] | None = None
    prompt_len: int = 0


def encode_prompt(processor, question: str, image: Any = None) -> dict[str, Any]:
    """Render + expand the prompt: ``input_ids`` (list), image tensors, token types."""
    images = [] if image is None else [decode_image(image)]
    text = processor.apply_chat_template(
        user_message(question, len(images)), add_generation_prompt=True, tokenize=False
    )
    out = processor(text=[text], images=images or None, return_tensors="pt")
    enc = {"input_ids": out["input_ids"][0].tolist()}
    enc["pixel_values"] = out.get("pixel_values")
    enc["image_grid_thw"] = out.get("image_grid_thw")
    mm = out.get("mm_token_type_ids")
    enc["mm_token_type_ids"] = None if mm is None else mm[0].tolist()
    return enc


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn (``<|im_end|>`` for Qwen templates)."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eos is None or eos == tokenizer.unk_token_id:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has neither <|im_end|> nor an eos token")
    return int(eos)


def encode_completion(tokenizer, text: str, *, add_end: bool = True) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [end_of_turn_id(tokenizer)] if add_end else ids


def join(prompt: dict[str, Any], completion_ids: list[int], max_length: int | None = None) -> Encoded:
    """Prompt encoding + completion ids -> one labelled example (completion-only labels)."""
    p_ids = prompt["input_ids"]
    if max_length is not None:
        if len(p_ids) > max_length:
            raise PromptTooLong(f"prompt has {len(p_ids)} tokens > max_length {max_length}")
        completion_ids = completion_ids[: max_length - len(p_ids)]
    ids = p_ids + list(completion_ids)
    labels = [IGNORE_INDEX] * len(p_ids) + list(completion_ids)
    mm = prompt.get("mm_token_type_ids")
    if mm is not None:
        mm = mm + [0] * len(completion_ids)
    return Encoded(ids, labels, prompt.get("pixel_values"), prompt.get("image_grid_thw"), mm,
                   prompt_len=len(p_ids))


def encode_example(processor, question: str, target: str, image: Any = None,
                   max_length: int | None = None) -> Encoded:
    tok = getattr(processor, "tokenizer", processor)
    return join(encode_prompt(processor, question, image), encode_completion(tok, target), max_length)


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into one batch (pads: attention 0, label ignored).

    Image tensors are concatenated in example order, which is the order the model meets
    the image-token blocks in the flattened batch.
    """
    if not examples:
        raise ValueError("collate: empty batch")
    width = max(len(e.input_ids) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    mm = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        input_ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        attention[i, :k] = 1
        if e.mm_token_type_ids is not None:
            mm[i, :k] = torch.tensor(e.mm_token_type_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    pix = [e.pixel_values for e in examples if e.pixel_values is not None]
    if pix:
        batch["pixel_values"] = torch.cat(pix, dim=0)
        batch["image_grid_thw"] = torch.cat(
            [e.image_grid_thw for e in examples if e.image_grid_thw is not None], dim=0)
    if any(e.mm_token_type_ids is not None for e in examples):
        batch["mm_token_type_ids"] = mm
    return batch


@dataclass
class SFTCollator:
    """Rows ``{"image", "question", "target"}`` -> a padded, completion-labelled batch.

    A row whose prompt exceeds ``max_length`` is dropped and counted in ``skipped``.
    """

    processor: Any
    max_length: int | None = None
    skipped: int = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor] | None:
        tok = getattr(self.processor, "tokenizer", self.processor)
        encoded = []
        for row in rows:
            try:
                encoded.append(encode_example(self.processor, row["question"], row["target"],
                                              row.get("image"), self.max_length))
            except PromptTooLong:
                self.skipped += 1
        if not encoded:
            return None
        return collate(encoded, pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
