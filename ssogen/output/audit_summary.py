"""What `ssogen audit` records and the figures read from it.

Owns: the `audit` config's schema (one row per audited query and pair: P(preferred ≻ other) and how it was
reached), the names of the two pairs of the method that are judged, the file ``audit.yaml`` that says how an
audit was run (judge, rows, cost), and `summarize_audit`: accuracy (the share of rows with P > 0.5) with a
Wilson 95 % interval, mean P, the position-inconsistent share, and accuracy by feature, by W quartile, among
pairs of similar length, and by which side is longer. The card, the terminal and the report all print these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

AUDIT_CONFIG = "audit"
AUDIT_FILE = "audit.yaml"
# pair -> (preferred role, other role): the main pair (x, y+ ≻ y-) and steering pair 2 (x-, y° ≻ y+).
PAIRS = {"main": ("chosen", "rejected"), "steer_neg": ("original", "chosen")}
PAIR_LABELS = {"main": "main pair: y+ ≻ y-", "steer_neg": "steering pair 2: y° ≻ y+"}
# Two answers are "of similar length" when the shorter is at least 75 % of the longer (AlpacaEval-style control).
LENGTH_TOLERANCE = 0.25
Z95 = 1.959963984540054

AUDIT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("pair", pa.string()),  # main | steer_neg
        ("preferred", pa.string()),  # the role the method prefers: chosen (main) or original (steer_neg)
        ("other", pa.string()),
        ("p", pa.float64()),  # P(preferred ≻ other): mean of the two orders (pairwise) or sigmoid(margin) (reward)
        ("agrees", pa.bool_()),  # p > 0.5
        ("margin", pa.float64()),  # mean log-odds of the two orders (pairwise), reward difference (reward)
        ("p_preferred_first", pa.float64()),  # pairwise: P(preferred ≻ other) with the preferred answer shown first
        ("p_preferred_second", pa.float64()),  # ... and shown second
        ("position_consistent", pa.bool_()),  # pairwise: both orders pick the same answer
        ("label_mass", pa.float64()),  # pairwise: mean probability the judge put on the two labels at all
        ("reward_preferred", pa.float64()),  # reward judge: each answer's score
        ("reward_other", pa.float64()),
        ("tokens_preferred", pa.int32()),
        ("tokens_other", pa.int32()),
        ("weight", pa.float64()),
        ("features", pa.list_(pa.string())),
        ("judge", pa.string()),
        ("judge_kind", pa.string()),  # pairwise | reward
        ("round", pa.int32()),
    ]
)


def sigmoid(x: float) -> float:
    """Logistic function without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial share: sound at small n and at shares of 0 or 1, unlike p ± z·se."""
    if n <= 0:
        return None
    share = successes / n
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; computed, it can land a rounding error inside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def similar_length(a: int, b: int, tolerance: float = LENGTH_TOLERANCE) -> bool:
    """Whether two lengths are within ``tolerance`` of the longer one."""
    longest = max(a, b)
    return longest == 0 or abs(a - b) <= tolerance * longest


def _group(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows, agreeing rows, accuracy with its interval, and mean P of a group of verdicts."""
    n = len(rows)
    agree = sum(1 for r in rows if r["agrees"])
    return {
        "rows": n,
        "agree": agree,
        "accuracy": agree / n if n else None,
        "ci": wilson_interval(agree, n),
        "mean_p": sum(r["p"] for r in rows) / n if n else None,
    }


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def weight_quartiles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Verdicts grouped by W into four groups of (nearly) equal size, lowest W first, each with its W range.

    Ranks 1..n are cut at the quartiles of the ranks, as ``pandas.qcut(ranks, 4)`` cuts them (ties in W are
    broken by prompt_id, so a group never depends on row order).
    """
    ordered = sorted(rows, key=lambda r: (r["weight"], r["prompt_id"]))
    n = len(ordered)
    parts: list[list[dict[str, Any]]] = [[], [], [], []]
    for rank, row in enumerate(ordered, start=1):
        parts[next(q for q in range(4) if rank <= 1 + (n - 1) * (q + 1) / 4)].append(row)
    return [
        {"quartile": f"Q{q + 1}", "low": part[0]["weight"], "high": part[-1]["weight"], **_group(part)}
        for q, part in enumerate(parts)
        if part
    ]


def summarize_pair(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of one pair's verdicts (rows of the `audit` config with the same ``pair``)."""
    consistent = [r["position_consistent"] for r in rows if r["position_consistent"] is not None]
    longer = [r for r in rows if r["tokens_preferred"] > r["tokens_other"]]
    not_longer = [r for r in rows if r["tokens_preferred"] <= r["tokens_other"]]
    similar = [r for r in rows if similar_length(r["tokens_preferred"], r["tokens_other"])]
    features = sorted({f for r in rows for f in r["features"]})
    firsts = [
        (r["p_preferred_first"] + 1 - r["p_preferred_second"]) / 2
        for r in rows
        if r["p_preferred_first"] is not None and r["p_preferred_second"] is not None
    ]
    return {
        **_group(rows),
        "mean_margin": _mean(r["margin"] for r in rows),
        "inconsistent": (sum(1 for c in consistent if not c) / len(consistent)) if consistent else None,
        "inconsistent_rows": sum(1 for c in consistent if not c) if consistent else None,
        # MT-Bench counts a pair whose orders disagree as a tie: accuracy over the rows that do not.
        "consistent": _group([r for r in rows if r["position_consistent"]]),
        # P(the answer shown first wins), averaged over both orders: 0.5 for a judge without position bias.
        "first_position": _mean(firsts),
        "label_mass": _mean(r["label_mass"] for r in rows),
        "similar_length": _group(similar),
        "preferred_longer_share": len(longer) / len(rows) if rows else None,
        "preferred_longer": _group(longer),
        "preferred_not_longer": _group(not_longer),
        "by_feature": {f: _group([r for r in rows if f in r["features"]]) for f in features},
        "by_weight": weight_quartiles(rows),
    }


def summarize_audit(table: pa.Table) -> dict[str, Any]:
    """{pair: figures} for the pairs present in an `audit` table, in the order of `PAIRS`."""
    rows = table.to_pylist()
    return {
        pair: {
            "label": PAIR_LABELS[pair],
            "preferred": PAIRS[pair][0],
            "other": PAIRS[pair][1],
            **summarize_pair([r for r in rows if r["pair"] == pair]),
        }
        for pair in PAIRS
        if any(r["pair"] == pair for r in rows)
    }
