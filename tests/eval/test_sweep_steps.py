"""`tether eval --sweep-steps`: the sampling-speed frontier of a diffusion checkpoint, through
the CLI, with a tiny checkpoint and 2 episodes per setting; and `--push` moving the object."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app

torch = pytest.importorskip("torch")

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """In-process evaluation (--workers 0) on a shared 2-core machine: 2 OpenMP threads spend
    most of their time in barrier waits, one is steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Random-weight, state-only diffusion checkpoint at 2 Hz (16-tick lift episodes)."""
    from tether.policies.checkpoint import save_checkpoint
    from tether.policies.diffusion import DiffusionConfig, DiffusionModel
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import make_spec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dim = 6
    config = DiffusionConfig(state_dim=dim, action_dim=dim, cameras=[], horizon=8, n_action_steps=4,
                             down_dims=[16, 32], step_embed_dim=16, streaming_fraction=0.5)
    stats = {k: {"min": -np.ones(dim), "max": np.ones(dim), "mean": np.zeros(dim), "std": np.ones(dim)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": "min_max", "action": "min_max"})
    spec = make_spec("diffusion", dim, {}, dim, 4, 2.0, norm, {"num_train_steps": 100})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "dp", model=DiffusionModel(config),
                           normalizer=norm, policy_type="diffusion", spec=spec, step=0)


def test_sweep_steps_writes_the_frontier_table_plot_and_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(build_app(), [
        "eval", "--task", "lift", "--checkpoint", str(tiny_checkpoint), "--sweep-steps", "2,1",
        "--sampler", "ddim,dpmpp,streaming", "--episodes", "2", "--workers", "0", "--videos", "0",
        "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads(result.stdout)
    settings = [(r["sampler"], r["steps"]) for r in data["settings"]]
    assert settings == [("ddim", 1), ("ddim", 2), ("dpmpp", 1), ("dpmpp", 2), ("streaming", None)]
    for row in data["settings"]:
        assert row["episodes"] == 2 and 0 <= row["success_ci95"][0] <= row["success_ci95"][1] <= 1
        assert row["inference_ms_p50"] > 0 and row["inference_ms_per_tick"] > 0
        assert (out / f"{row['sampler']}{'' if row['steps'] is None else '_' + str(row['steps'])}"
                / "summary.json").is_file()
    assert data["machine"]["cpus"] and data["machine"]["date"]
    assert json.loads((out / "steps_sweep.json").read_text())["settings"] == data["settings"]
    assert (out / "plots" / "frontier.png").stat().st_size > 5000
    page = (out / "report.html").read_text()
    assert 'id="frontier"' in page and page.count("<tr>") == 6 and "<img" in page
    # Each setting reached the policy: streaming ran one request per tick and made 1-action chunks.
    streaming = json.loads((out / "streaming" / "summary.json").read_text())
    assert streaming["episodes"] == 2


@pytest.mark.parametrize("args, message", [
    (["--sweep-steps", "0,3"], "step counts >= 1"),
    (["--sweep-steps", "1,3", "--sampler", "ddim,euler"], "--sampler takes ddim, dpmpp, streaming"),
    (["--sweep-steps", "1,3", "--steps", "5"], "drop --steps"),
    (["--sampler", "ddim,dpmpp"], "a comma-separated list goes with --sweep-steps"),
    (["--push", "15"], "--push takes STEP:METERS"),
])
def test_bad_sweep_options_are_one_line_errors(tiny_checkpoint, tmp_path, args, message):
    result = runner.invoke(build_app(), ["eval", "--task", "lift", "--checkpoint", str(tiny_checkpoint),
                                         "--episodes", "1", "--out", str(tmp_path), *args])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split()), result.output


def test_push_moves_the_object_toward_the_middle_once():
    from tether.app.eval.perturb import Push, push_hook
    from tether.robot.factory import make_robot

    robot = make_robot("twin:lift", ["twin_params.cameras=[]", "fps=10"])
    with robot:
        robot.reset(3)
        before = robot.privileged_state()["cube_pos"]
        hook = push_hook(robot, Push.parse("2:0.03"))
        hook(1, 80)
        assert np.allclose(robot.privileged_state()["cube_pos"], before)
        hook(2, 80)
        after = robot.privileged_state()["cube_pos"]
    assert abs(after[1] - before[1]) == pytest.approx(0.03, abs=1e-6)
    assert abs(after[1]) < abs(before[1]) or abs(before[1]) < 0.03
    assert after[0] == pytest.approx(before[0]) and after[2] == pytest.approx(before[2])
