"""The toy-model tooling (tools/train_toys.py, tools/toy_report.py): the training stream,
the truncated student, the glyph read-out that stands in for a pretrained VLM's OCR, and
the per-family report."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from seeds.chartworld import WorldConfig, generate, make_example
from seeds.chartworld.spec import LABEL_SETS, PATCH, TOKEN, item_token
from tools.tiny_models import build_tiny_qwen3vl, build_tokenizer
from tools.toy_report import by_family
from tools.train_toys import (
    GLYPHS,
    ChartWorldRows,
    glyph_patch_embed,
    glyph_readout,
    heldout_rows,
    seed_position_code,
    truncate_model,
    white_is_zero,
)
from trainer.eval import EvalReport


def test_training_stream_rows_continue_where_a_phase_stopped():
    world = WorldConfig()
    first = ChartWorldRows(world, 10, seed=1, target="reasoning")
    later = ChartWorldRows(world, 10, seed=1, target="direct", start=7)
    assert later[0]["image"] == first[7]["image"] == make_example(world, 1, 7).image
    assert first[7]["target"].startswith("<think>") and later[0]["target"].startswith("Answer: ")
    assert later[0]["question"] == make_example(world, 1, 7).qa.question
    with pytest.raises(IndexError):
        later[10]


@pytest.mark.slow
def test_truncated_teacher_keeps_the_first_layers(tmp_path):

    torch.set_num_threads(1)
    src = build_tiny_qwen3vl(tmp_path / "t", build_tokenizer(), hidden_size=64, num_layers=3,
                             num_heads=1, num_kv_heads=1, intermediate_size=128,
                             vision_hidden=32, vision_depth=1, image_size=64)
    dst = truncate_model(src, tmp_path / "s", 2)
    full = AutoModelForImageTextToText.from_pretrained(src).state_dict()
    small = AutoModelForImageTextToText.from_pretrained(dst)
    assert small.config.text_config.num_hidden_layers == 2
    kept = small.state_dict()
    assert not any(".layers.2." in k for k in kept)
    for k, v in kept.items():
        torch.testing.assert_close(v, full[k], atol=0, rtol=0, msg=k)
    with pytest.raises(ValueError):
        truncate_model(src, tmp_path / "x", 4)


@pytest.mark.slow
def test_glyph_filters_respond_one_hot_to_rendered_glyphs(tmp_path):
    """The patch-embedding filters answer each glyph of a real chart with its own channel."""

    torch.set_num_threads(1)
    world = WorldConfig(kinds=["table"], min_items=3, max_items=3)
    model_dir = build_tiny_qwen3vl(tmp_path / "m", build_tokenizer(), hidden_size=64,
                                   num_layers=1, num_heads=1, num_kv_heads=1,
                                   intermediate_size=128, vision_hidden=64, vision_depth=1,
                                   image_size=160)
    white_is_zero(model_dir)
    assert glyph_patch_embed(model_dir, world) < 1e-3
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    ex = make_example(world, seed=0, index=0)
    img = Image.open(io.BytesIO(ex.image)).convert("RGB")
    proj = model.model.visual.patch_embed.proj
    for k, (label, value) in enumerate(zip(ex.chart.labels, ex.chart.values)):
        for glyph, dx in ((label, 0), (str(value), PATCH)):  # the item's two top patches
            x0, y0 = k * TOKEN + dx, 1 * TOKEN  # tables: items in token row 1
            crop = Image.new("RGB", (4 * PATCH, 4 * PATCH), (255, 255, 255))
            crop.paste(img.crop((x0, y0, x0 + PATCH, y0 + PATCH)), (0, 0))
            pixels = processor.image_processor(images=[crop], return_tensors="pt")["pixel_values"]
            patch = pixels[pixels.abs().sum(1).argmax()]
            with torch.no_grad():
                resp = torch.nn.functional.linear(patch, proj.weight.flatten(1), proj.bias)
            resp = resp[: len(GLYPHS)].numpy()
            assert int(np.argmax(resp)) == GLYPHS.index(glyph), (glyph, k)


@pytest.mark.slow
def test_glyph_readout_brings_each_item_to_the_lm_as_its_label_and_value(tmp_path):
    """After glyph_readout an item's vision token lies nearest the text embeddings of its
    own label and value; with the same model minus the read-out it does not."""

    torch.set_num_threads(1)
    world = WorldConfig()
    model_dir = build_tiny_qwen3vl(tmp_path / "m", build_tokenizer(), hidden_size=64,
                                   num_layers=1, num_heads=1, num_kv_heads=1,
                                   intermediate_size=128, vision_hidden=64, vision_depth=1,
                                   image_size=160)
    white_is_zero(model_dir)
    glyph_patch_embed(model_dir, world)
    seed_position_code(model_dir)
    examples = list(generate(world, 12, seed=5))

    def hits(model_dir) -> tuple[float, float]:
        model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        processor = AutoProcessor.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        embed = model.get_input_embeddings().weight
        letters, digits = LABEL_SETS["letters"], [str(d) for d in range(10)]
        letter_rows = embed[[tok.convert_tokens_to_ids(c) for c in letters]]
        digit_rows = embed[[tok.convert_tokens_to_ids(d) for d in digits]]
        label_ok = value_ok = total = 0
        for ex in examples:
            img = Image.open(io.BytesIO(ex.image)).convert("RGB")
            inputs = processor.image_processor(images=[img], return_tensors="pt")
            with torch.no_grad():
                tokens = model.model.get_image_features(
                    inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
            for k, (label, value) in enumerate(zip(ex.chart.labels, ex.chart.values)):
                row, col = item_token(ex.chart.kind, k, world.width, world.height)
                token = tokens[row * (world.width // TOKEN) + col]
                label_ok += int((letter_rows @ token).argmax()) == letters.index(label)
                value_ok += int((digit_rows @ token).argmax()) == value
                total += 1
        return label_ok / total, value_ok / total

    label_before, value_before = hits(model_dir)
    glyph_readout(model_dir)
    label_after, value_after = hits(model_dir)
    assert label_after >= 0.9 and value_after >= 0.9, (label_after, value_after)
    assert label_before < 0.5 and value_before < 0.5, (label_before, value_before)


def test_report_counts_accuracy_per_question_family():
    rows = heldout_rows(WorldConfig(), 60, seed=5)
    preds = [{"question": r["question"], "correct": i % 3 == 0} for i, r in enumerate(rows)]
    counts = by_family(rows, EvalReport(predictions=preds))
    assert sum(n for _, n in counts.values()) == 60 and sum(c for c, _ in counts.values()) == 20
    for fam, (c, n) in counts.items():
        idx = [i for i, r in enumerate(rows) if r["family"] == fam]
        assert (c, n) == (sum(i % 3 == 0 for i in idx), len(idx))
    with pytest.raises(ValueError, match="predictions for"):
        by_family(rows, EvalReport(predictions=preds[:-1]))
    with pytest.raises(ValueError, match="is not row"):
        by_family(rows, EvalReport(predictions=preds[1:] + preds[:1]))
