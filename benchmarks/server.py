"""Inference server benchmark: transport overhead, multi-client throughput, ACT end to end.

Prints one JSON object. Payload as in issue 7: two 224x224x3 uint8 images + 14 float32 in,
a 100x14 float32 chunk out.

- transport: an identity policy served by PolicyServer, one client sending requests back to
  back over tcp loopback and ipc. `overhead_ms` is the round trip minus the server's own time
  between receiving and replying (what the protocol, validation, threads and sockets cost);
  `round_trip_ms` is the whole request. Baseline in the same run: a bare ZMQ DEALER/ROUTER
  echo of the same frames (no validation, no worker thread), to quote our cost against.
- throughput: 4 clients in threads, each sending requests back to back for a fixed time.
- act: ACT (ResNet-18, dim 512, chunk 100, one 240x320 camera, random weights) in-process
  versus through the server; the difference is the serving cost.

Usage: python benchmarks/server.py [--requests 2000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import numpy as np
import zmq

from tether.core.schema import ArraySpec
from tether.policies import protocol
from tether.policies.client import PolicyClient
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy

OBS_SPEC = (
    ArraySpec("state", "float32", (14,)),
    ArraySpec("image.left", "uint8", (224, 224, 3)),
    ArraySpec("image.right", "uint8", (224, 224, 3)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="fewer requests, skip ACT")
    parser.add_argument("--act-repeats", type=int, default=30)
    args = parser.parse_args()
    n = 300 if args.quick else args.requests
    out: dict = {
        "payload": "2x224x224x3 uint8 + 14 float32 -> 100x14 float32",
        "requests": n,
        "cpus": os.cpu_count(),
        "load_average_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        endpoints = {"tcp": "tcp://127.0.0.1:0", "ipc": f"ipc://{tmp}/bench.sock"}
        out["transport"] = {name: bench_transport(ep, n) for name, ep in endpoints.items()}
        out["bare_zmq_baseline"] = {
            "tcp": bench_bare_zmq("tcp://127.0.0.1:0", n),
            "ipc": bench_bare_zmq(f"ipc://{tmp}/bare.sock", n),
        }
        for name in ("tcp", "ipc"):
            ours = out["transport"][name]["overhead_ms"]
            bare = out["bare_zmq_baseline"][name]["round_trip_ms"]
            out["transport"][name]["overhead_vs_bare_zmq_p50"] = round(ours["p50"] / bare["p50"], 2)
        out["throughput_4_clients"] = bench_throughput(endpoints["tcp"], clients=4, seconds=3.0)
        out["throughput_1_client"] = bench_throughput(endpoints["tcp"], clients=1, seconds=2.0)
    if not args.quick:
        out["act_240x320"] = bench_act(args.act_repeats)
        out["rollout_twin_lift_50hz"] = bench_rollout()
    out["goal_overhead_p99_below_1ms"] = all(
        v["overhead_ms"]["p99"] < 1.0 for v in out["transport"].values()
    )
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))


def make_observation() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "state": rng.normal(size=14).astype(np.float32),
        "image.left": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "image.right": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    }


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 4),
        "p99": round(float(np.percentile(a, 99)), 4),
        "max": round(float(a.max()), 4),
    }


def bench_transport(address: str, n: int) -> dict:
    policy = IdentityPolicy(OBS_SPEC, action_dim=14, chunk_size=100, fps=50)
    obs = make_observation()
    with PolicyServer(policy, ServerConfig(address)) as server:
        with PolicyClient(server.endpoint, timeout_s=5.0) as client:
            client.info()
            for _ in range(50):
                client.infer(obs)
            overhead, rtt, queue, server_ms = [], [], [], []
            for _ in range(n):
                reply = client.infer(obs)
                overhead.append(reply.overhead_ms)
                rtt.append(reply.round_trip_ms)
                queue.append(reply.queue_ms)
                server_ms.append((reply.t_server_reply - reply.t_server_recv) * 1e3)
            assert reply.actions.shape == (100, 14)
    return {
        "overhead_ms": pct(overhead),
        "round_trip_ms": pct(rtt),
        "server_time_ms": pct(server_ms),
        "queue_ms": pct(queue),
    }


def bench_bare_zmq(address: str, n: int) -> dict:
    """Same frames through a bare DEALER/ROUTER echo: the floor any ZMQ design pays."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(address)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    action = np.zeros((100, 14), np.float32)
    reply = protocol.InferReply(0, action, t_recv=0.0, t_reply=0.0).encode()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                frames = router.recv_multipart(copy=False)
                router.send_multipart([frames[0], *reply], copy=False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    frames = protocol.InferRequest(1, make_observation()).encode()
    times = []
    for i in range(n + 50):
        t0 = time.monotonic()
        dealer.send_multipart(frames, copy=False)
        dealer.recv_multipart(copy=False)
        if i >= 50:
            times.append((time.monotonic() - t0) * 1e3)
    stop.set()
    thread.join()
    dealer.close(linger=0)
    router.close(linger=0)
    context.term()
    return {"round_trip_ms": pct(times)}


def bench_throughput(address: str, clients: int, seconds: float) -> dict:
    policy = IdentityPolicy(OBS_SPEC, action_dim=14, chunk_size=100, fps=50)
    obs = make_observation()
    counts = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    with PolicyServer(policy, ServerConfig(address)) as server:
        barrier = threading.Barrier(clients + 1)

        def run(i: int) -> None:
            with PolicyClient(server.endpoint, timeout_s=5.0) as client:
                client.info()
                client.infer(obs)
                barrier.wait()
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    latencies[i].append(client.infer(obs).round_trip_ms)
                    counts[i] += 1

        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    flat = [x for lat in latencies for x in lat]
    return {
        "clients": clients,
        "requests_per_s": round(sum(counts) / elapsed, 1),
        "per_client_requests": counts,
        "fairness_min_over_max": round(min(counts) / max(counts), 3),
        "round_trip_ms": pct(flat),
        "server_inferences": server.stats.inferences,
    }


def bench_act(repeats: int) -> dict:
    import torch

    from tether.policies.act import ACTConfig, ACTModel
    from tether.policies.normalizer import Normalizer
    from tether.policies.torch_policy import ACTPolicy, make_spec
    from tether.policies.vision import fuse_batchnorm

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = ACTConfig(
        state_dim=14,
        action_dim=14,
        cameras=["image.top"],
        chunk_size=100,
        vision_norm="frozen_batch",
    )
    model = ACTModel(cfg).eval()
    fuse_batchnorm(model.vision.backbone)
    stats = {
        k: {"min": -np.ones(14), "max": np.ones(14), "mean": np.zeros(14), "std": np.ones(14)}
        for k in ("state", "action")
    }
    norm = Normalizer.from_stats(stats, {"state": "mean_std", "action": "mean_std"})
    spec = make_spec("act", 14, {"image.top": [240, 320, 3]}, 14, 100, 50.0, norm)
    policy = ACTPolicy(model, norm, spec)
    rng = np.random.default_rng(0)
    obs = {
        "state": rng.normal(size=14).astype(np.float32),
        "image.top": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
    }
    local, served, infer, overhead = [], [], [], []
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=30.0) as client:
            client.info()
            for _ in range(3):
                policy.predict_chunk(obs)
                client.infer(obs)
            # Interleaved, so load from other processes hits both columns alike.
            for _ in range(repeats):
                t0 = time.monotonic()
                policy.predict_chunk(obs)
                local.append((time.monotonic() - t0) * 1e3)
                reply = client.infer(obs)
                served.append(reply.round_trip_ms)
                infer.append(reply.infer_ms)
                overhead.append(reply.overhead_ms)
    return {
        "model": "ACT ResNet-18 dim 512, chunk 100, 1 camera 240x320, random weights, 2 threads",
        "in_process_ms": pct(local),
        "through_server_round_trip_ms": pct(served),
        "server_inference_ms": pct(infer),
        "transport_overhead_ms": pct(overhead),
        "serving_cost_p50_ms": round(float(np.median(np.subtract(served, local))), 3),
    }


def bench_rollout() -> dict:
    """200 real-time ticks of the twin at 50 Hz through the server (waypoint policy)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from tether.app.rollout import RolloutConfig, run_episode
    from tether.policies.simple import WaypointPolicy, observation_specs_for
    from tether.robot.factory import make_robot

    robot = make_robot("twin:lift", ["fps=50"])
    policy = WaypointPolicy(observation_specs_for(robot), robot.home + 0.2, chunk_size=50, fps=50)
    out = {}
    with robot, PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            for blend in ("ensemble", "switch"):
                result = run_episode(
                    robot, client, RolloutConfig(max_steps=200, blend=blend), seed=0
                )
                summary = result.summary()
                out[blend] = {
                    k: summary[k]
                    for k in ("length", "chunks", "latency_p50_ms", "latency_p99_ms",
                              "dropped_actions", "stalls", "held_ticks")
                }  # fmt: skip
                out[blend]["loop"] = {
                    k: summary["loop"][k]
                    for k in (
                        "achieved_hz",
                        "jitter_p50_ms",
                        "jitter_p99_ms",
                        "overruns",
                        "step_p50_ms",
                    )
                }
    return out


if __name__ == "__main__":
    main()
