"""OPD / VA-OPD loop and its data reader on real tiny Qwen3-VL models (trainer/opd.py, trainer/data.py)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from pipeline.core.errors import DataError
from pipeline.core.schema import make_prompt_row, rows_to_table
from seeds.chartworld import WorldConfig, generate
from tools.tiny_models import build_tokenizer
from trainer.config import OPDConfig
from trainer.data import BadPrompt, decode_prompt, load_prompts, select_prompts
from trainer.opd import (
    OPDTrainer,
    TokenizerMismatchError,
    check_same_tokenizer,
    load_config,
    plain_sampling,
)

WORLD = WorldConfig(kinds=["bar", "table"], width=96, height=96, max_items=3, font_size=10)
N_GOOD = 6


def toy_rows(n: int = N_GOOD) -> list[dict]:
    rows = [
        make_prompt_row(source="chartworld", question=ex.qa.question, image_bytes=ex.image,
                        answers=[ex.qa.answer], skill=ex.qa.skill, split="train")
        for ex in generate(WORLD, n, seed=0)
    ]
    for i, r in enumerate(rows):
        r["zero_delta"] = i % 2 == 0
    bad = make_prompt_row(source="chartworld", question="What is broken?", image_bytes=b"not a png")
    bad["zero_delta"] = False
    return rows + [bad]


def write_toy(path: Path, rows: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows or toy_rows(), extra=[pa.field("zero_delta", pa.bool_())]), path)
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return write_toy(tmp_path_factory.mktemp("opd_data") / "shard-00000.parquet")


@pytest.fixture(scope="module")
def peaked_teacher(tiny_models, tmp_path_factory) -> Path:
    """The tiny teacher with its LM head scaled x8.

    Random init gives near-uniform next-token distributions (teacher-student KL ~0.01 nats
    per token), where a few steps of the single-sample estimator are mostly noise; a
    trained teacher is peaked, and so is this one (KL ~0.5 nats). Column 0 of the head is
    left as built: it is the tiny models' suppression of vision placeholder tokens.
    """

    teacher, _ = tiny_models
    out = tmp_path_factory.mktemp("peaked") / "teacher"
    shutil.copytree(teacher, out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        w = model.lm_head.weight
        col0 = w[:, 0].clone()
        w.mul_(8.0)
        w[:, 0] = col0
    model.save_pretrained(out)
    return out


def make_cfg(tiny_models, teacher, data, out, **kw) -> OPDConfig:
    base = {"student": str(tiny_models[1]), "teacher": str(teacher), "data": str(data), "output_dir": str(out),
                "prompts_per_step": 4, "rollouts_per_prompt": 8, "max_new_tokens": 8, "lr": 3e-3, "steps": 8,
                "eval_prompts": 4, "num_threads": 1, "progress": False, "seed": 0}
    base.update(kw)
    return OPDConfig(**base)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["reverse_kl", "gjsd"])
def test_opd_steps_lower_teacher_student_kl(tiny_models, peaked_teacher, toy_data, tmp_path, loss):
    cfg = make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "run", loss=loss, beta=1.0,
                   where={"zero_delta": [True, False]}, num_prompts=4)
    trainer = OPDTrainer(cfg)
    before = trainer.measure_reverse_kl()["eval_reverse_kl"]
    final = trainer.train()
    after = trainer.measure_reverse_kl()["eval_reverse_kl"]
    assert before > 0.2  # a real gap to close
    assert after < 0.8 * before, (before, after)

    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in records)
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (final / "model.safetensors").exists() and (final / "chat_template.jinja").exists()


@pytest.mark.slow
def test_va_opd_trains_and_logs_the_va_distribution(tiny_models, peaked_teacher, toy_data, tmp_path):
    cfg = make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "va", mode="va_opd", loss="gjsd",
                   beta=1.0, steps=6, eval_every=6)
    trainer = OPDTrainer(cfg)
    before = trainer.measure_reverse_kl()["eval_reverse_kl"]
    trainer.train()
    records = [json.loads(ln) for ln in (tmp_path / "va" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for r in records:
        assert r["va_mean"] >= 0 and 0 <= r["va_frac_positive"] <= 1
        assert r["va_top10_share"] is None or 0 < r["va_top10_share"] <= 1
        assert 1 / 8 - 1e-6 <= r["rollout_weight_max"] <= 1 and r["rollout_weight_min"] <= 1 / 8 + 1e-6
    # The corrupt row is met within 6 steps x 4 prompts over 7 rows and counted, not fatal.
    assert records[-1]["skipped"] == {"corrupt_image": records[-1]["skipped"]["corrupt_image"]}
    assert records[-1]["skipped"]["corrupt_image"] >= 1
    assert records[-1]["eval_reverse_kl"] < before


@pytest.mark.slow
def test_resume_continues_exactly(tiny_models, peaked_teacher, toy_data, tmp_path):
    def weights(path: Path) -> dict[str, torch.Tensor]:
        return load_file(str(path / "model.safetensors"))

    kw = {"steps": 3, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 6, "mode": "va_opd"}
    straight = OPDTrainer(make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "a", **kw)).train()

    first = make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "b", **{**kw, "steps": 1})
    OPDTrainer(first).train()
    torch.manual_seed(12345)  # a new process would not continue the old RNG stream
    resumed_trainer = OPDTrainer(make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "b", **kw))
    assert resumed_trainer.state.step == 1 and resumed_trainer.state.position >= 2
    resumed = resumed_trainer.train()

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    # A changed experiment in the same folder is refused, as is a fresh start over it.
    with pytest.raises(ValueError, match=r"config changed in \['lr'\]"):
        OPDTrainer(make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "b", **{**kw, "lr": 1.0}))
    with pytest.raises(FileExistsError, match="resume"):
        OPDTrainer(make_cfg(tiny_models, peaked_teacher, toy_data, tmp_path / "b", **kw, resume=False))


# --------------------------------------------------------------------------- pieces on one trainer


@pytest.fixture(scope="module")
def trainer(tiny_models, toy_data, tmp_path_factory) -> OPDTrainer:
    teacher, _ = tiny_models
    cfg = make_cfg(tiny_models, teacher, toy_data, tmp_path_factory.mktemp("unit") / "run", mode="va_opd",
                   prompts_per_step=2, rollouts_per_prompt=3, max_new_tokens=6)
    return OPDTrainer(cfg)


@pytest.mark.slow
def test_rollouts_ignore_the_checkpoints_sampling_defaults(trainer):
    # A checkpoint's generation config (top_k, suppressed tokens, penalties...) would bias
    # the estimator; the trainer samples the raw distribution regardless.
    gen = trainer.student.generation_config
    vocab = len(trainer.processor.tokenizer)
    gen.do_sample, gen.top_k, gen.suppress_tokens = True, 1, list(range(8, vocab))
    try:
        item = trainer._next_prompts(1)[0]
        trainer._sample(item, 8)
        assert len({tuple(c) for c in item.completions}) > 1
        assert any(t >= 8 for c in item.completions for t in c)
    finally:
        assert trainer.student.generation_config.top_k == 1  # restored after sampling
        gen.do_sample, gen.top_k, gen.suppress_tokens = None, None, None
    with plain_sampling(trainer.student, 5, 2) as cfg:
        assert (cfg.temperature, cfg.top_p, cfg.top_k) == (1.0, 1.0, 0)


@pytest.mark.slow
def test_loss_positions_are_exactly_the_completion_tokens(trainer):
    item = trainer._next_prompts(1)[0]
    trainer._sample(item, 3)
    k = len(item.completions)
    with torch.no_grad():
        s_hidden, s_tokens = trainer._completion_hidden(trainer.student, [item.student_enc] * k, item.completions)
        t_hidden, t_tokens = trainer._completion_hidden(trainer.teacher, [item.teacher_enc] * k, item.completions)
    flat = [t for c in item.completions for t in c]
    assert s_tokens.tolist() == flat == t_tokens.tolist()
    assert s_hidden.shape[0] == len(flat) == t_hidden.shape[0]
    image_pad = trainer.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad in item.student_enc["input_ids"] and image_pad not in flat


@pytest.mark.slow
def test_one_generate_for_the_step_gives_each_prompt_its_own_rollouts(tiny_models, toy_data, tmp_path):
    # A student whose head is scaled x1000 samples its argmax at T=1, so rollouts are
    # deterministic: a prompt's rollouts from the step's left-padded batch (other, longer
    # or shorter prompts beside it) must be exactly what it gets alone.
    student = tmp_path / "argmax_student"
    shutil.copytree(tiny_models[1], student)
    model = AutoModelForImageTextToText.from_pretrained(student, dtype=torch.float32)
    with torch.no_grad():
        w = model.lm_head.weight
        col0 = w[:, 0].clone()
        w.mul_(1000.0)
        w[:, 0] = col0  # the tiny models' placeholder suppression, as built
    model.save_pretrained(student)
    cfg = make_cfg(tiny_models, tiny_models[0], toy_data, tmp_path / "run", rollouts_per_prompt=2,
                   max_new_tokens=6)
    cfg.student = str(student)
    trainer = OPDTrainer(cfg)
    items = trainer._next_prompts(4)
    assert len({len(it.student_enc["input_ids"]) for it in items}) > 1  # padding is exercised
    assert trainer._sample_many(items, 2) == [None] * 4
    together = [[list(c) for c in it.completions] for it in items]
    for item, expected in zip(items, together):
        trainer._sample(item, 2)
        assert item.completions == expected
    assert any(len(c) > 1 for c in together[0])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["opd", "va_opd"])
def test_gradient_accumulation_is_exact(trainer, mode):
    items = trainer._next_prompts(2)
    for it in items:
        trainer._sample(it, trainer.cfg.rollouts_per_prompt)
    n_tok = sum(len(c) for it in items for c in it.completions)
    old_mode = trainer.cfg.mode
    trainer.cfg.mode = mode
    try:
        def grads(groups):
            trainer.student.zero_grad(set_to_none=True)
            for group in groups:
                loss, _ = trainer._micro_batch_loss(group, n_tok, len(items))
                loss.backward()
            return [p.grad.clone() for p in trainer.student.parameters() if p.grad is not None]

        whole = grads([items])
        split = grads([items[:1], items[1:]])
    finally:
        trainer.cfg.mode = old_mode
        trainer.student.zero_grad(set_to_none=True)
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- tokenizer parity


@pytest.mark.slow
def test_tokenizer_mismatch_points_to_off_policy(tiny_models, toy_data, tmp_path):

    teacher, student = tiny_models
    proc = AutoProcessor.from_pretrained(student)
    check_same_tokenizer(proc, AutoProcessor.from_pretrained(teacher))  # the shared pair passes

    other = copy.deepcopy(proc)
    other.tokenizer = build_tokenizer(["a different corpus, with different merges 123 456"], vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="vocabularies differ.*off-policy fine-tuning"):
        check_same_tokenizer(proc, other)

    # A teacher folder whose only difference is the chat template is refused before any
    # model is loaded.
    odd = tmp_path / "odd_teacher"
    shutil.copytree(teacher, odd)
    template = odd / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    cfg = make_cfg(tiny_models, odd, toy_data, tmp_path / "run")
    with pytest.raises(TokenizerMismatchError, match="chat templates differ.*trainer.sft"):
        OPDTrainer(cfg)


# --------------------------------------------------------------------------- config


def test_config_validation_and_loading(tmp_path):
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        OPDConfig(student="s", teacher="t", data="d", prompts_per_step=3, grad_accum=2).validate()
    with pytest.raises(ValueError, match="beta"):
        OPDConfig(student="s", teacher="t", data="d", beta=2.0).validate()
    with pytest.raises(ValueError, match="student is required"):
        OPDConfig(teacher="t", data="d").validate()
    path = tmp_path / "opd.yaml"
    path.write_text("opd:\n  student: s\n  teacher: t\n  data: d\n  mode: va_opd\n")
    cfg = load_config(str(path), ["steps=7", "where={skill: [max, min]}", "num_prompts=null", "lr=1e-4"])
    assert (cfg.mode, cfg.steps, cfg.where, cfg.num_prompts) == ("va_opd", 7, {"skill": ["max", "min"]}, None)
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)  # YAML reads 1e-4 as a string
    with pytest.raises(ValueError, match="stepz: unknown key"):
        load_config(str(path), ["stepz=7"])
    with pytest.raises(ValueError, match="mode: expected one of"):
        load_config(str(path), ["mode=sft"])
    with pytest.raises(ValueError, match="steps: expected integer"):
        load_config(str(path), ["steps=many"])


# --------------------------------------------------------------------------- data


def test_load_prompts_from_every_layout(toy_data, tmp_path):
    n = N_GOOD + 1
    assert len(load_prompts(str(toy_data))) == n  # one file
    assert len(load_prompts(str(toy_data.parent / "*.parquet"))) == n  # a glob
    assert len(load_prompts(str(toy_data.parent))) == n  # a folder of shards
    saved = tmp_path / "saved"
    datasets.Dataset.from_parquet(str(toy_data)).save_to_disk(str(saved))
    assert len(load_prompts(str(saved))) == n
    dd = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_parquet(str(toy_data))}).save_to_disk(str(dd))
    assert len(load_prompts(str(dd), split="train")) == n
    with pytest.raises(ValueError, match="no split 'test'"):
        load_prompts(str(dd), split="test")
    # The Hub layout assemble writes: each split reads its own files only.
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    table = pq.read_table(toy_data)
    pq.write_table(table.slice(0, 2), hub / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(2, 2), hub / "train-00001-of-00002.parquet")
    pq.write_table(table.slice(4), hub / "validation-00000-of-00001.parquet")
    train, val = load_prompts(str(hub.parent)), load_prompts(str(hub.parent), split="validation")
    assert train["question"] == table.column("question").to_pylist()[:4]
    assert val["question"] == table.column("question").to_pylist()[4:]
    with pytest.raises(ValueError, match=r"no split 'test' under .*; splits are \['train', 'validation'\]"):
        load_prompts(str(hub.parent), split="test")
    with pytest.raises(DataError, match="no files match"):
        load_prompts(str(tmp_path / "nothing" / "*.parquet"))
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "q_only.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image'\]"):
        load_prompts(str(tmp_path / "q_only.parquet"))


def test_select_prompts_filters_and_samples(toy_data):
    ds = load_prompts(str(toy_data))
    zero = select_prompts(ds, {"zero_delta": True})
    assert zero == [0, 2, 4]
    assert select_prompts(ds, {"zero_delta": [True, False]}) == list(range(N_GOOD + 1))
    sample = select_prompts(ds, None, num_prompts=3, seed=5)
    assert len(sample) == 3 and sample == sorted(set(sample))
    assert select_prompts(ds, None, num_prompts=3, seed=5) == sample  # seeded
    assert any(select_prompts(ds, None, num_prompts=3, seed=s) != sample for s in range(6, 12))
    with pytest.raises(ValueError, match="only 3 row"):
        select_prompts(ds, {"zero_delta": True}, num_prompts=4)
    with pytest.raises(ValueError, match="unknown column"):
        select_prompts(ds, {"delta": 0})


def test_decode_prompt_reasons(toy_data):
    ds = load_prompts(str(toy_data))
    good = decode_prompt(ds[0])
    assert good.image.mode == "RGB" and good.question and good.answers
    with pytest.raises(BadPrompt) as e:
        decode_prompt(ds[N_GOOD])
    assert e.value.reason == "corrupt_image"
    with pytest.raises(BadPrompt) as e:
        decode_prompt({"question": "q", "image": None})
    assert e.value.reason == "missing_image"
    with pytest.raises(BadPrompt) as e:
        decode_prompt({"question": "  ", "image": good.image})
    assert e.value.reason == "empty_question"


def test_init_from_must_be_a_complete_checkpoint(tmp_path):
    from trainer.opd import initial_checkpoint

    cfg = OPDConfig(student="s", teacher="t", data="d", init_from=str(tmp_path / "step_4"))
    (tmp_path / "step_4").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        initial_checkpoint(cfg)
    (tmp_path / "step_4" / "trainer_state.pt").write_bytes(b"x")
    assert initial_checkpoint(cfg) == tmp_path / "step_4"
    assert initial_checkpoint(OPDConfig(student="s", teacher="t", data="d")) is None
