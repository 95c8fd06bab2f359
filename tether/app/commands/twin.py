"""`tether twin view` and `tether twin check` (wired into `tether` by tether/cli.py).

MuJoCo is imported inside the commands so `tether --help` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console

from tether.core.errors import TetherError

TASK_HELP = "Twin task: lift, insertion or transfer_cube."


def register(app: typer.Typer) -> None:
    """Add the `twin` command group to the `tether` app."""
    twin = typer.Typer(
        name="twin",
        help="The MuJoCo digital twin: render its cameras, check its scripted experts.\n\n"
        "Example: tether twin check --task lift --episodes 10 --json",
        no_args_is_help=True,
    )
    twin.command("view")(view)
    twin.command("check")(check)
    app.add_typer(twin, name="twin")


def view(
    task: str = typer.Option("lift", "--task", "-t", help=TASK_HELP),
    out: Path = typer.Option(Path("twin_view"), "--out", "-o", help="Folder for the PNG files."),
    cameras: str = typer.Option("", help="Comma-separated camera names (default: all of the task's)."),
    width: int = typer.Option(320, help="Image width in pixels (max 640)."),
    height: int = typer.Option(240, help="Image height in pixels (max 480)."),
    seed: int = typer.Option(0, help="Episode seed (object placement)."),
    steps: int = typer.Option(0, help="Run the scripted expert this many ticks before capturing."),
    depth: bool = typer.Option(False, help="Also write a depth PNG (16-bit, millimetres)."),
    xml: bool = typer.Option(False, help="Also write the scene's MJCF as scene.xml."),
    interactive: bool = typer.Option(
        False, help="Open MuJoCo's interactive viewer instead (needs a display)."
    ),
) -> None:
    """Render every camera of a twin task to one PNG per camera.

    Example: tether twin view --task transfer_cube --out /tmp/view --cameras top,left_wrist
    """
    console = Console(stderr=True)
    from tether.robot.config import RobotConfig
    from tether.robot.twin.expert import ScriptedExpert
    from tether.robot.twin.robot import make_twin_robot
    from tether.robot.twin.tasks import make_task

    names = [c for c in cameras.split(",") if c] or list(make_task(task).cameras)
    if interactive:
        _interactive(task, seed)
        return
    config = RobotConfig(
        twin_task=task,
        fps=50.0,
        twin_params={"cameras": names, "width": width, "height": height, "depth": depth,
                     "seed": seed},
    )
    robot = make_twin_robot(config)
    with robot:
        if steps > 0:
            expert = ScriptedExpert(robot)
            expert.reset(seed)
            for _ in range(steps):
                robot.act(expert.next_target(None))
        written = _write_pngs(robot.observe(), out)
        if xml:
            (out / "scene.xml").write_text(robot.sim.xml)
            written.append(out / "scene.xml")
    for path in written:
        console.print(f"wrote {path}")


def check(
    task: str = typer.Option("lift", "--task", "-t", help=TASK_HELP),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes to run."),
    seed: int = typer.Option(0, help="Seed of the first episode; episode i uses seed + i."),
    noise: float = typer.Option(0.0, help="Expert noise (0 = none, 1 = a lot)."),
    fps: float = typer.Option(50.0, help="Control rate in Hz."),
    cameras: str = typer.Option(
        "", help="Render these cameras during the episodes (default: none, physics only)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Run the scripted expert for N seeded episodes and report success rate and speed.

    Example: tether twin check --task transfer_cube --episodes 20 --json
    """
    from tether.robot.twin.check import run_check

    result = run_check(
        task, episodes, seed=seed, noise=noise, fps=fps,
        cameras=[c for c in cameras.split(",") if c],
    )
    if as_json:
        print(json.dumps(result))
        return
    out = Console()
    out.print(
        f"[bold]{task}[/bold]: {result['successes']}/{result['episodes']} successful "
        f"({result['success_rate']:.0%}); {result['sim_steps_per_s']:.0f} physics steps/s, "
        f"render {result['render_fps']:.0f} frames/s"
    )
    if result["failed_seeds"]:
        out.print(f"failed seeds: {result['failed_seeds']}")


def _write_pngs(observation, out: Path) -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in observation.frames.items():
        path = out / f"{name}.png"
        Image.fromarray(frame.image).save(path)
        written.append(path)
        if frame.depth is not None:
            dpath = out / f"{name}_depth.png"
            Image.fromarray(frame.depth).save(dpath)
            written.append(dpath)
    return written


def _interactive(task: str, seed: int) -> None:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise TetherError(
            "No display found (DISPLAY is unset), so the interactive viewer cannot open; "
            "use `tether twin view --out DIR` to write PNGs instead."
        )
    from tether.robot.twin.render import configure_backend

    configure_backend(require="glfw")  # the viewer opens a window
    import mujoco.viewer

    from tether.robot.config import RobotConfig
    from tether.robot.twin.robot import make_twin_robot

    robot = make_twin_robot(RobotConfig(twin_task=task, twin_params={"cameras": [], "seed": seed}))
    mujoco.viewer.launch(robot.sim.model, robot.sim.data)
