"""`tether train` as a user meets it: run folders, Ctrl-C, a full disk, progress, presets, bad
checkpoints, and the examples the help and the docs show.

Runs go through the real CLI: in a subprocess where signals, exit codes and the terminal matter,
in-process (typer's runner) where only the command's behaviour does.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tether.app.commands.train import TRAIN_EXAMPLES
from tether.cli import build_app
from tether.core.errors import PolicyError, TetherError
from tether.policies import checkpoint as checkpoint_module
from tether.policies.checkpoint import find_checkpoint, load_policy
from tether.policies.trainer import TrainConfig, _PlainProgress, _ProgressUI, choose_preset, train

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
# A tiny ACT that trains a step in well under a second on one thread.
SMALL = ["--preset", "tiny", "--threads", "1", "--set", "batch_size=8", "--set", "model.dim=32",
         "--set", "model.n_heads=2", "--set", "model.ff_dim=64", "--set", "model.vision_width=8",
         "--set", "model.image_size=null"]
ENV = {**os.environ, "MUJOCO_GL": "egl", "COLUMNS": "1000", "OMP_NUM_THREADS": "1"}


def _cli(*args: str):
    """`tether *args` in-process; output is stdout + stderr."""
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, (result.stdout or "") + (result.stderr or ""), result


def _tether(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _obs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=3).astype(np.float32),
            "image.top": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)}


@pytest.fixture(scope="module")
def act_run(synthetic_store, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("act") / "run"
    code, text, result = _cli("train", "-d", str(synthetic_store), "--out", str(out), "--steps", "4",
                              "--no-progress", *SMALL)
    assert code == 0, text + repr(result.exception)
    return out


# -- item 1: a non-empty --out is refused unless --resume or --overwrite ------------------------


def test_train_refuses_a_non_empty_out_and_overwrite_replaces_the_old_run(synthetic_store, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-d", str(synthetic_store), "--out", str(run), "--no-progress", *SMALL]
    assert _cli(*args, "--steps", "3")[0] == 0
    # an evaluated run also has checkpoints/best: the file a second run must never leave behind
    shutil.copytree(run / "checkpoints" / "last", run / "checkpoints" / "best")
    (run / "notes.txt").write_text("mine")

    code, text, _ = _cli(*args, "--steps", "2")
    assert code == 2
    assert "not empty" in text and "--overwrite" in text and "--resume" in text and str(run) in text
    assert json.loads((run / "checkpoints" / "best" / "policy.json").read_text())["step"] == 3

    code, text, result = _cli(*args, "--steps", "2", "--overwrite")
    assert code == 0, text + repr(result.exception)
    assert not (run / "checkpoints" / "best").exists()
    assert not (run / "checkpoints.overwritten").exists()
    assert find_checkpoint(run) == run / "checkpoints" / "last"
    assert load_policy(run) is not None
    assert json.loads((run / "checkpoints" / "last" / "policy.json").read_text())["step"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # the old run's metrics are gone
    assert (run / "notes.txt").read_text() == "mine"  # files the run did not write stay

    code, text, _ = _cli("train", "--resume", str(run), "--overwrite")
    assert code == 2 and "choose one" in text


def test_a_crashed_overwrite_leaves_no_checkpoint_to_serve(synthetic_store, tmp_path):
    """The old checkpoints leave in one rename: after a crash right after it, nothing old loads."""
    from tether.policies.trainer import prepare_run_dir

    run = train(TrainConfig(dataset=str(synthetic_store), preset="tiny", steps=1, batch_size=8,
                            out=str(tmp_path / "run"), progress=False,
                            model={"dim": 32, "n_heads": 2, "ff_dim": 64, "vision_width": 8,
                                   "image_size": None}))
    os.replace(run / "checkpoints", run / "checkpoints.overwritten")  # the state after the rename
    with pytest.raises(PolicyError, match="holds no checkpoint"):
        load_policy(run)
    prepare_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == []


def test_the_api_refuses_too(synthetic_store, act_run):
    from tether.core.errors import ConfigError

    with pytest.raises(ConfigError, match="not empty"):
        train(TrainConfig(dataset=str(synthetic_store), preset="tiny", out=str(act_run)))


# -- item 5: SIGINT saves a checkpoint and says where; --resume continues from it -----------------


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(synthetic_store, tmp_path):
    run = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "tether.cli", "train", "-d", str(synthetic_store), "--out", str(run),
           "--steps", "100000", "--set", "log_every=1", "--set", "save_every=100000", *SMALL]
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
        try:
            deadline = time.monotonic() + 120
            metrics = run / "metrics.jsonl"
            while not (metrics.is_file() and metrics.read_text().strip()
                       and "estimated training time" in err_path.read_text()):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "no step was logged within 120 s"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err_path.read_text()
    assert proc.returncode == 130, text
    ckpt = run / "checkpoints" / "last"
    assert f"checkpoint saved to {ckpt}" in text and f"tether train --resume {run}" in text
    assert "Traceback" not in text
    saved = json.loads((ckpt / "train_state.json").read_text())["step"]
    assert saved >= 1
    assert not (run / "checkpoints" / "last.tmp").exists()
    # stdout is a pipe, so progress came as plain lines with real numbers, never "nan"
    assert re.search(r"step \d+/100000  loss \d+\.\d+", text) and "nan" not in text

    proc = _tether("train", "--resume", str(run), "--steps", str(saved + 2), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [saved + 1, saved + 2]
    assert json.loads((ckpt / "policy.json").read_text())["step"] == saved + 2


def test_sigterm_through_the_api_raises_training_interrupted_after_saving(synthetic_store, tmp_path):
    """A real SIGTERM to this process (as `kill` or a job scheduler sends it) during train()."""
    import threading

    from tether.policies.trainer import TrainingInterrupted

    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"

    def kill_after_first_step() -> None:
        deadline = time.monotonic() + 60
        while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=kill_after_first_step, daemon=True)
    killer.start()
    with pytest.raises(TrainingInterrupted) as info:
        train(TrainConfig(dataset=str(synthetic_store), preset="tiny", steps=100_000, batch_size=8,
                          out=str(run), progress=False, log_every=1, save_every=100_000,
                          model={"dim": 32, "n_heads": 2, "ff_dim": 64, "vision_width": 8,
                                 "image_size": None}))
    killer.join(timeout=5)
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    exc = info.value
    assert exc.signal_name == "SIGTERM" and exc.checkpoint == run / "checkpoints" / "last"
    assert json.loads((exc.checkpoint / "train_state.json").read_text())["step"] == exc.step >= 1


# -- item 5: a full disk while saving ------------------------------------------------------------


def _full_disk_after(monkeypatch, good_writes: int) -> None:
    """Let `good_writes` checkpoint files through, then fail the next one half-way with ENOSPC,
    as the write call of a filling disk does."""
    real = checkpoint_module._write_file
    count = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        count["n"] += 1
        if count["n"] > good_writes:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_file", write)


def test_full_disk_while_saving_gives_a_message_and_removes_the_temp(synthetic_store, tmp_path,
                                                                     monkeypatch):
    run = tmp_path / "run"
    # save_every 2 over 4 steps: the step-2 checkpoint (6 files) lands, the step-4 one fails
    _full_disk_after(monkeypatch, good_writes=6)
    code, text, result = _cli("train", "-d", str(synthetic_store), "--out", str(run), "--steps", "4",
                              "--set", "save_every=2", "--no-progress", *SMALL)
    assert code == 2, text + repr(result.exception)
    assert "No space left on device" in text and "free disk space" in text
    assert str(run / "checkpoints" / "last") in text
    assert "SafetensorError" not in text and "Traceback" not in text
    assert not (run / "checkpoints" / "last.tmp").exists()
    # the previous checkpoint is untouched and loads
    assert json.loads((run / "checkpoints" / "last" / "policy.json").read_text())["step"] == 2
    assert load_policy(run).predict_chunk(_obs()).shape[1] == 3


# -- item 6: progress without "nan", plain lines off a terminal, the estimate --------------------


def test_plain_progress_is_rate_limited_by_the_injected_clock():
    now = [0.0]
    lines: list[str] = []
    plain = _PlainProgress(100, lines.append, interval_s=10.0, clock=lambda: now[0])
    plain.update(1, 0.5, None)  # first step: shown at once, no rate yet
    for step in range(2, 50):
        now[0] += 0.1
        plain.update(step, 0.4, 2.0)
    assert lines == ["step 1/100  loss 0.5000"]
    now[0] += 10.0
    plain.update(50, 0.3, 2.0)
    plain.update(100, 0.2, 2.0)  # the last step is always shown
    assert lines[1:] == ["step 50/100  loss 0.3000  2.00 it/s  ETA 25 s", "step 100/100  loss 0.2000"
                         "  2.00 it/s  ETA 0 s"]


def test_progress_bar_shows_no_nan_before_the_first_loss():
    import io

    from rich.console import Console

    ui = _ProgressUI(10, enabled=True, terminal=True)
    bar = ui.running(0)
    buf = io.StringIO()
    bar.live.console = Console(file=buf, force_terminal=True, width=200)
    with bar:
        bar.refresh()
        before = buf.getvalue()
        ui.update(1, 0.123, 1e-3, None)
        bar.refresh()
    assert "nan" not in before and "loss" not in before
    assert "loss 0.1230" in buf.getvalue()


# -- item 7: the preset follows the device; the help and docs examples run ------------------------


def test_preset_is_chosen_by_device_and_said():
    assert choose_preset("cpu")[0] == "cpu" and choose_preset("cuda")[0] == "default"
    assert choose_preset("cuda:1")[0] == "default"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_readme_command_picks_the_cpu_preset_on_a_cpu(tmp_path):
    code, text, result = _cli("train", "--dataset", "data/lift.zarr", "--policy", "act", "--dry-run",
                              "--out", str(tmp_path / "r"))
    assert code == 0, text
    assert "preset 'cpu' for act (no preset given; training on cpu" in result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["preset"] == "cpu" and cfg["steps"] == 5000 and cfg["model"]["dim"] == 128


def _dry_run(command: str, tmp_path: Path) -> dict:
    args = shlex.split(command)
    assert args[:2] == ["tether", "train"], command
    code, text, result = _cli(*args[1:], "--dry-run")
    assert code == 0, f"{command}: {text} {result.exception!r}"
    return json.loads(result.stdout)


def test_help_examples_run(tmp_path):
    code, _, _ = _cli("train", "--help")
    assert code == 0
    help_text = next(c for c in build_app().registered_commands if c.name == "train").help
    configs = []
    for example in TRAIN_EXAMPLES:
        assert example in help_text
        configs.append(_dry_run(example, tmp_path))
    assert configs[2]["lr"] == 3e-4 and configs[2]["model"]["dim"] == 256
    assert configs[1]["steps"] == 3000 and configs[1]["preset"] == "cpu"


def test_docs_examples_run(tmp_path):
    text = DOCS.read_text().replace("\\\n", " ")  # join shell line continuations
    commands = [line.split("#")[0].strip() for line in text.splitlines()
                if line.startswith("tether train ") and "--resume" not in line and " -c " not in line]
    assert len(commands) >= 3
    for command in commands:
        _dry_run(command, tmp_path)
    big = _dry_run(next(c for c in commands if "lr=3e-4" in c), tmp_path)
    assert big["lr"] == 3e-4


def test_scientific_notation_in_a_yaml_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: data.zarr\npreset: cpu\nlr: 1e-4\nsteps: 2e3\nmodel:\n  lr_backbone: 1e-5\n")
    cfg = _dry_run(f"tether train -c {path}", tmp_path)
    assert cfg["lr"] == 1e-4 and cfg["steps"] == 2000
    code, text, _ = _cli("train", "-c", str(path), "--set", "lr=fast", "--dry-run")
    assert code == 2 and "'lr' expects float" in text


# -- item 3: corrupt or missing checkpoint files --------------------------------------------------


def _break(case: str, src: Path, dst: Path) -> tuple[Path, str]:
    """A broken copy of checkpoint `src` at `dst`; returns (path to load, text the error names)."""
    if case == "not a checkpoint":
        dst.mkdir()
        (dst / "readme.txt").write_text("hi")
        return dst, str(dst)
    if case == "missing path":
        return dst, str(dst)
    shutil.copytree(src, dst)
    if case == "missing safetensors":
        (dst / "ema.safetensors").unlink()
        return dst, str(dst / "ema.safetensors")
    if case == "truncated safetensors":
        data = (dst / "ema.safetensors").read_bytes()
        (dst / "ema.safetensors").write_bytes(data[: len(data) // 3])
        return dst, str(dst / "ema.safetensors")
    if case == "missing normalizer":
        (dst / "normalizer.safetensors").unlink()
        return dst, str(dst / "normalizer.safetensors")
    if case == "truncated json":
        text = (dst / "policy.json").read_text()
        (dst / "policy.json").write_text(text[: len(text) // 2])
        return dst, str(dst / "policy.json")
    if case == "unknown policy type":
        meta = json.loads((dst / "policy.json").read_text())
        meta["policy_type"] = "bc"
        (dst / "policy.json").write_text(json.dumps(meta))
        return dst, "known types: act, diffusion"
    raise AssertionError(case)


CASES = ["missing safetensors", "truncated safetensors", "missing normalizer", "truncated json",
         "unknown policy type", "not a checkpoint", "missing path"]


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoints_raise_policy_errors_naming_the_file(act_run, tmp_path, case):
    path, named = _break(case, find_checkpoint(act_run), tmp_path / "ckpt")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert isinstance(info.value, TetherError) and named in str(info.value)


@pytest.mark.parametrize("command, case", [
    *[("serve", case) for case in ("missing safetensors", "truncated json", "unknown policy type",
                                   "not a checkpoint")],
    # eval starts the twin before its worker loads the policy (~15 s each): two cases suffice
    ("eval", "missing safetensors"), ("eval", "truncated json")])
def test_bad_checkpoints_through_the_cli(act_run, tmp_path, case, command):
    path, named = _break(case, find_checkpoint(act_run), tmp_path / "ckpt")
    if command == "serve":
        proc = _tether("serve", str(path), "--bind", "tcp://127.0.0.1:0")
    else:
        proc = _tether("eval", "--task", "lift", "--checkpoint", str(path), "--episodes", "1",
                       "--out", str(tmp_path / "eval"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert named in output and "Traceback" not in output


# -- item 2: a path stored in a checkpoint is never followed ---------------------------------------


@pytest.mark.parametrize("stored", ["missing.pth", "garbage.pth", "other.safetensors"])
def test_loading_ignores_the_pretrained_path_stored_in_the_checkpoint(act_run, tmp_path, stored):
    from safetensors.torch import save_file

    from tether.policies.vision import ResNet18

    src = find_checkpoint(act_run)
    expected = load_policy(src).predict_chunk(_obs(1))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    target = tmp_path / stored
    if stored == "garbage.pth":
        target.write_bytes(b"not weights")
    elif stored == "other.safetensors":  # real, different ResNet-18 weights
        torch.manual_seed(123)
        save_file({k: v.contiguous() for k, v in ResNet18(norm="batch").state_dict().items()},
                  str(target))
    meta = json.loads((ckpt / "policy.json").read_text())
    meta["model_config"]["pretrained_backbone"] = str(target)
    (ckpt / "policy.json").write_text(json.dumps(meta))
    policy = load_policy(ckpt)
    np.testing.assert_array_equal(policy.predict_chunk(_obs(1)), expected)
    assert policy.model.config.pretrained_backbone == str(target)  # kept as a record only
