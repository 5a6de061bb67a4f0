"""The study's results: the paper's Table 3 per condition, confidence intervals, paired comparisons between
the conditions, per-participant and per-image breakdowns, and the raw answers as CSV or JSON.

Definitions (training answers are never counted):

* undecided, agree, disagree: shares of all answers of a condition ("agree": the participant chose the
  ground-truth patch, the one the dense model's map rates highest);
* agreement when decided: agree / (agree + disagree);
* 95% intervals: Wilson score intervals (good coverage also for small counts and shares near 0 or 1);
* paired comparison: an exact two-sided sign test over the units that have answers under both conditions,
  once with participants as units and once with images. A unit counts as better (worse) when its share under
  the second condition is higher (lower) than under the first; ties are dropped; p = 2 P(B <= min(better,
  worse)) for B ~ Binomial(better + worse, 1/2), capped at 1. With one binary answer per unit and condition
  this is the exact McNemar test on the discordant pairs. Images are paired across participants (each
  participant sees an image under one condition only).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from spade_study.archive import answer_record
from spade_study.assignment import Answer
from spade_study.design import CONDITIONS

Z95 = 1.959963984540054
"""The 97.5% quantile of the standard normal distribution (two-sided 95% intervals)."""

CONDITION_LABELS = {"dense": "Dense visualization", "spade": "SPADE visualization"}
METRICS = ("undecided", "agree", "disagree", "agree_when_decided")
CSV_COLUMNS = ("participant_id", "participant_number", "platform_participant_id", "platform_study_id",
               "platform_session_id", "task_index", "item", "item_name", "condition", "training",
               "patch_order", "answer", "outcome", "response_ms", "answered_at")


def wilson_interval(count: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion count / total; (0, 1) when total is 0."""
    if total <= 0:
        return 0.0, 1.0
    p = count / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """count of total, with its 95% Wilson interval; share is None when total is 0."""

    count: int
    total: int

    @property
    def share(self) -> float | None:
        return self.count / self.total if self.total else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.count, self.total)

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"count": self.count, "total": self.total, "share": self.share, "ci95": [low, high]}


@dataclass(frozen=True)
class ConditionResult:
    """One row of Table 3."""

    condition: str
    answers: int
    undecided: Proportion
    agree: Proportion
    disagree: Proportion
    agree_when_decided: Proportion
    median_response_ms: float | None

    def metric(self, name: str) -> Proportion:
        return getattr(self, name)


@dataclass(frozen=True)
class SignTest:
    """Exact two-sided sign test of one metric, ``second`` vs ``first`` condition, over paired units.

    n_better / n_worse: units whose share is higher / lower under ``second``; n_ties: equal (dropped).
    mean_difference: mean over the paired units of (share under second - share under first)."""

    metric: str
    units: str
    first: str
    second: str
    n_pairs: int
    n_better: int
    n_worse: int
    n_ties: int
    mean_difference: float | None
    p_value: float


@dataclass(frozen=True)
class StudyResults:
    conditions: tuple[ConditionResult, ...]
    comparisons: tuple[SignTest, ...]
    by_participant: tuple[dict, ...]
    by_image: tuple[dict, ...]
    participants: int
    answers: int

    def _condition_rows(self, cells) -> list[dict]:
        """Per condition {"condition", "answers", **cells(metric label, proportion)} for every metric."""
        rows = []
        for row in self.conditions:
            out = {"condition": CONDITION_LABELS.get(row.condition, row.condition), "answers": row.answers}
            for name in METRICS:
                out.update(cells(name.replace("_", " "), row.metric(name)))
            rows.append(out)
        return rows

    def table3(self) -> list[dict]:
        """Table 3 as display rows: per condition the counts, percentages and 95% intervals."""

        def cells(label, p) -> dict:
            low, high = p.interval
            return {label: p.count, f"{label} %": None if p.share is None else round(100 * p.share, 1),
                    f"{label} 95% CI": f"{100 * low:.1f}–{100 * high:.1f}" if p.total else "–"}

        return self._condition_rows(cells)

    def table3_compact(self) -> list[dict]:
        """Table 3 narrow enough for a page: per condition the number of answers and, per metric, one text cell
        "share % (95% CI low–high)" ("–" where the metric has no answers). The counts are in ``table3``."""

        def cells(label, p) -> dict:
            low, high = p.interval
            return {label: f"{100 * p.share:.1f} % ({100 * low:.1f}–{100 * high:.1f})" if p.share is not None else "–"}

        return self._condition_rows(cells)

    def to_dict(self) -> dict:
        return {
            "participants": self.participants, "answers": self.answers,
            "conditions": [{"condition": r.condition, "answers": r.answers,
                            "median_response_ms": r.median_response_ms,
                            **{m: r.metric(m).to_dict() for m in METRICS}} for r in self.conditions],
            "comparisons": [asdict(c) for c in self.comparisons],
            "by_participant": list(self.by_participant), "by_image": list(self.by_image),
        }


