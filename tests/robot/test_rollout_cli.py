"""`tether rollout` end to end: through a server, in-process, and its error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import WaypointPolicy, observation_specs_for
from tether.robot.factory import make_robot

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    return build_app()


@pytest.mark.realtime  # no stall: each chunk within its 200 ms budget on a loaded host
def test_rollout_through_a_server_writes_episode_summaries(app, tmp_path):
    twin = make_robot("twin:lift", ["fps=50"])
    policy = WaypointPolicy(observation_specs_for(twin), twin.home + 0.1, chunk_size=20, fps=50)
    out = tmp_path / "rollout.json"
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        result = runner.invoke(
            app,
            ["rollout", "--robot", "twin:lift", "--set", "fps=50", "--server", server.endpoint,
             "--episodes", "2", "--max-steps", "25", "--blend", "switch", "--json", str(out)],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    summaries = json.loads(out.read_text())
    assert [s["seed"] for s in summaries] == [0, 1]
    for s in summaries:
        # ticks a loaded host lost still advance the step index: whole skipped periods, plus
        # less than one period per overrun
        lost = 25 - s["length"]
        assert s["loop"]["skipped_ticks"] <= lost <= s["loop"]["skipped_ticks"] + s["loop"]["overruns"], s
        assert s["stalls"] == 0
    assert "rollout" in result.output and "latency" in result.output


def test_rollout_in_process_lockstep(app, tmp_path):
    out = tmp_path / "r.json"
    result = runner.invoke(
        app,
        ["rollout", "--robot", "twin:lift", "--policy", "simple:hold", "--lockstep",
         "--max-steps", "20", "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())[0]
    assert summary["length"] == 20 and summary["chunks"] >= 1 and summary["held_ticks"] == 0
    assert np.isfinite(summary["latency_p50_ms"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "simple:hold", "--server", "tcp://127.0.0.1:9"], "exactly one of"),
        ([], "exactly one of"),
        (["--server", "tcp://127.0.0.1:9", "--timeout", "0.2", "--connect-timeout", "1"],
         "no policy server answered"),
        (["--policy", "simple:nonsense"], "unknown simple policy"),
        (["--policy", "simple:hold", "--blend", "average"], "ensemble' or 'switch"),
        (["--robot", "twin:nope", "--policy", "simple:hold"], "nope"),
    ],
)
def test_rollout_user_errors_exit_2_without_a_traceback(app, args, message):
    result = runner.invoke(app, ["rollout", "--max-steps", "5", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
