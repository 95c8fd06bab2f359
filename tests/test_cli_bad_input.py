"""Bad input from users gets a clear error, never a traceback (issue 12, item 9).

One table, run through the real CLI in a subprocess (`python -m tether.cli ...`, as a user would
type it): missing and corrupt checkpoints, missing and corrupt stores, locations that cannot be
written, bad `--set` values, robot configs that do not exist. Each must exit 2 with a message
naming the path (or key) at fault, and print no traceback. The central handler in
tether/cli.py is also tested directly for the cases no real input reaches (Ctrl-C, a bug).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import typer

from tether.cli import describe_os_error, run
from tether.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # {tmp}, {ckpt}, {store}, {file} are filled in
    names: str  # the message must contain this (a path or a key), after the same filling
    absent: list[str] = field(default_factory=list)  # paths that must not exist afterwards
    owner: str = ""  # who makes the domain code raise the right error (for xfail reasons)


CASES = [
    # --- checkpoints -----------------------------------------------------------------------
    Case("serve-missing-checkpoint", ["serve", "{tmp}/no/such/run"], "{tmp}/no/such/run"),
    Case("eval-missing-checkpoint",
         ["eval", "--task", "lift", "--checkpoint", "{tmp}/no/such/run", "--episodes", "1"],
         "{tmp}/no/such/run", owner="tether/eval"),
    Case("rollout-missing-checkpoint",
         ["rollout", "--robot", "twin:lift", "--policy", "{tmp}/no/such/run", "--lockstep"],
         "{tmp}/no/such/run"),
    Case("checkpoint-without-safetensors", ["serve", "{tmp}/no_weights"],
         "{tmp}/no_weights/model.safetensors", owner="H5"),
    Case("checkpoint-with-malformed-policy-json", ["serve", "{tmp}/bad_json"],
         "{tmp}/bad_json/policy.json", owner="H5"),
    Case("checkpoint-with-truncated-safetensors", ["serve", "{tmp}/truncated"],
         "{tmp}/truncated/model.safetensors", owner="H5"),
    # --- stores ------------------------------------------------------------------------------
    Case("inspect-missing-store", ["inspect", "{tmp}/nope.zarr"], "{tmp}/nope.zarr"),
    Case("train-missing-store",
         ["train", "--dataset", "{tmp}/nope.zarr", "--preset", "tiny", "--steps", "1",
          "--out", "{tmp}/run_missing"], "{tmp}/nope.zarr", owner="H3"),
    Case("inspect-corrupt-meta-zarr-json", ["inspect", "{tmp}/bad_meta.zarr"],
         "{tmp}/bad_meta.zarr", owner="H3"),
    Case("inspect-corrupt-array-metadata", ["inspect", "{tmp}/bad_array.zarr"],
         "{tmp}/bad_array.zarr", owner="H3"),
    Case("train-corrupt-meta-zarr-json",
         ["train", "--dataset", "{tmp}/bad_meta.zarr", "--preset", "tiny", "--steps", "1",
          "--out", "{tmp}/run_bad_meta"], "{tmp}/bad_meta.zarr", owner="H3"),
    Case("train-garbage-image-chunk",
         ["train", "--dataset", "{tmp}/bad_chunk.zarr", "--preset", "tiny", "--steps", "2",
          "--out", "{tmp}/run_bad_chunk", "--no-progress"], "image.top", owner="H3"),
    Case("inspect-video-missing-image-chunk",
         ["inspect", "{tmp}/lost_chunk.zarr", "--episode", "1", "--video", "{tmp}/ep1.png"],
         "data/image.top/c/", owner="H3"),
    # --- locations that cannot be written ----------------------------------------------------
    Case("record-out-under-a-file",
         ["record", "--robot", "twin:lift", "--teleop", "scripted", "--episodes", "1",
          "--out", "{file}/lift.zarr"], "{file}", owner="H3"),
    Case("twin-view-out-under-a-file", ["twin", "view", "--task", "lift", "--out", "{file}/view"],
         "{file}"),
    Case("keys-generate-under-a-file", ["keys", "generate", "{file}/keys"], "{file}"),
    Case("train-out-under-a-file",
         ["train", "--dataset", "{store}", "--preset", "tiny", "--steps", "1",
          "--out", "{file}/run"], "{file}", owner="H5"),
    # --- bad --set values --------------------------------------------------------------------
    Case("record-set-not-a-number",
         ["record", "--robot", "twin:lift", "--teleop", "scripted", "--episodes", "1",
          "--out", "{tmp}/set.zarr", "--set", "fps=fast"], "fps", absent=["{tmp}/set.zarr"]),
    Case("record-set-unknown-key",
         ["record", "--robot", "twin:lift", "--teleop", "scripted", "--episodes", "1",
          "--out", "{tmp}/set2.zarr", "--set", "no_such_key=1"], "no_such_key",
         absent=["{tmp}/set2.zarr"]),
    Case("train-set-not-a-number",
         ["train", "--dataset", "{store}", "--preset", "tiny", "--steps", "1",
          "--out", "{tmp}/run_set", "--set", "lr=fast"], "lr"),
    Case("teleop-set-unknown-key",
         ["teleop", "--robot", "twin:lift", "--device", "scripted", "--set", "no_such_key=1"],
         "no_such_key"),
    # --- robot configs -----------------------------------------------------------------------
    Case("record-unknown-robot-config",
         ["record", "--robot", "{tmp}/no_robot.yaml", "--teleop", "scripted", "--episodes", "1",
          "--out", "{tmp}/r.zarr"], "{tmp}/no_robot.yaml", absent=["{tmp}/r.zarr"]),
    Case("rollout-unknown-robot-config",
         ["rollout", "--robot", "{tmp}/no_robot.yaml", "--server", "tcp://127.0.0.1:9"],
         "{tmp}/no_robot.yaml"),
    Case("teleop-malformed-robot-config", ["teleop", "--robot", "{tmp}/garbage.yaml"],
         "{tmp}/garbage.yaml"),
    Case("record-hardware-that-is-not-there",
         ["record", "--robot", str(ROOT / "configs/so101_leader.yaml"), "--teleop", "leader",
          "--episodes", "1", "--out", "{tmp}/hw.zarr"], "/dev/ttySO101",
         absent=["{tmp}/hw.zarr"], owner="teleop/recorder (record must not leave a store)"),
]


# Cases that still fail against what is committed, with who owns the fix. strict: when the fix
# lands the case passes, the xfail turns red, and the entry must be removed.
XFAIL: dict[str, str] = {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """A tiny real checkpoint and store, and broken copies of each."""
    tmp = tmp_path_factory.mktemp("bad_input")
    ckpt = _tiny_checkpoint(tmp / "ckpt")
    store = _tiny_store(tmp / "store.zarr")
    shutil.copytree(ckpt, tmp / "no_weights")
    (tmp / "no_weights" / "model.safetensors").unlink()
    shutil.copytree(ckpt, tmp / "bad_json")
    (tmp / "bad_json" / "policy.json").write_text('{"format": "tether-policy", "step": ')
    shutil.copytree(ckpt, tmp / "truncated")
    weights = tmp / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(store, tmp / "bad_meta.zarr")
    (tmp / "bad_meta.zarr" / "meta" / "zarr.json").write_text("garbage {{{")
    shutil.copytree(store, tmp / "bad_array.zarr")
    (tmp / "bad_array.zarr" / "data" / "state" / "zarr.json").write_bytes(b"\x00\xff garbage")
    shutil.copytree(store, tmp / "bad_chunk.zarr")
    (tmp / "bad_chunk.zarr" / "data" / "image.top" / "c" / "10" / "0" / "0" / "0").write_bytes(b"garbage")
    shutil.copytree(store, tmp / "lost_chunk.zarr")
    (tmp / "lost_chunk.zarr" / "data" / "image.top" / "c" / "10" / "0" / "0" / "0").unlink()
    (tmp / "a_file").write_text("a file, not a folder\n")
    (tmp / "garbage.yaml").write_text("name: [unclosed\n  arms: {{\n")
    return {"tmp": str(tmp), "ckpt": str(ckpt), "store": str(store), "file": str(tmp / "a_file")}


@pytest.fixture(scope="module")
def outcomes(inputs, request) -> dict[str, subprocess.CompletedProcess]:
    """The subprocess of every selected case, a few at a time: each one mostly waits for imports
    (torch, mujoco) on a shared machine, so running them side by side saves minutes, not CPU."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and "case" in getattr(getattr(item, "callspec", None), "params", {})
    }
    cases = [c for c in CASES if c.id in selected]

    def one(case: Case) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tether.cli", *_fill(case.args, inputs)],
            capture_output=True, text=True, timeout=300, cwd=inputs["tmp"],
            env={**os.environ, "MUJOCO_GL": "egl", "TETHER_TEST": "1"},
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip([c.id for c in cases], pool.map(one, cases), strict=True))


