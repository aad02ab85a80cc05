"""Tiny Qwen3-VL checkpoints built fully offline, for tests and the CPU demo.

No machine in this project can download weights, so tests and the demo run on real
Qwen3-VL architectures with random weights: a byte-level BPE tokenizer trained here on a
small built-in corpus (with the Qwen special tokens and a Qwen-style chat template), a
``Qwen3VLConfig`` with tiny sizes, and a ``Qwen3VLProcessor``, all written with
``save_pretrained`` so that ``AutoProcessor`` / ``AutoModelForImageTextToText`` and vLLM
load the folder by path like any Hub checkpoint.

Random weights give random text: fine for plumbing (sampling, scoring, batching, faults),
useless for judging answer quality.

Build the default teacher/student pair from the command line::

    python -m tools.tiny_models --out DIR
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

# Qwen's special tokens, in Qwen's order. The chat template and the processor refer to
# them by these exact strings, and vLLM's Qwen3-VL code looks the vision ones up by name.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = [
    ENDOFTEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
]
# <think> / </think> are ordinary (non-special) added tokens in Qwen: decoding with
# skip_special_tokens=True keeps them, so a reasoning block survives in the text.
THINK_TOKENS = [THINK_OPEN, THINK_CLOSE]

# Tokens a model must never emit: a sampled <|image_pad|> fed back for scoring would be
# taken for an image placeholder. Trained Qwen models never emit them; random weights
# would (about 1 token in 100 with a 512 vocabulary), so the tiny models suppress them.
NEVER_GENERATED = [IM_START, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# A Qwen-style chat template. Content is either a string or a list of parts
# ({"type": "image"} / {"type": "video"} / {"type": "text", "text": ...}); each image part
# becomes <|vision_start|><|image_pad|><|vision_end|>, which the processor expands to the
# image's token count. A system message is emitted only when given (Qwen3-VL does the same).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Default tokenizer corpus: digits, number formats, punctuation and the English of chart /
# document questions, so that any question tokenises into a compact number of tokens.
DEFAULT_CORPUS: list[str] = [
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100",
    "1000 2000 2019 2020 2021 2022 2023 2024 2025 0.5 1.5 2.25 3.14 10% 25% 50% 75% 99.9%",
    "$12.50 -3 +7 1,234 5,678,900 3/4 1:2 x=4 y=2.5 (a) (b) (c) (d) A B C D E",
    (
        "What is the value of the largest bar in the chart? What is the difference between "
        "the highest and the lowest values? How many bars are there in the plot? Which "
        "category has the smallest share? What is the sum of the two middle values?"
    ),
    "Answer the question using a single word or phrase. The answer is 42. Final answer: yes.",
    "Is the red line above the blue line in 2020? Yes, it is. No, it is not.",
    "In which year did the sales reach their peak? The peak was in the year 2015.",
    "What percentage of people said they were satisfied? About 35 percent of them.",
    "Read the table and the document: total, average, median, mean, ratio, rate, count.",
    "The title of the figure says revenue by region: north, south, east and west.",
    (
        "Describe the image. The picture shows a graph with an x-axis and a y-axis, a legend, "
        "labels, colors: red, green, blue, orange, purple, black, white, gray, yellow."
    ),
    (
        "Let me think step by step. First, read each value; then compare them; so the answer "
        "is the second one. Therefore the result is 17."
    ),
    "Punctuation: . , ; : ! ? ' \" ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ `",
    "Questions often ask who, what, when, where, why, which and how much or how many.",
    "user assistant system: You are a helpful assistant. Look at the image and answer.",
    "largest smallest highest lowest greater less more fewer most least first last second third",
    (
        "the of and to in is that for it as was with be by on not he this are or his from at "
        "which but have an they you were her she there been one all we their has would when"
    ),
]


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE on ``corpus`` and wrap it as a Qwen-style fast tokenizer.

    Byte-level: every string encodes (unknown text falls back to bytes), so no question
    ever fails to tokenise; the corpus only decides how compact the encoding is.
    ``vocab_size`` counts the special tokens and the 256 byte symbols.
    """

    corpus = list(DEFAULT_CORPUS if corpus is None else corpus)
    if not corpus:
        raise ValueError("build_tokenizer: the corpus is empty")
    reserved = len(SPECIAL_TOKENS) + len(THINK_TOKENS) + 256
    if vocab_size < reserved:
        raise ValueError(
            f"build_tokenizer: vocab_size {vocab_size} < {reserved} (bytes + specials)"
        )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        special_tokens=SPECIAL_TOKENS,  # ids 0..6, in Qwen's order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        padding_side="left",  # decoder-only batches pad on the left
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tok.add_tokens(THINK_TOKENS, special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _suppress_tokens(model, token_ids: list[int], strength: float = 30.0) -> None:
    """Make ``token_ids`` practically unsampleable by a random-weight Qwen3-VL.

    The LM head has no bias, so we build one: hidden dimension 0 of every token embedding
    is set to a constant and no layer writes to it (rows 0 of each o_proj / down_proj are
    zeroed), so at every text position the final hidden state keeps a positive value in
    dimension 0; the LM-head column 0 is then ``-strength`` for the suppressed tokens and 0
    for the others, which lowers their logits by roughly ``strength`` (prob. ~e^-30).
    Image positions carry vision features in dimension 0, but no token is sampled there.
    """

    lm = model.model.language_model
    with torch.no_grad():
        lm.embed_tokens.weight[:, 0] = 1.0
        for layer in lm.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        lm.norm.weight[0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[token_ids, 0] = -strength


def build_tiny_qwen3vl(
    out_dir,
    tokenizer,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 64,
    intermediate_size: int = 256,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    image_size: int = 224,
    seed: int = 0,
    num_kv_heads: int | None = None,
    max_position_embeddings: int = 4096,
    suppress_placeholders: bool = True,
) -> Path:
    """Build a random-weight Qwen3-VL in ``out_dir`` (model + processor + tokenizer).

    ``head_dim`` must be 32, 64 or 128: vLLM's CPU attention supports nothing else.
    ``image_size`` caps the processor (max_pixels = image_size**2) and sizes the vision
    tower's learned position grid. The text side uses GQA (``num_kv_heads`` defaults to
    half the heads) and interleaved M-RoPE as the real Qwen3-VL does. Saved in float32.
    ``suppress_placeholders`` keeps random weights from sampling vision placeholders (see
    :func:`_suppress_tokens`); a model that is going to be trained should not have it.
    """

    if head_dim not in (32, 64, 128):
        raise ValueError(f"head_dim={head_dim}: vLLM on the CPU supports only 32, 64 or 128")
    patch, merge = 16, 2
    if image_size % (patch * merge):
        raise ValueError(f"image_size={image_size} must be a multiple of {patch * merge}")
    num_kv_heads = num_kv_heads or max(1, num_heads // 2)
    # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections;
    # Qwen3-VL uses [24, 20, 20] for head_dim 128, we keep the same proportions.
    half = head_dim // 2
    mrope_section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]

    vocab = len(tokenizer)  # exactly: a larger head could sample ids the tokenizer lacks
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    grid = image_size // patch
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": max_position_embeddings,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": mrope_section,
                "mrope_interleaved": True,
            },
            "tie_word_embeddings": False,
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": ids[IM_END],
            "pad_token_id": ids[ENDOFTEXT],
            "dtype": "float32",
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2,
            "num_heads": max(1, vision_hidden // 64),  # vision head_dim 64 (or less if tiny)
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": grid * grid,
            "deepstack_visual_indexes": [0],  # keep the deepstack path exercised
        },
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    if suppress_placeholders:
        _suppress_tokens(model, [ids[t] for t in NEVER_GENERATED])
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
        bos_token_id=ids[ENDOFTEXT],
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    min_px = (patch * merge) ** 2 * 4  # at least 2x2 merged tokens
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=patch,
            merge_size=merge,
            temporal_patch_size=2,
            min_pixels=min_px,
            max_pixels=image_size * image_size,
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(
            patch_size=patch,
            merge_size=merge,
            temporal_patch_size=2,
        ),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "tiny_model.json").write_text(
        json.dumps(
            {
                "built_by": "tools.tiny_models",
                "params": n_params,
                "seed": seed,
                "image_size": image_size,
            },
            indent=2,
        )
        + "\n"
    )
    return out


# The default pair: the student is smaller in every text dimension but shares the
# tokenizer (same vocabulary and chat template), as the distillation trainer requires.
TEACHER_KWARGS = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 256,
    "seed": 0,
}
STUDENT_KWARGS = {
    "hidden_size": 64,
    "num_layers": 1,
    "num_heads": 1,
    "num_kv_heads": 1,
    "intermediate_size": 128,
    "seed": 1,
}


def make_teacher_student(out_root, corpus: Iterable[str] | None = None) -> tuple[Path, Path]:
    """Build the default test pair under ``out_root``: (``teacher``, ``student``) folders."""
    root = Path(out_root)
    tokenizer = build_tokenizer(corpus)
    teacher = build_tiny_qwen3vl(root / "teacher", tokenizer, **TEACHER_KWARGS)
    student = build_tiny_qwen3vl(root / "student", tokenizer, **STUDENT_KWARGS)
    return teacher, student


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder that receives teacher/ and student/")
    args = parser.parse_args(argv)
    teacher, student = make_teacher_student(args.out)
    print(f"teacher: {teacher}\nstudent: {student}")


if __name__ == "__main__":
    main()
