"""Takeover during a rollout (HG-DAgger style corrections), on the twin and through the CLI.

A scripted "human" (the twin's scripted expert behind the TeleopDevice interface) takes over
from a policy, hands back, and the whole episode lands in an episode store with who was in
control per step; handovers stay within their speed limit; training can weight or select the
corrections. The improvement of an under-trained policy after one round of corrections is
measured by benchmarks/takeover_dagger.py and tests/integration/test_takeover_dagger_slow.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("MUJOCO_GL", "egl")

from tether.app.takeover import (  # noqa: E402
    Controller,
    Takeover,
    TakeoverConfig,
    handover_speeds,
    safety_velocity_of,
    takeover_bindings,
)
from tether.cli import build_app  # noqa: E402
from tether.core.errors import ConfigError  # noqa: E402
from tether.data.interventions import (  # noqa: E402
    controllers,
    intervention_flags,
    policy_flags,
    step_repeats,
)
from tether.data.store import EpisodeStore  # noqa: E402
from tether.robot.targets import TeleopDevice  # noqa: E402

runner = CliRunner()
TWIN = ["--robot", "twin:lift", "--set", "fps=10", "--set", "twin_params.cameras=[]"]


def _cli(*args: str):
    result = runner.invoke(build_app(), list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def takeover_store(tmp_path_factory):
    """Two episodes of simple:hold on the twin; the scripted operator takes over after 1 s of no
    success and hands back 2 s later."""
    tmp = tmp_path_factory.mktemp("takeover")
    out, summaries = tmp / "rollout.zarr", tmp / "rollout.json"
    _cli("rollout", *TWIN, "--policy", "simple:hold", "--lockstep", "--episodes", "2",
         "--max-steps", "60", "--takeover", "scripted", "--takeover-param", "patience_s=1",
         "--takeover-param", "release_after_s=2", "--record", str(out), "--json", str(summaries),
         "--no-keyboard")
    return out, json.loads(summaries.read_text())


def test_recorded_store_says_who_was_in_control_per_step(takeover_store):
    out, summaries = takeover_store
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2 and {"state", "action", "timestamp"} <= set(store.keys)
        for episode, summary in enumerate(summaries):
            meta = store.episode_metadata(episode)
            length = store.episode_lengths[episode]
            assert meta["source"] == "rollout" and summary["stored_episode"] == episode
            who = controllers(meta, length)
            runs = [c for i, c in enumerate(who) if i == 0 or who[i - 1] != c]
            # the policy drives, the operator takes over (a handover), drives, hands back
            assert runs[:3] == ["policy", "to_human", "human"], runs
            assert "to_policy" in runs and runs[-1] == "policy", runs
            flags = intervention_flags(meta, length)
            assert flags.sum() == summary["intervention_steps"] > 0
            assert np.array_equal(flags, who == "human")
            assert not (flags & policy_flags(meta, length)).any()
            assert 8 <= who.tolist().index("to_human") <= 12  # patience 1 s at 10 Hz
            assert [h["to"] for h in meta["handovers"]] == ["human", "policy"]
            assert "no success after 1 s" in meta["takeover_reason"]


def test_handovers_stay_within_their_speed_limit(takeover_store):
    out, summaries = takeover_store
    from tether.robot.factory import make_robot

    limit = safety_velocity_of(make_robot("twin:lift", ["fps=10"]))
    with EpisodeStore.open(out) as store:
        for episode, summary in enumerate(summaries):
            meta = store.episode_metadata(episode)
            actions = store.get_episode(episode, ["action"])["action"]
            peaks = handover_speeds(actions, meta["handovers"], 0.1, limit)
            assert len(peaks) == 2 and max(peaks) <= 0.25 + 1e-5, peaks
            assert summary["handover_peak_speed"] == pytest.approx(peaks, abs=1e-4)
            # the whole episode, handovers and direct control alike, within the safety limit
            speed = np.abs(np.diff(actions.astype(np.float64), axis=0)) / 0.1
            assert np.all(speed <= limit * (1 + 1e-4) + 1e-4)


def test_training_weights_and_selects_corrections(takeover_store, tmp_path):
    pytest.importorskip("torch")
    from tether.data.dataset import EpisodeDataset

    out, summaries = takeover_store
    human = sum(s["intervention_steps"] for s in summaries)
    with EpisodeStore.open(out) as store:
        hg_dagger = step_repeats(store, intervention_weight=2.0, policy_weight=0.0)
        assert hg_dagger.sum() == 2 * human
        half = step_repeats(store, intervention_weight=1.0, policy_weight=0.5, seed=3)
        assert human < half.sum() < store.n_steps
    dataset = EpisodeDataset(out, keys=["state"], action_horizon=4, repeats=hg_dagger)
    assert len(dataset) == 2 * human
    result = _cli("train", "--dataset", str(out), "--policy", "mlp", "--preset", "tiny",
                  "--intervention-weight", "2", "--policy-weight", "0", "--out", str(tmp_path / "r"),
                  "--dry-run")
    config = json.loads(result.stdout[result.stdout.index("{"):])
    assert config["intervention_weight"] == 2.0 and config["policy_weight"] == 0.0


class _Leader(TeleopDevice):
    """A device whose target is wherever the test puts it (a leader arm held by a person)."""

    def __init__(self, target):
        self.target = np.asarray(target, dtype=np.float64)
        self.resets = 0

    def reset(self, seed=None):
        self.resets += 1

    def next_target(self, observation):
        return self.target.copy()


class _Obs:
    def __init__(self, state):
        self.state = np.asarray(state, dtype=np.float32)


def test_arbiter_ramps_aligns_and_never_jumps():
    limit, dt = np.array([2.0, 2.0, 1.0]), 0.1
    leader = _Leader([1.0, -1.0, 0.5])
    tk = Takeover(leader, limit, dt, TakeoverConfig(handover_speed=0.5))
    tk.reset(0)
    last = np.zeros(3)
    policy = np.zeros(3)
    assert np.array_equal(tk.decide(_Obs(last), policy, last), policy) and not tk.intervening
    bindings = takeover_bindings(tk)
    bindings[" "][1]()  # the space key (or a pedal): take over
    commands = []
    for _ in range(20):
        last = tk.decide(_Obs(last), policy, last)
        commands.append(last)
    assert leader.resets == 2  # the episode's reset, then the takeover's
    steps = np.abs(np.diff(np.vstack([np.zeros(3), commands]), axis=0))
    assert np.all(steps <= 0.5 * limit * dt + 1e-12)  # ramped at half the safety speed
    assert np.allclose(commands[-1], leader.target) and tk.controller is Controller.HUMAN
    assert tk.intervening
    tk.toggle()  # hand back: the policy's action is far away, so it ramps too
    for _ in range(20):
        new = tk.decide(_Obs(last), policy, last)
        assert np.all(np.abs(new - last) <= 0.5 * limit * dt + 1e-12)
        last = new
    assert tk.controller is Controller.POLICY and np.allclose(last, policy)
    spans = tk.summary()["control_spans"]
    assert [s[2] for s in spans] == ["policy", "to_human", "human", "to_policy", "policy"]

    # align: the follower holds until the leader is brought within tolerance of it
    tk = Takeover(leader, limit, dt, TakeoverConfig(handover="align", align_tolerance=0.05))
    tk.reset(0)
    tk.take_over()
    follower = np.zeros(3)
    assert tk.decide(_Obs(follower), policy, follower) is None  # hold: leader is far
    assert tk.controller is Controller.TO_HUMAN
    leader.target = follower + 0.03
    target = tk.decide(_Obs(follower), policy, follower)
    # switched; this first step is still within the handover's limit (0.25 x 1.0 rad/s x 0.1 s)
    assert np.allclose(target, np.minimum(0.03, 0.25 * limit * dt))
    assert tk.controller is Controller.HUMAN


def test_scripted_operator_takes_over_when_the_object_drifts():
    from tether.app.scripted_operator import ScriptedOperator
    from tether.robot.factory import make_robot

    robot = make_robot("twin:lift", ["fps=10", "twin_params.cameras=[]"])
    with robot:
        robot.reset(5)
        operator = ScriptedOperator(robot, drift_m=0.015)
        operator.reset(5)
        assert operator.wants_control is False
        pos, _ = robot.task.body_pose(robot.sim, "cube")
        robot.task.set_free_pose(robot.sim, "cube", [pos[0] + 0.03, pos[1], pos[2]], 0.0)
        robot.sim.forward()
        assert operator.wants_control is True and "drifted 30 mm" in operator.reason


def test_bad_takeover_options_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="handover_speed"):
        TakeoverConfig(handover_speed=2.0)
    result = runner.invoke(build_app(), ["rollout", *TWIN, "--policy", "simple:hold", "--lockstep",
                                         "--max-steps", "5", "--takeover", "keyboard"])
    assert result.exit_code != 0 and "cannot follow" in result.output
