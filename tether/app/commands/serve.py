"""`tether serve` and `tether keys generate` (registered by policies/cli.py via _register_serve)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

SIMPLE_PREFIX = "simple:"


def _register_serve(app: typer.Typer) -> None:
    """Add `serve` and the `keys` group to the `tether` app."""
    app.command("serve")(serve)
    keys_app = typer.Typer(
        help="CURVE keys for serving a policy beyond localhost.\n\n"
        "Example: tether keys generate ~/.tether/keys",
        no_args_is_help=True,
    )
    keys_app.command("generate")(keys_generate)
    app.add_typer(keys_app, name="keys")


def serve(
    policy: str = typer.Argument(
        ..., help="A checkpoint/run directory, or simple:identity|hold|waypoint (needs --robot)."
    ),
    bind: str = typer.Option(
        "tcp://127.0.0.1:5555", "--bind", "-b", help="ZMQ endpoint to listen on."
    ),
    keys: Path | None = typer.Option(
        None, "--keys", help="Directory from `tether keys generate` (CURVE)."
    ),
    robot: str | None = typer.Option(
        None, "--robot", help="Robot whose observations a simple: policy takes."
    ),
    chunk_size: int = typer.Option(50, "--chunk-size", help="Chunk length of a simple: policy."),
    delay_ms: float = typer.Option(
        0.0, "--delay-ms", help="Extra inference delay (latency injection)."
    ),
    max_message_mb: float = typer.Option(
        16.0, "--max-message-mb", help="Largest request accepted."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device for checkpoints."),
    sampler: str | None = typer.Option(
        None, "--sampler", help="Diffusion: default sampler, ddim | dpmpp | streaming "
        "(a request's own 'sampler' wins)."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Diffusion: default denoising steps (a request's own wins)."
    ),
    stream_lookahead: int | None = typer.Option(
        None, "--stream-lookahead", min=0, help="Diffusion, streaming sampler: default count of "
        "next-action estimates appended to each reply (a request's own 'lookahead' wins)."
    ),
    engine: str = typer.Option(
        "auto", "--engine", help="Inference engine for checkpoints: auto | eager | compile | "
        "onnx | openvino (auto: the fastest installed; a failure falls back to eager, logged)."
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto | fp32 | bf16. auto: bf16 for graphs of 20 M+ "
        "parameters on CPUs with native bf16 (twin success measured unchanged), else fp32; "
        "fp32 gives eager's outputs to 1e-4 (docs/policies.md, Inference engines)."
    ),
    engine_cache: bool = typer.Option(
        True, "--engine-cache/--no-engine-cache",
        help="Keep exported engine files in <checkpoint>/engines/ for the next start.",
    ),
) -> None:
    """Serve a policy to robots over ZMQ (msgpack + raw frames, validated, never pickle).

    Example: tether serve runs/act_lift --bind tcp://127.0.0.1:5555
    Example: tether serve simple:hold --robot twin:lift --delay-ms 20
    Example: tether serve runs/dp_lift --sampler dpmpp --steps 5
    Example: tether serve runs/dp_lift --engine openvino --precision bf16
    """
    from tether.policies.server import PolicyServer, ServerConfig, is_local_address

    loaded = load_served_policy(policy, robot, chunk_size, delay_ms / 1e3, device, sampler, steps,
                                engine, precision, engine_cache, stream_lookahead)
    config = ServerConfig(
        address=bind, keys_dir=keys, max_message_bytes=int(max_message_mb * 1024 * 1024)
    )
    if keys is None and not is_local_address(bind):  # (the server also logs it)
        console.print(
            f"[yellow]warning:[/yellow] {bind} is reachable beyond this machine and no --keys "
            "were given; anyone on the network can query this policy."
        )
    server = PolicyServer(loaded, config).start()
    try:
        _announce(loaded.spec, server.endpoint, keys, getattr(loaded, "engine", None))
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C before serve_forever took over: still a clean stop
        server.stop()


def _announce(spec, endpoint: str, keys: Path | None, engine=None) -> None:
    console.print(
        f"serving [bold]{spec.policy_type}[/bold] on {endpoint}: "
        f"{', '.join(f'{a.name} {a.dtype}{list(a.shape)}' for a in spec.observation)} -> "
        f"{spec.chunk_size}x{spec.action_dim} @ {spec.fps:g} Hz"
        f"{f', engine {engine}' if engine is not None else ''}"
        f"{' (CURVE)' if keys else ''}. Ctrl-C stops."
    )


def load_served_policy(
    policy: str, robot: str | None, chunk_size: int, delay_s: float, device: str,
    sampler: str | None = None, steps: int | None = None, engine: str = "auto",
    precision: str = "auto", engine_cache: bool = True, lookahead: int | None = None,
):
    """A checkpoint (run by `engine`, see tether.policies.engines), or a simple policy built
    for `robot`, optionally slowed by `delay_s`; `sampler` / `steps` / `lookahead` set a
    diffusion checkpoint's defaults."""
    from tether.core.errors import ConfigError
    from tether.policies.simple import SlowPolicy, make_simple_policy

    sampling = sampler is not None or steps is not None or lookahead is not None
    if policy.startswith(SIMPLE_PREFIX):
        if sampling:
            raise ConfigError("--sampler/--steps/--stream-lookahead apply to diffusion checkpoints, "
                              "not simple: policies")
        if engine != "auto" or precision != "auto":
            raise ConfigError("--engine/--precision apply to checkpoints, not simple: policies")
        if robot is None:
            raise ConfigError(
                f"'{policy}' needs --robot (for example --robot twin:lift) to know its inputs"
            )
        from tether.robot.factory import make_robot

        return make_simple_policy(
            policy[len(SIMPLE_PREFIX) :], make_robot(robot), chunk_size, delay_s
        )
    path = Path(policy)
    if not path.exists():
        raise ConfigError(
            f"policy '{policy}' is neither a checkpoint path nor simple:<name>; check the path"
        )
    from tether.policies.engines import load_engine_policy

    loaded = load_engine_policy(path, engine, precision, device=device, cache=engine_cache)
    if sampling:
        set_sampling = getattr(loaded, "set_sampling", None)
        if set_sampling is None:
            raise ConfigError(f"--sampler/--steps/--stream-lookahead apply to diffusion checkpoints; "
                              f"{policy} is a {loaded.spec.policy_type} policy: drop them")
        set_sampling(sampler, steps, lookahead)
    return SlowPolicy(loaded, delay_s) if delay_s > 0 else loaded


def keys_generate(
    directory: Path = typer.Argument(..., help="Where to write the key files."),
    client: str = typer.Option("client", "--client", help="Name of the client key pair to add."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing keys."),
) -> None:
    """Create CURVE keys: a server pair and an authorized client pair.

    Example: tether keys generate ~/.tether/keys   (then: tether serve CKPT --keys ~/.tether/keys)
    """
    from tether.policies.keys import generate_keys

    paths = generate_keys(directory, client, overwrite)
    console.print(f"server keys: {paths['server_public']} (+ secret, stays on the server)")
    console.print(f"client keys: {paths['client_secret']} (copy to the robot with server.key)")
    console.print(f"authorized clients: {paths['authorized']}/")
