"""benchmarks/teacher_cost.py's comparisons of kept sets (the runs themselves are the benchmark)."""

from __future__ import annotations

from benchmarks.teacher_cost import compare_kept, skip_on_same_samples


def _variant(kept, rows):
    return {"_kept": set(kept), "_rows": {i: {"teacher_correct": c, "teacher_agreement": a,
                                              "teacher_answers": ["x"] * t}
                                          for i, (c, a, t) in rows.items()}}


def test_kept_sets_are_compared_with_the_teacher_judged_where_kept():
    b = _variant("pqr", {"p": (False, 1.0, 5), "q": (True, 0.8, 5), "r": (True, 1.0, 1), "s": (None, 1.0, 1)})
    c = _variant("rs", {"r": (True, 1.0, 1), "s": (False, 1.0, 2)})
    assert compare_kept(b, c) == {"differ": 3, "only_first": 2, "only_first_teacher_wrong": 1,
                                  "only_second": 1, "only_second_teacher_wrong": 1}
    same = skip_on_same_samples(b, solved={"p", "q", "s"})
    assert same["kept_removed"] == 2 and same["kept_removed_teacher_wrong"] == 1
    assert same["kept_removed_teacher_right"] == 1 and same["teacher_right_agreement"] == [0.8]
    assert same["adaptive_teacher_samples_on_solved"] == 11 and same["kept_after"] == 1