def _fill(args: list[str], inputs: dict[str, str]) -> list[str]:
    return [a.format(**inputs) for a in args]


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=XFAIL[c.id])) if c.id in XFAIL else c
    for c in CASES
], ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error(case, inputs, outcomes):
    args = _fill(case.args, inputs)
    proc = outcomes[case.id]
    output = proc.stdout + proc.stderr
    shown = f"$ tether {' '.join(args)}\n(exit {proc.returncode})\n{output[-3000:]}"
    assert "Traceback" not in output, shown
    assert proc.returncode == 2, shown
    expected = case.names.format(**inputs)
    # rich may fold a long path at the terminal width: compare with line breaks removed too
    assert expected in output or expected in output.replace("\n", ""), f"no '{expected}' in:\n{shown}"
    for path in case.absent:
        assert not Path(path.format(**inputs)).exists(), f"{path} was left behind:\n{shown}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories anyway")
def test_a_read_only_directory_is_named(inputs, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tether.cli", "keys", "generate", str(locked / "keys")],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        locked.chmod(0o700)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert str(locked) in output.replace("\n", "")


# --- the central handler, for what no real input reaches ----------------------------------------


def _app(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def fail(name: str = "x") -> None:
        """Raise the error under test."""
        raise error

    @app.command()
    def other() -> None:
        """A second command, so typer keeps `fail` as a subcommand."""

    return app


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (ConfigError("fps must be a number; got 'fast'. Use --set fps=30."), 2, "fps must be a number"),
        (PermissionError(13, "Permission denied", "/data/x.zarr"), 2, "Permission denied: /data/x.zarr"),
        (OSError(30, "Read-only file system", "/mnt/ro/run"), 2, "/mnt/ro/run (the file system is read-only"),
        (OSError(28, "No space left on device", "/data/run/last"), 2, "/data/run/last (the disk is full"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (ZeroDivisionError("division by zero"), 1, "run with -v for the traceback"),
    ],
    ids=["tether-error", "permission", "read-only", "disk-full", "ctrl-c", "bug"],
)
def test_the_handler_maps_each_kind_of_error(error, code, message, capfd):
    assert run(["fail"], app=_app(error)) == code
    err = capfd.readouterr().err
    assert message.lower() in err.lower(), err
    assert "Traceback" not in err


def test_a_bug_shows_its_traceback_with_verbose(capfd):
    assert run(["fail"], verbose=True, app=_app(ZeroDivisionError("division by zero"))) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err


def test_a_library_error_raised_from_a_file_error_names_the_file(capfd):
    class LibraryError(Exception):
        pass

    def raise_wrapped():
        try:
            raise FileNotFoundError(2, "No such file or directory", "/data/x.zarr/zarr.json")
        except FileNotFoundError as exc:
            raise LibraryError("metadata missing") from exc

    app = typer.Typer()
    app.command("fail")(raise_wrapped)
    app.command("other")(lambda: None)
    assert run(["fail"], app=app) == 2
    err = capfd.readouterr().err
    assert "/data/x.zarr/zarr.json" in err and "LibraryError" in err and "Traceback" not in err


def test_an_os_error_without_a_path_still_reads_as_one_line():
    message = describe_os_error(OSError(28, "No space left on device"))
    assert message == "No space left on device (the disk is full: free some space or choose another disk)."


def test_usage_errors_stay_typers(capfd):
    assert run(["no-such-command"]) == 2
    assert "No such command" in capfd.readouterr().err


# --- helpers ----------------------------------------------------------------------------------------


def _tiny_checkpoint(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    from tether.policies.act import ACTConfig, ACTModel
    from tether.policies.checkpoint import save_checkpoint
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import make_spec

    torch.manual_seed(0)
    model = ACTModel(ACTConfig(
        state_dim=6, action_dim=6, cameras=["image.top"], vision_width=8, image_size=[24, 32],
        chunk_size=10, dim=32, n_heads=2, ff_dim=64, enc_layers=1, dec_layers=1,
        vae_enc_layers=1, latent_dim=4,
    ))
    stats = {k: {"min": -np.ones(6), "max": np.ones(6), "mean": np.zeros(6), "std": np.ones(6)}
             for k in ("state", "action")}
    norm = Normalizer.from_stats(stats, {"state": "mean_std", "action": "mean_std"})
    spec = make_spec("act", 6, {"image.top": [240, 320, 3]}, 6, 10, 50.0, norm)
    return save_checkpoint(path, model=model, normalizer=norm, policy_type="act", spec=spec, step=0)


def _tiny_store(path: Path) -> Path:
    from tether.data.store import EpisodeStore

    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, fps=10) as store:
        for _ in range(2):
            store.add_episode({
                "state": rng.normal(size=(8, 6)).astype(np.float32),
                "action": rng.normal(size=(8, 6)).astype(np.float32),
                "image.top": rng.integers(0, 255, (8, 24, 32, 3), dtype=np.uint8),
            })
    return path
