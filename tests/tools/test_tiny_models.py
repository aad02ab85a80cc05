"""The tiny offline Qwen3-VL checkpoints: tokenizer, config, loading by path, generation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.engine_fixtures import make_image
from tools import tiny_models as tm


@pytest.fixture(scope="module")
def tokenizer():
    return tm.build_tokenizer()


def test_tokenizer_specials_and_roundtrip(tokenizer):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tm.SPECIAL_TOKENS}
    assert sorted(ids.values()) == list(range(len(tm.SPECIAL_TOKENS)))  # Qwen's order
    assert tokenizer.eos_token == tm.IM_END and tokenizer.pad_token == tm.ENDOFTEXT
    assert len(tokenizer) == 512
    text = "Réponse: 3.14 — naïve? <think>step 1</think> 42"  # bytes outside the corpus
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # <think> survives skip_special_tokens (answer extraction needs to see the block)
    assert "<think>" in tokenizer.decode(
        tokenizer.encode("<think>x</think>"), skip_special_tokens=True
    )


def test_default_corpus_tokenises_questions_compactly(tokenizer):
    question = "What is the value of the largest bar in 2020?"
    n = len(tokenizer.encode(question))
    assert n <= len(question) // 2, n  # BPE merges learnt, not byte-per-char
    assert len(tokenizer.encode(" 2020")) <= 2 and len(tokenizer.encode(" 100%")) <= 3


def test_chat_template_renders_qwen_format(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert tokenizer.apply_chat_template(plain, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    )


def test_bad_arguments_are_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        tm.build_tiny_qwen3vl(tmp_path, tokenizer, head_dim=16)
    with pytest.raises(ValueError, match="empty"):
        tm.build_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size"):
        tm.build_tokenizer(vocab_size=100)


@pytest.mark.slow
def test_teacher_student_load_by_path_and_generate(tiny_models):
    teacher, student = tiny_models
    sizes = {}
    for path in (teacher, student):
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        cfg = model.config
        assert cfg.text_config.head_dim == 64  # vLLM CPU: 32/64/128 only
        assert cfg.text_config.vocab_size == len(processor.tokenizer)
        assert cfg.image_token_id == processor.tokenizer.convert_tokens_to_ids(tm.IMAGE_PAD)
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What is the value?"}],
            }
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[make_image(0, (300, 200))], return_tensors="pt")
        n_image_tokens = int((inputs["input_ids"] == cfg.image_token_id).sum())
        grid = inputs["image_grid_thw"][0]
        assert n_image_tokens == int(grid.prod()) // 4  # 2x2 merge
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 5 or int(out[0, -1]) in (
            model.generation_config.eos_token_id
        )
        sizes[path.name] = json.loads((path / "tiny_model.json").read_text())["params"]
        vocab_file = (path / "tokenizer.json").read_text()
        sizes[path.name + "_vocab"] = vocab_file
    assert sizes["student"] < sizes["teacher"]
    assert sizes["student_vocab"] == sizes["teacher_vocab"]  # one shared tokenizer


@pytest.mark.slow
def test_vision_tokens_are_suppressed(tiny_models):
    """Random weights must not emit <|image_pad|> & co. (fed back, they would be taken
    for image placeholders): their logits sit far below the best token's."""

    path = tiny_models[1]
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    tok = processor.tokenizer
    ids = tok("What is the value of the largest bar? 12 34", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0]
    suppressed = [tok.convert_tokens_to_ids(t) for t in tm.NEVER_GENERATED]
    allowed = [i for i in range(logits.shape[-1]) if i not in suppressed]
    gap = logits[:, allowed].max(-1).values - logits[:, suppressed].max(-1).values
    assert bool((gap > 15).all()), gap


def test_placeholder_suppression_can_be_left_out(tmp_path):
    """A model built to be trained keeps plain random embeddings (no constant channel)."""

    tok = tm.build_tokenizer()
    path = tm.build_tiny_qwen3vl(tmp_path / "m", tok, hidden_size=64, num_layers=1, num_heads=1,
                                 num_kv_heads=1, intermediate_size=128, vision_hidden=32,
                                 vision_depth=1, image_size=64, suppress_placeholders=False)
    model = AutoModelForImageTextToText.from_pretrained(path)
    emb = model.model.language_model.embed_tokens.weight
    assert not torch.allclose(emb[:, 0], torch.ones_like(emb[:, 0]))
    assert not model.lm_head.weight[:, 0].abs().max() > 1.0
