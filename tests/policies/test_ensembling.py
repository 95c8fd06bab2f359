"""Temporal ensembling: exact weights, coverage, pruning and bad input."""

import numpy as np
import pytest

from tether.policies.ensembling import TemporalEnsembler, ensemble_weights


def test_weights_follow_act_paper_oldest_first():
    w = ensemble_weights(3, 0.5)
    expected = np.exp(-0.5 * np.arange(3))
    np.testing.assert_allclose(w, expected / expected.sum())
    assert w[0] > w[1] > w[2]  # oldest prediction weighs most for m > 0


def test_m_zero_is_plain_average():
    np.testing.assert_allclose(ensemble_weights(4, 0.0), np.full(4, 0.25))


def test_action_at_blends_overlapping_chunks_with_exact_weights():
    ens = TemporalEnsembler(m=0.1)
    ens.add_chunk(0, np.array([[0.0], [1.0], [2.0], [3.0]]))  # oldest
    ens.add_chunk(1, np.array([[10.0], [11.0], [12.0], [13.0]]))
    ens.add_chunk(2, np.array([[20.0], [21.0], [22.0], [23.0]]))  # newest
    assert ens.action_at(0)[0] == pytest.approx(0.0)
    # step 2 is covered by all three: rows 2, 1, 0 of chunks t0=0, 1, 2.
    w = np.exp(-0.1 * np.arange(3))
    w /= w.sum()
    expected = w @ np.array([2.0, 11.0, 20.0])
    assert ens.coverage(2) == 3
    assert ens.action_at(2)[0] == pytest.approx(expected, rel=1e-6)


def test_oldest_first_even_when_chunks_arrive_out_of_order():
    a = TemporalEnsembler(m=1.0)
    a.add_chunk(0, np.array([[0.0], [1.0]]))
    a.add_chunk(1, np.array([[5.0], [6.0]]))
    b = TemporalEnsembler(m=1.0)
    b.add_chunk(1, np.array([[5.0], [6.0]]))
    b.add_chunk(0, np.array([[0.0], [1.0]]))
    assert a.action_at(1)[0] == pytest.approx(b.action_at(1)[0])
    w = ensemble_weights(2, 1.0)
    assert a.action_at(1)[0] == pytest.approx(w[0] * 1.0 + w[1] * 5.0)


def test_uncovered_step_returns_none_and_old_chunks_are_pruned():
    ens = TemporalEnsembler(m=0.01)
    assert ens.action_at(0) is None
    ens.add_chunk(0, np.ones((3, 2)))
    assert ens.action_at(2) is not None
    assert ens.action_at(3) is None
    assert len(ens) == 0  # the chunk ended, memory stays bounded
    ens.add_chunk(10, np.zeros((2, 2)))
    ens.reset()
    assert len(ens) == 0 and ens.action_at(10) is None


def test_max_chunks_keeps_newest():
    ens = TemporalEnsembler(m=0.0, max_chunks=2)
    for t0 in range(5):
        ens.add_chunk(t0, np.full((10, 1), float(t0)))
    assert len(ens) == 2
    assert ens.action_at(5)[0] == pytest.approx(3.5)


def test_output_dtype_and_shape():
    ens = TemporalEnsembler()
    ens.add_chunk(0, np.zeros((4, 7), dtype=np.float32))
    out = ens.action_at(0)
    assert out.dtype == np.float32 and out.shape == (7,)


@pytest.mark.parametrize(
    "chunk, match",
    [
        (np.zeros((3,)), "shape"),
        (np.zeros((0, 2)), "shape"),
        (np.array([[np.nan, 0.0]]), "NaN"),
    ],
)
def test_bad_chunks_are_rejected(chunk, match):
    with pytest.raises(ValueError, match=match):
        TemporalEnsembler().add_chunk(0, chunk)


def test_mismatched_action_dim_and_bad_m():
    ens = TemporalEnsembler()
    ens.add_chunk(0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="action_dim"):
        ens.add_chunk(1, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="m must be"):
        TemporalEnsembler(m=-1.0)