def sign_test_p(n_better: int, n_worse: int) -> float:
    """Exact two-sided sign-test p-value: 2 * P(B <= min(n_better, n_worse)), B ~ Binomial(n, 1/2), capped at 1."""
    n = n_better + n_worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(n_better, n_worse) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _counts(answers: Sequence[Answer]) -> dict[str, int]:
    counts = {"undecided": 0, "agree": 0, "disagree": 0}
    for a in answers:
        counts[a.outcome] += 1
    return counts


def _condition(condition: str, answers: Sequence[Answer]) -> ConditionResult:
    c = _counts(answers)
    n = len(answers)
    times = [a.response_ms for a in answers]
    return ConditionResult(
        condition=condition, answers=n, undecided=Proportion(c["undecided"], n), agree=Proportion(c["agree"], n),
        disagree=Proportion(c["disagree"], n),
        agree_when_decided=Proportion(c["agree"], c["agree"] + c["disagree"]),
        median_response_ms=float(statistics.median(times)) if times else None)


def _sign_test(metric: str, units: str, first: str, second: str,
               grouped: Mapping[object, Mapping[str, ConditionResult]]) -> SignTest:
    diffs = []
    for per_condition in grouped.values():
        if first not in per_condition or second not in per_condition:
            continue
        a, b = per_condition[first].metric(metric).share, per_condition[second].metric(metric).share
        if a is None or b is None:
            continue
        diffs.append(b - a)
    better = sum(d > 0 for d in diffs)
    worse = sum(d < 0 for d in diffs)
    return SignTest(metric=metric, units=units, first=first, second=second, n_pairs=len(diffs), n_better=better,
                    n_worse=worse, n_ties=len(diffs) - better - worse,
                    mean_difference=sum(diffs) / len(diffs) if diffs else None, p_value=sign_test_p(better, worse))


def _breakdown(key: str, answers: Sequence[Answer]) -> dict[object, dict[str, ConditionResult]]:
    grouped: dict[object, dict[str, list[Answer]]] = defaultdict(lambda: defaultdict(list))
    for a in answers:
        grouped[getattr(a, key)][a.condition].append(a)
    return {unit: {c: _condition(c, rows) for c, rows in per.items()} for unit, per in sorted(grouped.items())}


def _rows(unit_name: str, grouped: Mapping[object, Mapping[str, ConditionResult]], conditions: Sequence[str],
          names: Mapping[int, str] | None = None) -> tuple[dict, ...]:
    rows = []
    for unit, per in grouped.items():
        for condition in conditions:
            if condition not in per:
                continue
            r = per[condition]
            row = {unit_name: unit}
            if names is not None:
                row["name"] = names.get(unit, str(unit))
            row.update(condition=condition, answers=r.answers, undecided=r.undecided.count, agree=r.agree.count,
                       disagree=r.disagree.count, agree_share=r.agree.share,
                       agree_when_decided=r.agree_when_decided.share, median_response_ms=r.median_response_ms)
            rows.append(row)
    return tuple(rows)


def summarize(answers: Sequence[Answer], conditions: Sequence[str] = CONDITIONS,
              item_names: Mapping[int, str] | None = None) -> StudyResults:
    """Table 3, the paired comparisons (second condition vs first, when there are two) and the breakdowns of
    the real (non-training) ``answers``. item_names: {item index: name} for the per-image rows."""
    real = [a for a in answers if not a.training]
    conditions = tuple(conditions)
    table = tuple(_condition(c, [a for a in real if a.condition == c]) for c in conditions)
    by_participant = _breakdown("participant_number", real)
    by_image = _breakdown("item", real)
    comparisons: list[SignTest] = []
    if len(conditions) == 2:
        first, second = conditions
        for units, grouped in (("participants", by_participant), ("images", by_image)):
            for metric in ("agree", "undecided", "agree_when_decided"):
                comparisons.append(_sign_test(metric, units, first, second, grouped))
    return StudyResults(conditions=table, comparisons=tuple(comparisons),
                        by_participant=_rows("participant", by_participant, conditions),
                        by_image=_rows("item", by_image, conditions, item_names or {}),
                        participants=len({a.participant_id for a in real}), answers=len(real))


def answers_csv(answers: Sequence[Answer], item_names: Mapping[int, str] | None = None) -> str:
    """The raw answers (training included, marked) as CSV with the columns of CSV_COLUMNS."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for a in answers:
        record = answer_record(a)
        writer.writerow({**record, "item_name": (item_names or {}).get(a.item, ""), "outcome": a.outcome})
    return buffer.getvalue()


def answers_json(answers: Sequence[Answer], item_names: Mapping[int, str] | None = None,
                 study: Mapping | None = None) -> str:
    """The raw answers (training included, marked) as JSON: {"study": ..., "answers": [...]}."""
    rows = [{**answer_record(a), "item_name": (item_names or {}).get(a.item, ""), "outcome": a.outcome}
            for a in answers]
    return json.dumps({"study": dict(study or {}), "answers": rows}, indent=1)
