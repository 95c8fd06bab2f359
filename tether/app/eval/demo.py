"""`tether demo`: the whole stack end to end on the twin, as a newcomer's first run.

1. collect scripted demonstrations of `lift` through the recorder into a Zarr store;
2. train an ACT policy on them (a CPU preset that learns within the time budget);
3. serve the checkpoint over ZMQ on 127.0.0.1 (the same server used next to a robot);
4. evaluate it on held-out seeds through the rollout client, in worker processes;
5. print a summary table and write demo_summary.json next to the report.

Every stage uses the public APIs the individual commands use (`tether record`, `tether train`,
`tether serve`, `tether eval`), so the demo is also their integration test.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tether.core.errors import TetherError
from tether.robot.twin.render import configure_backend

if TYPE_CHECKING:
    from tether.app.eval.config import EvalConfig


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    task: str = "lift"
    demos: int = 100
    # 10 Hz: each action is a real move and an episode is ~46 decisions, so a small policy
    # compounds fewer errors; the expert succeeds 100% at this rate as at 50 Hz.
    fps: float = 10.0
    # Joint speed limit of the twin while recording and evaluating, rad/s (the gripper in its
    # 0..1 unit per second): 0.05 per tick at 10 Hz, the speed this recipe was tuned at. The
    # twin's own default (3 rad/s) lets the expert run at its plan's peaks (~1.2 rad/s, the
    # gripper shut in 0.6 s): demos become ~35 instead of ~46 decisions with 5x larger steps per
    # action, and the same ACT recipe then lifts in ~50% of episodes instead of ~90%.
    # A list gives one limit per joint (every arm alike), e.g. a gripper faster than the joints.
    max_velocity: float | list[float] | None = 0.5
    # Scale of the task's random object yaw (twin_params.yaw_randomization): 1 the full range,
    # 0 positions only (the ACT paper's sim tasks fix the object's orientation).
    yaw_randomization: float = 1.0
    preset: str = "cpu"
    train_steps: int | None = 2200  # fits the 10-minute budget on 2 cores (the preset says 5000)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 30
    # Camera size for recording and evaluation: the cpu preset looks at 60x80, so recording at
    # 120x160 keeps JPEG decoding cheap in training while the report's videos stay legible.
    camera_height: int = 120
    camera_width: int = 160
    cameras: list[str] | None = None  # twin camera names (default: the task's, e.g. ["top"])
    workers: int = 2
    videos: int = 2
    seed: int = 0  # demonstrations use seeds seed.. ; evaluation uses 100000.. (held out)

    def speed_overrides(self) -> list[str]:
        """The twin's speed limit, for the recording and the evaluation twin alike: a policy is
        evaluated at the speed its demonstrations were executed at, which is what it learned
        one action to mean."""
        if self.max_velocity is None:
            return []
        if isinstance(self.max_velocity, (list, tuple)):
            return [f"safety.max_velocity=[{','.join(f'{v:g}' for v in self.max_velocity)}]"]
        return [f"safety.max_velocity={self.max_velocity:g}"]

    def task_overrides(self) -> list[str]:
        """What the recording and the evaluation twin must share besides rate and cameras (which
        come from the policy's spec): the speed limit and the object yaw distribution."""
        yaw = [] if self.yaw_randomization == 1.0 else [
            f"twin_params.yaw_randomization={self.yaw_randomization:g}"]
        return [*self.speed_overrides(), *yaw]

    def record_overrides(self) -> list[str]:
        """Robot config overrides of the twin the demonstrations are recorded on."""
        from tether.robot.config import twin_camera_overrides

        size = [f"twin_params.height={self.camera_height}", f"twin_params.width={self.camera_width}"]
        if self.cameras is not None:
            size = twin_camera_overrides(self.cameras, self.camera_width, self.camera_height)
        return [f"fps={self.fps:g}", *size, *self.task_overrides()]

    def eval_config(self, server: str) -> EvalConfig:
        """The evaluation of the served policy: held-out seeds (100000..), on a twin at the
        recording's speed (rate and cameras come from the policy's spec)."""
        from tether.app.eval.config import EvalConfig

        return EvalConfig(task=self.task, episodes=self.eval_episodes, workers=self.workers,
                          seed=100_000, server=server, out=str(Path(self.out) / "report"),
                          videos=self.videos, robot=self.task_overrides())

    @classmethod
    def quick(cls, out: str | Path = "runs/demo-quick", workers: int = 2) -> DemoConfig:
        """A shortened run that exercises every stage in a minute or two (for tests)."""
        return cls(out=str(out), demos=4, preset="tiny", train_steps=60, eval_episodes=4,
                   workers=workers, videos=1)


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    configure_backend()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.monotonic()

    console.rule(f"[bold]1/4 collect {config.demos} scripted demonstrations of '{config.task}'")
    t0 = time.monotonic()
    dataset = out / "data.zarr"
    demo_stats = collect(config, dataset, console)
    timings["collect_s"] = time.monotonic() - t0

    console.rule("[bold]2/4 train ACT")
    t0 = time.monotonic()
    run_dir = _train(config, dataset, out / "run")
    timings["train_s"] = time.monotonic() - t0

    console.rule("[bold]3/4 serve the policy over ZMQ on 127.0.0.1")
    from tether.policies.checkpoint import load_policy
    from tether.policies.server import PolicyServer, ServerConfig

    policy = load_policy(run_dir)
    with PolicyServer(policy, ServerConfig(address="tcp://127.0.0.1:0")) as server:
        console.print(f"serving {policy.spec.policy_type} (chunk {policy.spec.chunk_size}) at {server.endpoint}")
        console.rule(f"[bold]4/4 evaluate on {config.eval_episodes} held-out seeds through the rollout client")
        t0 = time.monotonic()
        from tether.app.eval.runner import evaluate

        summary = evaluate(config.eval_config(server.endpoint))
        timings["eval_s"] = time.monotonic() - t0
        transport = _measure_transport(server.endpoint, policy.spec, config.task)
    timings["total_s"] = time.monotonic() - t_start

    inference = summary["inference_ms"]
    latency = summary["action_latency_ms"]
    result = {
        "task": config.task,
        "demos": demo_stats["saved"],
        "demo_success_rate": demo_stats["success_rate"],
        "train_time_s": round(timings["train_s"], 1),
        "success_rate": summary["success_rate"],
        "success_ci95": summary["success_ci95"],
        "eval_episodes": summary["episodes"],
        "inference_ms": {"p50": inference["p50"], "p99": inference["p99"]},
        "action_latency_ms": {"p50": latency["p50"], "p99": latency["p99"]},
        "transport_overhead_ms": transport,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "report": str(out / "report" / "report.html"),
        "run": str(run_dir),
        "dataset": str(dataset),
        "config": asdict(config),
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    _print_table(console, result)
    return result


def collect(config: DemoConfig, dataset: Path, console: Console) -> dict[str, Any]:
    """Record `config.demos` scripted episodes into `dataset` through the recorder (stage 1)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tether.data.store import EpisodeStore
    from tether.robot.factory import make_robot
    from tether.teleop.factory import make_teleop
    from tether.teleop.recorder import Recorder

    if dataset.exists():
        shutil.rmtree(dataset)
    robot = make_robot(f"twin:{config.task}", config.record_overrides())
    with robot:
        store = EpisodeStore.create(dataset, fps=robot.fps)
        teleop = make_teleop("scripted", robot, {"noise": 0.0})
        recorder = Recorder(robot, teleop, store, realtime=False, task=f"{config.task} (scripted)",
                            operator="tether demo")
        successes = []
        with Progress(TextColumn("[bold]demos"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("demos", total=config.demos, note="")

            def on_episode(result) -> None:
                successes.append(bool(getattr(result, "success", False)))
                progress.update(bar, advance=1, note=f"success {sum(successes)}/{len(successes)}")

            recorder.run(config.demos, seed=config.seed, on_episode=on_episode)
        store.close()
    if not any(successes):
        raise TetherError("The scripted expert succeeded in no demonstration; the twin task is broken.")
    return {"saved": len(successes), "success_rate": sum(successes) / len(successes)}


def _train(config: DemoConfig, dataset: Path, run_dir: Path) -> Path:
    from tether.policies.trainer import TrainConfig, train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    train_config = TrainConfig(dataset=str(dataset), policy="act", preset=config.preset,
                               out=str(run_dir), steps=config.train_steps, **config.train_overrides)
    return Path(train(train_config))


def _measure_transport(endpoint: str, spec, task: str, requests: int = 100) -> dict[str, float]:
    """Round trip minus the server's own time, for this policy's real observation payload."""
    import numpy as np

    from tether.app.eval.worker import twin_overrides_for
    from tether.policies.client import PolicyClient
    from tether.robot.factory import make_robot

    robot = make_robot(f"twin:{task}", twin_overrides_for(spec))
    with robot:
        arrays = robot.reset(0).to_arrays()
    observation = {a.name: arrays[a.name] for a in spec.observation}
    with PolicyClient(endpoint) as client:
        overheads = [client.infer(observation).overhead_ms for _ in range(requests)]
    return {"p50": float(np.percentile(overheads, 50)), "p99": float(np.percentile(overheads, 99))}


def _print_table(console: Console, result: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    low, high = result["success_ci95"]
    table = Table(title=f"tether demo: {result['task']}", show_header=False)
    table.add_row("demonstrations", f"{result['demos']} (expert success {result['demo_success_rate']:.0%})")
    table.add_row("training time", f"{result['train_time_s']:.0f} s")
    table.add_row("success rate", f"{result['success_rate']:.0%} of {result['eval_episodes']} held-out "
                                  f"episodes (95% CI {low:.0%}-{high:.0%})")
    table.add_row("inference p50 / p99", f"{ms(result['inference_ms']['p50'])} / {ms(result['inference_ms']['p99'])}")
    table.add_row("transport overhead p50 / p99", f"{ms(result['transport_overhead_ms']['p50'])} / "
                                                  f"{ms(result['transport_overhead_ms']['p99'])}")
    table.add_row("total time", f"{result['timings_s']['total_s']:.0f} s")
    table.add_row("report", result["report"])
    console.print(table)
