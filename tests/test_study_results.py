"""Results from a hand-made set of answers equal a hand computation (Table 3, Wilson intervals, sign tests,
breakdowns, exports)."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime

import pytest

from spade_study.assignment import TRUTH_FIRST, TRUTH_SECOND, Answer
from spade_study.results import answers_csv, answers_json, sign_test_p, summarize, wilson_interval

T, D = TRUTH_FIRST, TRUTH_SECOND  # ground truth shown as A / as B
WHEN = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)

# (participant, task, item, condition, patch order, answer, response ms) -> outcome written by hand
HAND = [
    (0, 1, 0, "dense", T, "A", 100),          # agree
    (0, 2, 1, "spade", D, "B", 150),          # agree
    (0, 3, 2, "dense", D, "A", 200),          # disagree
    (0, 4, 3, "spade", T, "undecided", 250),  # undecided
    (1, 1, 0, "spade", T, "A", 350),          # agree
    (1, 2, 1, "dense", T, "undecided", 300),  # undecided
    (1, 3, 2, "spade", D, "B", 450),          # agree
    (1, 4, 3, "dense", D, "B", 400),          # agree
    (2, 1, 0, "dense", D, "undecided", 500),  # undecided
    (2, 2, 1, "spade", T, "A", 550),          # agree
    (2, 3, 2, "dense", T, "B", 600),          # disagree
    (2, 4, 3, "spade", D, "B", 650),          # agree
]


def _answers() -> list[Answer]:
    rows = [Answer("s", f"p{p}", p, task, item, cond, False, order, ans, ms, WHEN)
            for p, task, item, cond, order, ans, ms in HAND]
    # a training answer (disagreeing): never counted
    rows.append(Answer("s", "p0", 0, 0, 9, "dense", True, T, "B", 90, WHEN))
    return rows


def _wilson_by_roots(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Independent route to the Wilson interval: the p where (k/n - p)^2 = z^2 p (1 - p) / n (a quadratic)."""
    phat = k / n
    a = 1 + z * z / n
    b = -(2 * phat + z * z / n)
    c = phat * phat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k,n,expected", [(2, 6, (0.0968, 0.7000)), (5, 5, (0.5655, 1.0)), (5, 6, (0.4365, 0.9699)),
                                          (0, 6, (0.0, 0.3903)), (1, 6, (0.0301, 0.5635)), (2, 4, (0.1500, 0.8500))])
