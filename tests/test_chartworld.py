"""Chart-world generator: determinism, exact answers, skill coverage, decodable images."""

from __future__ import annotations

import collections
import io
import json

import pytest
from PIL import Image

from seeds.chartworld import (
    CHART_KINDS,
    SKILLS,
    Chart,
    WorldConfig,
    direct_target,
    generate,
    make_example,
    reasoning_target,
    recompute_answer,
    write_seed_set,
)
from seeds.chartworld.render import render_png
from seeds.chartworld.spec import LABEL_SETS

N = 700  # enough for every kind x skill pair to occur with the default uniform weights


@pytest.fixture(scope="module")
def examples():
    return list(generate(WorldConfig(), N, seed=3))


def test_same_seed_same_bytes_and_index_independent_of_range():
    cfg = WorldConfig()
    a = [ex.image for ex in generate(cfg, 20, seed=7)]
    b = [ex.image for ex in generate(cfg, 20, seed=7)]
    assert a == b
    # example i does not depend on where the range starts: shards can be made alone
    assert make_example(cfg, 7, 13).image == a[13]
    assert make_example(cfg, 7, 13).qa == list(generate(cfg, 5, seed=7, start=10))[3].qa
    other = [ex.image for ex in generate(cfg, 20, seed=8)]
    assert sum(x != y for x, y in zip(a, other)) >= 18


def test_render_depends_only_on_chart_and_style_seed():
    cfg = WorldConfig()
    ex = make_example(cfg, 1, 4)
    again = render_png(Chart.from_json(ex.chart.to_json()), cfg, ex.style_seed)
    assert again == ex.image


def test_every_answer_recomputes_from_chart_data(examples):
    for ex in examples:
        assert recompute_answer(ex.chart, ex.qa) == ex.qa.answer, (ex.chart, ex.qa)


def test_recompute_detects_a_wrong_answer(examples):
    ex = next(e for e in examples if e.qa.family == "sum_two")
    wrong = type(ex.qa)(**{**ex.qa.__dict__, "answer": str(int(ex.qa.answer) + 1)})
    assert recompute_answer(ex.chart, wrong) != wrong.answer


def test_all_skills_kinds_and_families_present(examples):
    skills = collections.Counter(ex.qa.skill for ex in examples)
    assert set(skills) == set(SKILLS)
    assert min(skills.values()) >= N // len(SKILLS) // 2
    pairs = {(ex.chart.kind, ex.qa.skill) for ex in examples}
    assert pairs == {(k, s) for k in CHART_KINDS for s in SKILLS}
    families = {ex.qa.family for ex in examples}
    assert {"ratio_two", "max_minus_label", "label_at", "count_above"} <= families


def test_images_decode_at_configured_size(examples):
    for ex in examples[:100]:
        img = Image.open(io.BytesIO(ex.image))
        img.load()
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (160, 128)
        assert len(img.getcolors(maxcolors=1 << 16)) > 2  # something was drawn


def test_world_parameters_are_honoured():
    cfg = WorldConfig(kinds=["bar", "line"], min_items=2, max_items=3, min_value=10,
                      max_value=50, label_set="days", width=128, height=96,
                      value_labels=False, skill_weights={"retrieval": 1.0, "arithmetic": 1.0})
    exs = list(generate(cfg, 80, seed=0))
    assert {ex.chart.kind for ex in exs} == {"bar", "line"}
    assert {ex.qa.skill for ex in exs} == {"retrieval", "arithmetic"}
    for ex in exs:
        assert 2 <= len(ex.chart.values) <= 3
        assert all(10 <= v <= 50 for v in ex.chart.values)
        assert set(ex.chart.labels) <= {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}
        assert Image.open(io.BytesIO(ex.image)).size == (128, 96)
        assert recompute_answer(ex.chart, ex.qa) == ex.qa.answer


def test_value_labels_change_the_picture():
    on = make_example(WorldConfig(kinds=["bar"]), 0, 0)
    off = make_example(WorldConfig(kinds=["bar"], value_labels=False), 0, 0)
    assert on.chart == off.chart and on.image != off.image


@pytest.mark.parametrize("bad", [
    dict(kinds=["scatter"]), dict(kinds=[]), dict(label_set="greek"),
    dict(min_items=4, max_items=3), dict(max_items=9), dict(min_value=5, max_value=5),
    dict(width=100), dict(width=96, kinds=["bar"], max_items=4),
    dict(height=64, kinds=["bar"]), dict(width=96, kinds=["pie"], max_items=3),
    dict(skill_weights={"algebra": 1.0}), dict(skill_weights={"text": 0.0}),
])
def test_bad_world_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        list(generate(WorldConfig(**bad), 1))


