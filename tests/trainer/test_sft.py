"""SFT loop and batching on a real (tiny, random-weight) Qwen3-VL built offline."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from seeds.chartworld import WorldConfig, direct_target, generate
from tools.tiny_models import build_tiny_qwen3vl, build_tokenizer
from trainer.batching import (
    IGNORE_INDEX,
    PromptTooLong,
    SFTCollator,
    collate,
    encode_example,
    encode_prompt,
)
from trainer.sft import (
    DataOrder,
    SFTConfig,
    SFTTrainer,
    accumulate_gradients,
    completion_nll,
    lr_at,
)

pytestmark = pytest.mark.slow

WORLD = WorldConfig(kinds=["bar", "table"], width=96, height=96, max_items=3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.set_num_threads(1)

    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    return str(build_tiny_qwen3vl(root / "m", tok, hidden_size=64, num_layers=1, num_heads=1,
                                  num_kv_heads=1, intermediate_size=128, vision_hidden=32,
                                  vision_depth=1, image_size=64, seed=0))


@pytest.fixture(scope="module")
def processor(tiny_model):
    return AutoProcessor.from_pretrained(tiny_model)


def rows(n: int, seed: int = 0) -> list[dict]:
    return [{"image": ex.image, "question": ex.qa.question, "target": direct_target(ex.qa)}
            for ex in generate(WORLD, n, seed=seed)]


# --- batching ------------------------------------------------------------------------------
def test_labels_cover_exactly_the_completion(processor):
    row = rows(1)[0]
    enc = encode_example(processor, row["question"], row["target"], row["image"])
    tok = processor.tokenizer
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert enc.input_ids.count(pad_id) == int(enc.image_grid_thw.prod()) // 4  # merge 2x2
    labelled = [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
    # one contiguous block at the very end, starting right after the prompt
    assert labelled == list(range(enc.prompt_len, len(enc.input_ids)))
    completion = [enc.input_ids[i] for i in labelled]
    assert [enc.labels[i] for i in labelled] == completion
    assert completion[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # learns to stop
    assert tok.decode(completion[:-1]) == row["target"]
    # no image token, no question token is ever a label
    assert all(enc.labels[i] == IGNORE_INDEX for i, t in enumerate(enc.input_ids) if t == pad_id)
    prompt_text = tok.decode(enc.input_ids[: enc.prompt_len])
    assert prompt_text.endswith("<|im_start|>assistant\n") and row["question"] in prompt_text


def test_truncation_never_cuts_the_image_block(processor):
    row = rows(1)[0]
    prompt_len = len(encode_prompt(processor, row["question"], row["image"])["input_ids"])
    enc = encode_example(processor, row["question"], row["target"], row["image"],
                         max_length=prompt_len + 2)
    assert len(enc.input_ids) == prompt_len + 2 and enc.prompt_len == prompt_len
    assert sum(lab != IGNORE_INDEX for lab in enc.labels) == 2
    with pytest.raises(PromptTooLong):
        encode_example(processor, row["question"], row["target"], row["image"],
                       max_length=prompt_len - 1)
    collator = SFTCollator(processor, max_length=8)  # shorter than any image prompt
    assert collator(rows(2)) is None and collator.skipped == 2


def test_collate_pads_right_and_concatenates_images(processor):
    rs = rows(3)
    encs = [encode_example(processor, r["question"], r["target"] * (i + 1), r["image"])
            for i, r in enumerate(rs)]
    batch = collate(encs, pad_id=processor.tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in encs)
    assert batch["input_ids"].shape == (3, width)
    for i, e in enumerate(encs):
        k = len(e.input_ids)
        assert batch["attention_mask"][i].tolist() == [1] * k + [0] * (width - k)
        assert (batch["labels"][i, k:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] == sum(e.pixel_values.shape[0] for e in encs)
    assert batch["image_grid_thw"].shape == (3, 3)


# --- pure pieces -----------------------------------------------------------------------------
def test_completion_nll_counts_only_labelled_positions():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    loss, n = completion_nll(logits, labels)  # only position 0 predicts a labelled token
    assert n == 1 and loss.item() == pytest.approx(-torch.log(torch.tensor(0.5)).item(), rel=1e-5)


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = SFTConfig(lr=1.0, warmup_steps=4, steps=20, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(20, cfg) == pytest.approx(0.1)
    assert lr_at(12, cfg) == pytest.approx(0.55)


def test_data_order_is_a_fresh_permutation_each_epoch():
    order = DataOrder(10, shuffle=True, seed=3)
    e0, e1 = [order(p) for p in range(10)], [order(p) for p in range(10, 20)]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert [DataOrder(10, True, 3)(p) for p in range(10, 20)] == e1  # no hidden history
    assert [DataOrder(10, False, 3)(p) for p in range(12)] == list(range(10)) + [0, 1]


# --- training -------------------------------------------------------------------------------
def test_gradient_independent_of_micro_batch_split(tiny_model, processor):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    collator = SFTCollator(processor)
    rs = rows(4)
    whole = [collator(rs)]
    split = [collator(rs[:1]), collator(rs[1:])]
    n_tok = int((whole[0]["labels"][:, 1:] != IGNORE_INDEX).sum())

    def grads(micro):
        model.zero_grad()
        accumulate_gradients(model, micro, n_tok, torch.device("cpu"))
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    g1, g2 = grads(whole), grads(split)
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_loss_decreases_on_a_fixed_batch(tiny_model, tmp_path):
    data = rows(4)
    cfg = SFTConfig(model=tiny_model, output_dir=str(tmp_path / "run"), steps=25, batch_size=4,
                    lr=3e-3, schedule="constant", log_every=1, progress=False, num_threads=1)
    trainer = SFTTrainer(cfg, data)
    first = trainer.train_step()["loss"]
    for _ in range(24):
        last = trainer.train_step()["loss"]
    assert last < 0.5 * first, (first, last)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_continues_identically(tiny_model, tmp_path):
    data = rows(10)  # 10 rows, batch 3 x accum 2: steps cross an epoch boundary mid-step
    base = dict(model=tiny_model, steps=4, batch_size=3, grad_accum=2, lr=1e-3, warmup_steps=1,
                log_every=1, progress=False, num_threads=1, seed=5)
    straight = SFTTrainer(SFTConfig(**base, output_dir=str(tmp_path / "a")), data)
    straight.train()

    part = SFTTrainer(SFTConfig(**{**base, "steps": 4}, output_dir=str(tmp_path / "b")), data)
    part.train_step()
    part.train_step()
    part.save_checkpoint()  # as if the process died after step 2
    del part
    resumed = SFTTrainer(SFTConfig(**base, output_dir=str(tmp_path / "b")), data)
    assert resumed.state.step == 2 and resumed.state.position == 12
    resumed.train()

    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    # the exported model and its metrics are there
    assert (tmp_path / "b" / "final" / "model.safetensors").exists()
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in recs)


def test_export_in_bfloat16_loads_back(tiny_model, tmp_path):
    cfg = SFTConfig(model=tiny_model, output_dir=str(tmp_path), steps=1, batch_size=2,
                    progress=False, num_threads=1, final_dtype="bfloat16")
    final = SFTTrainer(cfg, rows(2)).train()
    model = AutoModelForImageTextToText.from_pretrained(final)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_frozen_prefixes_stay_fixed_and_the_rest_trains(tiny_model, tmp_path):
    cfg = SFTConfig(model=tiny_model, output_dir=str(tmp_path), steps=2, batch_size=2, lr=1e-2,
                    progress=False, num_threads=1, freeze=["model.visual."])
    trainer = SFTTrainer(cfg, rows(4))
    before = _params(trainer.model)
    trainer.train_step()
    trainer.train_step()
    after = _params(trainer.model)
    visual = [k for k in before if k.startswith("model.visual.")]
    assert visual
    for k in visual:
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0, msg=k)
    assert any(not torch.equal(after[k], before[k]) for k in before if k not in visual)


def test_freeze_prefix_matching_nothing_is_an_error(tiny_model, tmp_path):
    cfg = SFTConfig(model=tiny_model, output_dir=str(tmp_path), steps=1, batch_size=2,
                    progress=False, num_threads=1, freeze=["model.vision_tower."])
    with pytest.raises(ValueError, match="no parameter name starts with"):
        SFTTrainer(cfg, rows(2))
