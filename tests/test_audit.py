"""Zero-delta audit: request building, batched adaptive sampling, outputs, dataset loading.

Most tests drive the audit with ``ScriptedEngine``, a FAKE engine that replays scripted
outputs: the policy and the bookkeeping need controlled answers, which real models with
random weights cannot give. The end-to-end test at the bottom runs the real vLLM engine
on the tiny Qwen3-VL pair.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.audit import (
    AUDIT_SCHEMA,
    audit_prompts,
    format_question,
    load_prompt_table,
    requests_from_table,
    run_audit,
    summary_text,
)
from pipeline.delta import DEFAULT_INSTRUCTION, NO_ANSWER, DeltaConfig
from pipeline.engines.base import Completion, Engine, SampleResult, count_image_parts
from pipeline.schema import make_prompt_row, rows_to_table
from tests.engine_fixtures import image_bytes, make_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ScriptedEngine(Engine):
    """FAKE engine: request id -> the outputs it "generates", replayed in order.

    A script entry is a list of texts (cycled); a text prefixed with "CUT:" comes back with
    finish_reason "length"; an entry "ERROR" makes the request fail alone.
    """

    def __init__(self, script: dict[str, list[str] | str]):
        self.script = script
        self.pos: dict[str, int] = {}
        self.calls: list[dict] = []

    def sample(
        self,
        requests,
        *,
        n=1,
        temperature=0.7,
        top_p=1.0,
        max_tokens=256,
        seed=None,
        stop=None,
        logprobs=False,
        ignore_eos=False,
    ):
        self.calls.append(
            {
                "ids": [r.id for r in requests],
                "n": n,
                "seed": seed,
                "temperature": temperature,
                "max_tokens": max_tokens,
            }
        )
        out = []
        for r in requests:
            entry = self.script[r.id]
            if entry == "ERROR":
                out.append(
                    SampleResult(completions=[], error=f"request {r.id!r}: image is not decodable")
                )
                continue
            comps = []
            for _ in range(n):
                i = self.pos.get(r.id, 0)
                self.pos[r.id] = i + 1
                text = entry[i % len(entry)]
                cut = text.startswith("CUT:")
                comps.append(
                    Completion(
                        text=text.removeprefix("CUT:"),
                        token_ids=[1],
                        finish_reason="length" if cut else "stop",
                    )
                )
            out.append(SampleResult(completions=comps))
        return out

    def score(self, requests, completions):  # pragma: no cover - not used by the audit
        raise NotImplementedError


def _table(specs: list[dict]) -> pa.Table:
    rows = []
    for i, s in enumerate(specs):
        rows.append(
            make_prompt_row(
                source=s.get("source", "chartqa"),
                question=s.get("question", f"What is the value of bar {i}?"),
                image_bytes=s.get("image", image_bytes(make_image(i, (64, 48)))),
                answers=s.get("answers"),
                choices=s.get("choices"),
                skill=s.get("skill"),
            )
        )
    return rows_to_table(rows)


# ------------------------------------------------------------------------------ requests


def test_requests_carry_image_question_options_and_instruction() -> None:
    img = image_bytes(make_image(3, (32, 32)))
    table = _table(
        [
            {"question": "Which trend?", "choices": ["Up", "Down"], "image": img},
            {"question": "Plain question", "image": None},
        ]
    )
    reqs = requests_from_table(table)
    assert [r.id for r in reqs] == table.column("id").to_pylist()
    assert reqs[0].images == [img] and count_image_parts(reqs[0].messages) == 1
    text = reqs[0].messages[0]["content"][-1]["text"]
    assert text.startswith("Which trend?") and "A. Up\nB. Down" in text
    assert text.endswith(DEFAULT_INSTRUCTION)
    assert "Answer: <value>" in DEFAULT_INSTRUCTION
    # A row without an image becomes a text-only request.
    assert reqs[1].images == [] and count_image_parts(reqs[1].messages) == 0


def test_instruction_is_a_parameter() -> None:
    table = _table([{"question": "Q?"}])
    assert requests_from_table(table, instruction="Reply briefly.")[0].messages[0]["content"][-1][
        "text"
    ] == ("Q?\nReply briefly.")
    assert (
        requests_from_table(table, instruction=None)[0].messages[0]["content"][-1]["text"] == "Q?"
    )


def test_options_already_in_the_question_are_not_repeated() -> None:
    q = "Which? (A) red (B) blue"
    assert "Options:" not in format_question(q, ["red", "blue"], None)
    assert "Options:" in format_question("Which colour?", ["red", "blue"], None)


def test_image_from_path_when_bytes_are_absent(tmp_path: Path) -> None:
    data = image_bytes(make_image(1, (16, 16)))
    (tmp_path / "a.png").write_bytes(data)
    table = _table([{"question": "Q?"}])
    table = table.set_column(
        table.schema.get_field_index("image"),
        "image",
        pa.array(
            [{"bytes": None, "path": str(tmp_path / "a.png")}], table.schema.field("image").type
        ),
    )
    assert requests_from_table(table)[0].images == [data]


def test_missing_question_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="question"):
        requests_from_table(pa.table({"id": ["x"]}))


# ----------------------------------------------------------------------------- the audit


def _scripted_pair(table: pa.Table, teacher_outputs: list, student_outputs: list):
    ids = table.column("id").to_pylist()
    return (
        ScriptedEngine(dict(zip(ids, teacher_outputs))),
        ScriptedEngine(dict(zip(ids, student_outputs))),
    )


def test_audit_batches_two_rounds_and_stops_early_on_unanimity(tmp_path: Path) -> None:
    table = _table(
        [
            {"source": "chartqa", "skill": "read", "answers": ["45"]},
            {"source": "chartqa", "skill": "compare", "answers": ["12"]},
            {"source": "docvqa", "skill": "read", "answers": ["Paris"]},
        ]
    )
    teacher, student = _scripted_pair(
        table,
        [["<think>bar</think>Answer: 45"], ["Answer: 12"], ["Answer: Paris"]],
        [["The answer is 45%."], ["Answer: 12", "Answer: 13"], ["Answer: Rome"]],
    )
    # unanimous_k=k and step >= n-k: the two-round schedule (the defaults now differ).
    cfg = DeltaConfig(n=8, k=2, unanimous_k=2, step=6, bootstrap=50)
    summary = audit_prompts(table, teacher, student, cfg, tmp_path)

    # Round 1: one call per model with k samples for everyone; round 2: n-k for the open two.
    ids = table.column("id").to_pylist()
    assert [(c["ids"], c["n"]) for c in teacher.calls] == [(ids, 2), (ids[1:], 6)]
    assert [(c["ids"], c["n"]) for c in student.calls] == [(ids, 2), (ids[1:], 6)]
    assert teacher.calls[0]["seed"] != teacher.calls[1]["seed"]  # round 2 does not replay round 1
    assert teacher.calls[0]["temperature"] == 0.7

    per = pq.read_table(tmp_path / "audit.parquet")
    assert per.schema.equals(AUDIT_SCHEMA)
    rows = per.to_pylist()
    assert rows[0]["stopped_early"] and rows[0]["zero_delta"] and rows[0]["n_teacher"] == 2
    assert rows[0]["stop_reason"] == "unanimous"
    assert [r["stop_reason"] for r in rows[1:]] == [None, None]  # 2 v 2 can still meet
    assert not rows[1]["stopped_early"] and not rows[2]["stopped_early"]
    assert (
        rows[0]["teacher_majority"] == "45"
        and rows[0]["teacher_correct"]
        and rows[0]["student_correct"]
    )
    assert (
        not rows[1]["zero_delta"]
        and rows[1]["n_student"] == 8
        and rows[1]["student_agreement"] == 0.5
    )
    assert rows[2]["delta"] == pytest.approx(1.0) and rows[2]["student_majority"] == "rome"
    assert rows[2]["teacher_correct"] and not rows[2]["student_correct"]

    assert summary["n_prompts"] == 3 and summary["n_scored"] == 3 and summary["n_errors"] == 0
    assert summary["zero_delta_count"] == 1
    assert summary["zero_delta_fraction"] == pytest.approx(1 / 3)
    assert summary["by_source"]["chartqa"]["zero_delta_fraction"] == 0.5
    assert summary["by_source"]["docvqa"]["zero_delta_fraction"] == 0.0
    assert (
        summary["by_skill"]["read"]["n"] == 2 and summary["by_skill"]["compare"]["zero_delta"] == 0
    )
    assert summary["delta_quantiles"]["p100"] == pytest.approx(1.0)
    assert summary["majority_accuracy"] == {
        "n_with_gold": 3,
        "teacher": 1.0,
        "student": pytest.approx(2 / 3),
    }
    samples = summary["samples"]
    assert samples["teacher_drawn"] == 2 + 8 + 8 and samples["student_drawn"] == 18
    assert samples["full_budget"] == 48 and samples["saved_fraction"] == pytest.approx(12 / 48)
    assert samples["stopped_early"] == 1

    assert json.loads((tmp_path / "audit.json").read_text())["zero_delta_count"] == 1
    assert (tmp_path / "delta_hist.png").read_bytes().startswith(PNG_MAGIC)
    assert "zero-delta: 33.3%" in summary_text(summary)


def test_reused_student_answers_are_not_redrawn(tmp_path: Path) -> None:
    table = _table([{}, {}])
    teacher, _ = _scripted_pair(table, [["Answer: 7"], ["Answer: 7", "Answer: 8"]], [[], []])
    cfg = DeltaConfig(n=4, k=2, unanimous_k=2, bootstrap=0)
    summary = audit_prompts(
        table, teacher, None, cfg, tmp_path, student_answers=[["7"] * 4, ["7"] * 4]
    )
    ids = table.column("id").to_pylist()
    # Changed with the fixed-decision stop: the second prompt's teacher answers 7, 8
    # against the student's four 7s are non-zero-delta whatever the teacher's last two
    # draws are (closest: 7 8 7 7 vs 7 7 7 7, JSD 0.138), so it stops after round 1 too.
    assert [(c["ids"], c["n"]) for c in teacher.calls] == [(ids, 2)]
    assert summary["samples"]["student_drawn"] == 0 and summary["samples"]["student_reused"] == 8
    rows = pq.read_table(tmp_path / "audit.parquet").to_pylist()
    assert rows[0]["stopped_early"] and rows[0]["zero_delta"]
    assert rows[0]["stop_reason"] == "unanimous"
    assert not rows[1]["zero_delta"] and rows[1]["n_teacher"] == 2
    assert rows[1]["stopped_early"] and rows[1]["stop_reason"] == "decided"
    assert summary["samples"]["stopped_early"] == 2


def test_missing_student_engine_is_a_clear_error(tmp_path: Path) -> None:
    table = _table([{}])
    teacher, _ = _scripted_pair(table, [["Answer: 1"]], [[]])
    with pytest.raises(ValueError, match="student engine is needed"):
        audit_prompts(table, teacher, None, DeltaConfig(n=4, k=2), tmp_path)


def test_a_failing_request_is_counted_not_fatal(tmp_path: Path) -> None:
    table = _table([{}, {"source": "docvqa"}])
    teacher, student = _scripted_pair(
        table, [["Answer: 1"], "ERROR"], [["Answer: 1"], ["Answer: 1"]]
    )
    cfg = DeltaConfig(n=4, k=2, unanimous_k=2, bootstrap=0)  # unanimity at 2, as before
    summary = audit_prompts(table, teacher, student, cfg, tmp_path)
    assert summary["n_prompts"] == 2 and summary["n_scored"] == 1 and summary["n_errors"] == 1
    assert "not decodable" in summary["errors"][0]["error"]
    assert "docvqa" not in summary["by_source"]  # fractions count scored prompts only
    # The failed prompt is not sampled again in round 2 (the other one settled in round 1).
    assert len(student.calls) == 1
    rows = pq.read_table(tmp_path / "audit.parquet").to_pylist()
    assert rows[1]["delta"] is None and rows[1]["error"].startswith("teacher:")
    assert rows[1]["stopped_early"] is None and rows[1]["stop_reason"] is None


def test_truncated_reasoning_counts_as_no_answer(tmp_path: Path) -> None:
    table = _table([{}])
    teacher, student = _scripted_pair(
        table, [["CUT:<think>Let me compare the bars one by one"]], [["CUT:<think>The first bar"]]
    )
    cfg = DeltaConfig(n=4, k=2, unanimous_k=2, bootstrap=0)  # unanimity at 2, as before
    summary = audit_prompts(table, teacher, student, cfg, tmp_path)
    row = pq.read_table(tmp_path / "audit.parquet").to_pylist()[0]
    assert row["teacher_answers"] == [None, None] and row["teacher_majority"] == NO_ANSWER
    assert row["teacher_truncated"] == 2 and row["student_truncated"] == 2
    assert summary["no_answer_fraction"] == {"teacher": 1.0, "student": 1.0}
    assert summary["samples"]["teacher_truncated"] == 2


def test_multiple_choice_answers_use_the_row_choices(tmp_path: Path) -> None:
    table = _table([{"choices": ["Increasing", "Decreasing"], "answers": ["B"]}])
    teacher, student = _scripted_pair(table, [["Answer: (B)"]], [["Answer: decreasing"]])
    audit_prompts(table, teacher, student, DeltaConfig(n=4, k=2, bootstrap=0), tmp_path)
    row = pq.read_table(tmp_path / "audit.parquet").to_pylist()[0]
    assert row["teacher_majority"] == row["student_majority"] == "B"
    assert row["zero_delta"] and row["teacher_correct"] and row["student_correct"]


def test_audit_runs_more_rounds_with_exact_bookkeeping(tmp_path: Path) -> None:
    # Default schedule (k=1, unanimous_k=5, step=2): agreeing prompts are brought to 5 in
    # round 2, open ones take 2 more per round, each round one call per distinct count.
    table = _table([{}, {}, {}, {}])
    teacher, student = _scripted_pair(
        table,
        [["Answer: 7"], ["Answer: A"], ["CUT:Answer: 3", "Answer: 3"], ["Answer: 1"]],
        [["Answer: 7"], ["Answer: B"], ["Answer: 3", "Answer: 4"], "ERROR"],
    )
    cfg = DeltaConfig(bootstrap=0)
    assert (cfg.k, cfg.unanimous_k, cfg.step, cfg.n) == (1, 5, 2, 8)
    summary = audit_prompts(table, teacher, student, cfg, tmp_path)
    ids = table.column("id").to_pylist()
    # Round 1: 1 each. Round 2: prompts 0 (7 v 7) and 2 (3 v 3) are still one class: to 5;
    # prompt 1 (A v B) is open: +2. Round 3: prompt 2's student has drawn 4s: +2 for it
    # and prompt 1. Round 4: prompt 1 alone. Prompt 3 failed on the student side in round
    # 1 and is never sampled again.
    expected = [(ids, 1), ([ids[1]], 2), ([ids[0], ids[2]], 4), ([ids[1], ids[2]], 2), ([ids[1]], 2)]
    assert [(c["ids"], c["n"]) for c in teacher.calls] == expected
    assert [(c["ids"], c["n"]) for c in student.calls] == expected
    assert len({c["seed"] for c in teacher.calls}) == len(teacher.calls)  # no replays
    rows = pq.read_table(tmp_path / "audit.parquet").to_pylist()
    assert rows[0]["stop_reason"] == "unanimous" and rows[0]["n_teacher"] == 5
    assert rows[0]["zero_delta"] and rows[0]["stopped_early"]
    # A v B: 1 v 1, 3 v 3, 5 v 5 could still meet; 7 v 7 cannot (7A1B vs 1A7B).
    assert rows[1]["stop_reason"] == "decided" and rows[1]["n_teacher"] == rows[1]["n_student"] == 7
    assert rows[1]["stopped_early"] and not rows[1]["zero_delta"]
    # Seven 3s against 3 4 3 4 3 4 3: non-zero-delta whatever the last draws are.
    r2 = rows[2]
    assert r2["stop_reason"] == "decided" and not r2["zero_delta"]
    assert r2["teacher_answers"] == ["3"] * 7 and r2["student_answers"] == ["3", "4"] * 3 + ["3"]
    assert r2["teacher_truncated"] == 4  # the scripted teacher alternates cut / not cut
    assert rows[3]["error"].startswith("student:") and rows[3]["n_teacher"] == 1
    assert rows[3]["stopped_early"] is None and rows[3]["stop_reason"] is None
    samples = summary["samples"]
    assert samples["teacher_drawn"] == sum(r["n_teacher"] for r in rows)
    assert samples["student_drawn"] == sum(r["n_student"] for r in rows)
    assert samples["stopped_early"] == 3 and samples["teacher_truncated"] == 4


# ------------------------------------------------------------------------ dataset loading


def test_load_parquet_folder_glob_and_limit(tmp_path: Path) -> None:
    table = _table([{}, {}, {}])
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "data" / "a.parquet")
    pq.write_table(table.slice(2), tmp_path / "data" / "b.parquet")
    assert load_prompt_table(tmp_path / "data").num_rows == 3
    assert load_prompt_table(str(tmp_path / "data" / "*.parquet")).num_rows == 3
    assert load_prompt_table(tmp_path / "data" / "a.parquet").num_rows == 2
    assert (
        load_prompt_table(tmp_path / "data", limit=1).column("id").to_pylist()
        == table.column("id").to_pylist()[:1]
    )
    with pytest.raises(FileNotFoundError, match="no Parquet"):
        load_prompt_table(tmp_path / "nothing-*.parquet")


def test_load_saved_dataset_dict_fills_missing_columns(tmp_path: Path) -> None:
    img = image_bytes(make_image(0, (16, 16)))
    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": img, "path": None}] * 2, "question": ["a?", "b?"]}, features=feats
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(
        str(tmp_path / "saved")
    )
    table = load_prompt_table(tmp_path / "saved")
    assert table.num_rows == 3
    assert set(table.column("split").to_pylist()) == {"train", "test"}
    assert table.column("source").to_pylist() == ["unknown"] * 3
    assert table.column("choices").to_pylist() == [[]] * 3
    assert len(set(table.column("id").to_pylist())) == 2  # same image + question -> same id
    assert requests_from_table(table)[0].images == [img]


# ---------------------------------------------------------------- end to end, real vLLM


@pytest.mark.slow
def test_run_audit_end_to_end_on_tiny_models_with_vllm(tiny_models, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    teacher_dir, student_dir = tiny_models
    specs = [
        {
            "source": ["chartqa", "docvqa"][i % 2],
            "skill": ["read", "compare"][i % 2],
            "answers": [str(i)],
        }
        for i in range(5)
    ]
    specs.append({"source": "chartqa", "image": PNG_MAGIC + b"broken"})  # fails alone
    table = _table(specs)
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    engine = {"engine": "vllm", "enforce_eager": True, "max_model_len": 512}
    cfg = DeltaConfig(n=4, k=2, max_tokens=12, bootstrap=20)

    summary = run_audit(
        tmp_path / "data",
        {**engine, "model": str(teacher_dir)},
        {**engine, "model": str(student_dir)},
        cfg,
        tmp_path / "out",
    )

    out = tmp_path / "out"
    assert (out / "delta_hist.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "audit.json").read_text()) == json.loads(
        json.dumps(summary, default=str)
    )
    rows = pq.read_table(out / "audit.parquet").to_pylist()
    assert [r["id"] for r in rows] == table.column("id").to_pylist()
    assert summary["n_prompts"] == 6 and summary["n_errors"] == 1 and summary["n_scored"] == 5
    assert rows[5]["error"].startswith("student:") and rows[5]["delta"] is None
    scored = rows[:5]
    for r in scored:
        assert r["n_student"] == 4  # the student drew its full n first
        # k=2, then unanimity (clamped to n=4) or a fixed decision, or the full n.
        assert r["stopped_early"] == (r["n_teacher"] < 4) == (r["stop_reason"] is not None)
        assert r["n_teacher"] >= 2
        assert 0.0 <= r["delta"] <= 1.0 and r["ci_low"] <= r["ci_high"]
    zero = sum(r["zero_delta"] for r in scored)
    assert summary["zero_delta_count"] == zero
    assert summary["zero_delta_fraction"] == pytest.approx(zero / 5)
    assert sum(g["n"] for g in summary["by_source"].values()) == 5
    assert summary["samples"]["teacher_drawn"] == sum(r["n_teacher"] for r in scored)
    assert summary["samples"]["student_drawn"] == 20
    assert summary["samples"]["full_budget"] == 2 * 4 * 6