def test_targets_carry_the_answer_line():
    ex = make_example(WorldConfig(), 0, 2)
    assert direct_target(ex.qa) == f"Answer: {ex.qa.answer}"
    t = reasoning_target(ex.qa)
    assert t.startswith("<think>") and t.endswith(f"</think>\nAnswer: {ex.qa.answer}")
    answers = pytest.importorskip("pipeline.answers")
    assert answers.answers_match(answers.extract_answer(t), ex.qa.answer)
    assert answers.answers_match(answers.extract_answer(direct_target(ex.qa)), ex.qa.answer)


def test_seed_set_loads_as_chartqa_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = write_seed_set(tmp_path, WorldConfig(), 30, seed=5, split="test")
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path))["test"]
    assert len(ds) == 30
    assert {"question", "answer", "type", "image", "skill"} <= set(ds.column_names)
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[0]
    assert row["image"].size == (160, 128)
    ex = make_example(WorldConfig(), 5, 0)
    assert (row["question"], row["answer"], row["skill"]) == (ex.qa.question, ex.qa.answer, ex.qa.skill)
    assert Chart.from_json(row["chart"]) == ex.chart
    meta = json.loads((tmp_path / "chartworld.json").read_text())
    assert meta["seed"] == 5 and meta["n"] == 30 and meta["world"]["width"] == 160
    # rewriting the same set gives identical bytes (deterministic Parquet content)
    first = path.read_bytes()
    write_seed_set(tmp_path, WorldConfig(), 30, seed=5, split="test")
    assert path.read_bytes() == first


@pytest.mark.parametrize("kind", CHART_KINDS)
def test_each_item_label_and_value_share_one_token_at_fixed_offsets(kind):
    """The learnability contract of the layout: item k's label lies wholly inside the
    top-left patch of its token and its value inside the top-right one, at the same offset
    wherever the glyph appears (anti-aliasing varies with the page tint; the place not)."""
    from seeds.chartworld.render import PATCH, TOKEN, item_token

    cfg = WorldConfig(kinds=[kind])
    boxes: dict[tuple[str, str], list[tuple[int, int, int, int]]] = collections.defaultdict(list)
    for ex in generate(cfg, 40, seed=11):
        img = Image.open(io.BytesIO(ex.image)).convert("L")
        for k, (label, value) in enumerate(zip(ex.chart.labels, ex.chart.values)):
            row, col = item_token(kind, k, cfg.width, cfg.height)
            for what, dx, glyph in (("label", 0, label), ("value", PATCH, str(value))):
                x, y = col * TOKEN + dx, row * TOKEN
                # inner 14x14: table rules and page borders run along patch edges
                ink = img.crop((x + 1, y + 1, x + PATCH - 1, y + PATCH - 1)).point(
                    lambda p: 255 if p < 100 else 0)
                box = ink.getbbox()
                assert box is not None, (kind, k, what)  # the glyph is there
                assert box[0] > 0 and box[1] > 0 and box[2] < 14 and box[3] < 14, (kind, what, box)
                boxes[(what, glyph)].append(box)
    for key, found in boxes.items():
        for box in found:
            assert all(abs(a - b) <= 1 for a, b in zip(box, found[0])), (key, found)
    assert {g for (w, g) in boxes if w == "value"} >= {"1", "5", "9"}


def test_training_stream_rows_continue_where_a_phase_stopped():
    from seeds.chartworld.train_toys import ChartWorldRows

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
    import torch
    from transformers import AutoModelForImageTextToText

    from pipeline.tiny_models import build_tiny_qwen3vl, build_tokenizer
    from seeds.chartworld.train_toys import truncate_model

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
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pipeline.tiny_models import build_tiny_qwen3vl, build_tokenizer
    from seeds.chartworld.render import PATCH, TOKEN
    from seeds.chartworld.train_toys import GLYPHS, glyph_patch_embed, white_is_zero

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
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from pipeline.tiny_models import build_tiny_qwen3vl, build_tokenizer
    from seeds.chartworld.render import TOKEN, item_token
    from seeds.chartworld.train_toys import (
        glyph_patch_embed,
        glyph_readout,
        seed_position_code,
        white_is_zero,
    )

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
    from seeds.chartworld.report import by_family
    from seeds.chartworld.train_toys import heldout_rows
    from trainer.eval import EvalReport

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
