"""Choosing a checkpoint by twin success with a confidence interval (issue 19, item 5).

The rule (tether.app.eval.selection): the highest rate leads; every evaluation inside the
leader's 95% Wilson interval, or holding the leader's rate in its own, is indistinguishable from
it; the latest of those wins, EMA before raw at the same step. The CLI test trains a tiny ACT with `--eval-every`, both weights and a
validation hold-out, and checks what lands in the run directory.
"""

import json

from typer.testing import CliRunner

from tether.app.eval.selection import Scored, choose, neighbour_spread
from tether.cli import build_app
from tether.policies.checkpoint import read_policy_json

runner = CliRunner()


def test_clear_leader_wins_even_if_earlier():
    evals = [Scored(100, 19, 20), Scored(200, 5, 20), Scored(300, 6, 20)]
    choice = choose(evals)
    assert choice.index == 0 and choice.tied == [0]
    assert "no other evaluation" in choice.note


def test_indistinguishable_rates_go_to_the_latest_and_ema_first():
    evals = [Scored(100, 14, 20, "ema"), Scored(200, 12, 20, "raw"), Scored(200, 12, 20, "ema"),
             Scored(300, 2, 20, "ema")]
    choice = choose(evals)
    assert choice.leader == 0  # 70% leads; 60% lies inside its interval, 10% does not
    assert sorted(choice.tied) == [0, 1, 2]
    assert choice.index == 2  # step 200, EMA before raw
    assert "indistinguishable" in choice.note


def test_near_zero_a_lone_success_does_not_outrank_later_zeros():
    """1/20 leads, its interval (1-24%) excludes 0%, but 0/20's own interval (0-16%) holds 5%:
    the two cannot be told apart, so the latest step wins (an insertion run picked step 2000 of
    8000 for its one success before this)."""
    evals = [Scored(1000, 0, 20), Scored(2000, 1, 20), Scored(3000, 0, 20), Scored(8000, 0, 20)]
    choice = choose(evals)
    assert choice.leader == 1 and sorted(choice.tied) == [0, 1, 2, 3]
    assert choice.index == 3


def test_more_episodes_separate_what_few_cannot():
    few = choose([Scored(100, 8, 10), Scored(200, 6, 10)])
    many = choose([Scored(100, 80, 100), Scored(200, 60, 100)])
    assert few.index == 1 and many.index == 0


def test_neighbour_spread_compares_swings_with_eval_noise():
    spread = neighbour_spread([Scored(s, k, 20) for s, k in ((1, 10), (2, 16), (3, 9))])
    assert abs(spread["max_abs_change"] - 0.35) < 1e-9
    assert 0.1 < spread["expected_abs_change_from_eval_noise"] < 0.2


def test_train_eval_every_both_weights_with_validation_loss(tmp_path):
    app = build_app()
    data = tmp_path / "lift.zarr"
    recorded = runner.invoke(app, [
        "record", "--robot", "twin:lift", "--episodes", "4", "--out", str(data),
        "--set", "fps=10", "--set", "twin_params.width=64", "--set", "twin_params.height=48",
    ])
    assert recorded.exit_code == 0, recorded.output
    run = tmp_path / "run"
    trained = runner.invoke(app, [
        "train", "--dataset", str(data), "--policy", "act", "--preset", "tiny", "--steps", "30",
        "--out", str(run), "--eval-task", "lift", "--eval-every", "15", "--eval-episodes", "2",
        "--eval-weights", "both", "--val-holdout", "1", "--no-progress", "--threads", "1",
    ])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if "success_rate" in line]
    assert [(r["step"], r["weights"]) for r in evals] == [(15, "ema"), (15, "raw"), (30, "ema"),
                                                          (30, "raw")]
    assert all(r["episodes"] == 2 and 0 <= r["successes"] <= 2 for r in evals)
    assert all(r["val_loss"] > 0 and r["val_loss_ema"] > 0 for r in evals)
    selection = json.loads((run / "selection.json").read_text())
    assert len(selection["evaluations"]) == 4 and "interval" in selection["note"]
    chosen = selection["chosen"]
    best = read_policy_json(run / "checkpoints" / "best")
    assert best["step"] == chosen["step"]
    assert bool(best.get("has_ema")) == (chosen["weights"] == "ema")  # best loads what won
    page = (run / "selection.html").read_text()
    assert "<svg" in page and "val_loss" in page and "chosen" in page
