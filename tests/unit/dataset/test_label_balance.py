"""Balanced labels: the dataset selection spreads over any label (pose category, expression...) as over views."""

from __future__ import annotations

from collections import Counter

import numpy as np

from castlab.dataset.selection import REJECT_CODES, select


def rows(label: str, n: int, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(start)
    return [{"row_id": f"{label}:{k}", "category": label, "shot_key": f"s{k % 3}", "quality": 0.5 + 0.01 * k,
             "clip": rng.normal(size=32)} for k in range(n)]


def test_labels_get_equal_shares_rare_ones_keep_all_they_have():
    candidates = rows("standing", 30) + rows("sitting", 4, 1) + rows("walking", 12, 2)
    chosen = select(candidates, {}, 15, 0.99, key="category")
    assert chosen.allotment == {"sitting": 4, "standing": 6, "walking": 5}  # 4 short of 5: one more to standing
    assert Counter(r["category"] for r in chosen.selected) == Counter(chosen.allotment)
    codes = Counter(r["code"] for r in chosen.rejected)
    assert set(codes) <= set(REJECT_CODES) and codes["label_quota"] == len(candidates) - 15
    assert all("category quota" in r["reason"] for r in chosen.rejected)


def test_given_shares_and_unlabelled_rows():
    candidates = rows("happy", 10) + rows("sad", 10, 1) + [dict(r, category=None) for r in rows("x", 5, 2)]
    chosen = select(candidates, {"happy": 3, "sad": 1, "unknown": 1}, 10, 0.99, key="category")
    assert chosen.allotment == {"happy": 6, "sad": 2, "unknown": 2}
