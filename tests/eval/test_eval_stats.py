"""Wilson intervals and report summaries."""

import math

import numpy as np
import pytest

from tether.app.eval.records import EpisodeRecord, load_records
from tether.app.eval.report import summarize
from tether.app.eval.stats import _normal_quantile, percentiles, wilson_interval


@pytest.mark.parametrize(
    "k, n, low, high",
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (45, 50, 0.7864, 0.9565)],
)
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    assert _normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert _normal_quantile(0.01) == pytest.approx(-2.326348, abs=1e-6)


def test_percentiles_of_nothing_are_nan():
    assert math.isnan(percentiles([])["p50"])
    assert percentiles([1, 2, 3, 4])["max"] == 4


def test_records_round_trip_and_summary(tmp_path):
    records = [
        EpisodeRecord(seed=s, success=s % 2 == 0, length=100 + s, max_steps=200, wall_time_s=1.0,
                      latency_ms=[1.0, 2.0], safety={"rate_limited": s}, joints=np.zeros((3, 2)))
        for s in range(4)
    ]
    for r in records:
        r.save(tmp_path)
    loaded = load_records(tmp_path)
    assert [r.seed for r in loaded] == [0, 1, 2, 3]
    assert loaded[1].joints.shape == (3, 2)
    summary = summarize(loaded, {"task": "lift"})
    assert summary["successes"] == 2 and summary["success_rate"] == 0.5
    assert summary["failed_seeds"] == [1, 3]
    assert summary["safety_interventions"] == {"rate_limited": 6}
    assert summary["action_latency_ms"]["p50"] == 1.5