def test_wilson_interval_matches_tables_and_the_quadratic(k, n, expected):
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(expected[0], abs=1e-4) and high == pytest.approx(expected[1], abs=1e-4)
    roots = _wilson_by_roots(k, n)
    assert (low, high) == pytest.approx(roots, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_table3_equals_the_hand_count():
    results = summarize(_answers(), ("dense", "spade"))
    dense, spade = results.conditions
    # dense: agree (p0 t1, p1 t4), disagree (p0 t3, p2 t3), undecided (p1 t2, p2 t1)
    assert (dense.answers, dense.agree.count, dense.disagree.count, dense.undecided.count) == (6, 2, 2, 2)
    assert (dense.agree_when_decided.count, dense.agree_when_decided.total) == (2, 4)
    # spade: five agree, one undecided (p0 t4)
    assert (spade.answers, spade.agree.count, spade.disagree.count, spade.undecided.count) == (6, 5, 0, 1)
    assert (spade.agree_when_decided.count, spade.agree_when_decided.total) == (5, 5)
    assert dense.median_response_ms == 350.0  # 100 200 300 400 500 600
    assert spade.median_response_ms == 400.0  # 150 250 350 450 550 650
    assert results.participants == 3 and results.answers == 12

    rows = {r["condition"]: r for r in results.table3()}
    d, s = rows["Dense visualization"], rows["SPADE visualization"]
    assert (d["agree %"], d["disagree %"], d["undecided %"], d["agree when decided %"]) == (33.3, 33.3, 33.3, 50.0)
    assert (s["agree %"], s["disagree %"], s["undecided %"], s["agree when decided %"]) == (83.3, 0.0, 16.7, 100.0)
    assert d["agree 95% CI"] == "9.7–70.0" and s["agree 95% CI"] == "43.6–97.0"
    assert s["agree when decided 95% CI"] == "56.6–100.0" and d["agree when decided 95% CI"] == "15.0–85.0"


def test_paired_sign_tests_equal_the_hand_computation():
    tests = {(c.units, c.metric): c for c in summarize(_answers()).comparisons}
    # per participant, agree share dense -> spade: p0 1/2 -> 1/2 (tie), p1 1/2 -> 2/2, p2 0/2 -> 2/2
    c = tests[("participants", "agree")]
    assert (c.n_pairs, c.n_better, c.n_worse, c.n_ties) == (3, 2, 0, 1)
    assert c.mean_difference == pytest.approx((0 + 0.5 + 1) / 3)
    assert c.p_value == pytest.approx(0.5)  # 2 * (1/2)^2
    # undecided share: p0 0 -> 1/2 (higher), p1 1/2 -> 0, p2 1/2 -> 0
    c = tests[("participants", "undecided")]
    assert (c.n_better, c.n_worse, c.n_ties) == (1, 2, 0)
    assert c.mean_difference == pytest.approx(-1 / 6) and c.p_value == 1.0
    # agreement when decided: p0 1/2 -> 1/1, p1 1/1 -> 2/2 (tie), p2 0/1 -> 2/2
    c = tests[("participants", "agree_when_decided")]
    assert (c.n_better, c.n_worse, c.n_ties) == (2, 0, 1) and c.p_value == pytest.approx(0.5)
    # per image, agree share: item0 1/2 -> 1, item1 0 -> 1, item2 0 -> 1, item3 1 -> 1/2
    c = tests[("images", "agree")]
    assert (c.n_pairs, c.n_better, c.n_worse, c.n_ties) == (4, 3, 1, 0)
    assert c.mean_difference == pytest.approx((0.5 + 1 + 1 - 0.5) / 4)
    assert c.p_value == pytest.approx(2 * (1 + 4) / 16)


def test_sign_test_p_values():
    assert sign_test_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 3) == 1.0
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)


def test_breakdowns_per_participant_and_image():
    results = summarize(_answers(), ("dense", "spade"), {0: "cat", 1: "dog", 2: "car", 3: "cup", 9: "practice"})
    p2 = {r["condition"]: r for r in results.by_participant if r["participant"] == 2}
    assert (p2["dense"]["answers"], p2["dense"]["agree"], p2["dense"]["disagree"], p2["dense"]["undecided"]) == (
        2, 0, 1, 1)
    assert p2["dense"]["agree_when_decided"] == 0.0 and p2["spade"]["agree_share"] == 1.0
    assert len(results.by_participant) == 6
    item3 = {r["condition"]: r for r in results.by_image if r["item"] == 3}
    assert item3["spade"]["name"] == "cup" and (item3["spade"]["agree"], item3["spade"]["undecided"]) == (1, 1)
    assert item3["dense"]["agree_share"] == 1.0
    assert 9 not in {r["item"] for r in results.by_image}, "training answers are not analysed"
    assert json.loads(json.dumps(results.to_dict()))["conditions"][1]["agree"]["count"] == 5


def test_csv_and_json_exports_hold_every_raw_answer():
    answers = _answers()
    names = {0: "cat", 9: "practice"}
    rows = list(csv.DictReader(io.StringIO(answers_csv(answers, names))))
    assert len(rows) == 13
    first = rows[0]
    assert (first["participant_id"], first["task_index"], first["item_name"], first["condition"], first["answer"],
            first["outcome"], first["response_ms"], first["training"]) == ("p0", "1", "cat", "dense", "A", "agree",
                                                                          "100", "False")
    assert rows[-1]["training"] == "True" and rows[-1]["outcome"] == "disagree"
    assert first["answered_at"] == "2024-06-01T10:00:00+00:00"
    body = json.loads(answers_json(answers, names, {"id": "s"}))
    assert body["study"] == {"id": "s"} and len(body["answers"]) == 13
    assert [a["outcome"] for a in body["answers"][:4]] == ["agree", "agree", "disagree", "undecided"]
