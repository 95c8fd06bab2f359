"""Checkpoints: safetensors weights + JSON config + normalizer, loadable with no training code.

A checkpoint directory holds:

    policy.json              format marker, policy type, model config, PolicySpec, step
    model.safetensors        raw weights
    ema.safetensors          EMA weights (evaluation and export use these by default)
    normalizer.safetensors   normalizer statistics (modes in its metadata)
    train_state.safetensors  optimizer tensors and RNG states  } only in resumable
    train_state.json         step, sampler position, param groups } checkpoints

A run directory (what `tether train --out` makes) keeps `checkpoints/last` and, when periodic
evaluation runs, `checkpoints/best`. `load_policy` accepts either kind of directory. Nothing is
pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import torch
    from torch import nn
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.config import to_dict
from tether.core.errors import PolicyError
from tether.core.schema import PolicySpec
from tether.policies.base import Policy
from tether.policies.normalizer import Normalizer
from tether.policies.registry import get_family

__all__ = ["FORMAT", "build_model", "find_checkpoint", "load_policy", "optimize_for_inference",
           "read_policy_json", "read_tensors", "save_checkpoint"]

FORMAT = "tether-policy"
FORMAT_VERSION = 1


def build_model(policy_type: str, model_config: dict[str, Any], *, load_pretrained: bool = True,
                source: Path | None = None) -> nn.Module:
    """The model of the registered family `policy_type` built from a plain config dict (strictly
    checked). With `source` (the policy.json it came from), an unknown type or a bad config is a
    PolicyError naming that file. See `PolicyFamily.build` for `load_pretrained`."""
    return get_family(policy_type, source).build(model_config, load_pretrained=load_pretrained,
                                                 source=source)


def save_checkpoint(directory: str | Path, *, model: nn.Module, normalizer: Normalizer,
                    policy_type: str, spec: PolicySpec, step: int,
                    ema_model: nn.Module | None = None,
                    train_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint atomically (to `<name>.tmp`, fsync, then rename): a crash or a full disk
    never leaves half of one, and the previous checkpoint of that name stays intact until the new
    one is complete. A failed write (disk full, read-only) raises PolicyError and removes the
    temporary directory."""
    from safetensors.torch import save as to_safetensors

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy_type": policy_type,
        "model_config": to_dict(model.config),
        "spec": spec.as_dict(),
        "step": int(step),
        "has_ema": ema_model is not None,
    }
    files: dict[str, Callable[[], bytes]] = {
        "policy.json": lambda: (json.dumps(meta, indent=2) + "\n").encode(),
        "model.safetensors": lambda: to_safetensors(_state_tensors(model)),
        # Same layout as Normalizer.save (tensors + modes metadata), written through _write_file.
        "normalizer.safetensors": lambda: to_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in normalizer.tensors().items()},
            metadata={"modes": json.dumps(normalizer.modes)}),
    }
    if ema_model is not None:
        files["ema.safetensors"] = lambda: to_safetensors(_state_tensors(ema_model))
    if train_state is not None:
        tensors, info = train_state
        files["train_state.safetensors"] = lambda: to_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        files["train_state.json"] = lambda: (json.dumps(info, indent=2) + "\n").encode()
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, payload in files.items():
            _write_file(tmp / name, payload())
        _fsync_dir(tmp)
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old.exists():
            shutil.rmtree(old)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not directory.exists() and _has_old(directory):
            with contextlib.suppress(OSError):  # put the previous checkpoint back
                os.replace(directory.with_name(directory.name + ".old"), directory)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = ("free disk space" if exc.errno == errno.ENOSPC else
                "make the run directory writable" if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
                else "check the run directory")
        kept = " (the previous one is intact)" if directory.exists() else ""
        raise PolicyError(f"could not write checkpoint {directory}{kept}: {reason}; {hint}") from exc
    return directory


def _has_old(directory: Path) -> bool:
    """True if a `<name>.old` checkpoint (the previous one, mid-swap) is present."""
    return directory.with_name(directory.name + ".old").is_dir()


def find_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """Resolve a run dir or checkpoint dir to the checkpoint directory to load."""
    path = Path(path)
    if (path / "policy.json").is_file():
        return path
    order = [prefer, "last"] if prefer != "last" else ["last"]
    for name in order:
        candidate = path / "checkpoints" / name
        if (candidate / "policy.json").is_file():
            return candidate
        if not candidate.exists() and _has_old(candidate):
            # A crash between the two renames of save_checkpoint: the previous one is complete.
            return candidate.with_name(name + ".old")
    if not path.exists():
        raise PolicyError(f"checkpoint path {path} does not exist; check the path (a run directory "
                          "made by `tether train`, or one of its checkpoints/ subdirectories)")
    if path.is_file():
        raise PolicyError(f"{path} is a file; give the checkpoint directory that holds it "
                          f"({path.parent}) or the run directory")
    raise PolicyError(
        f"{path} holds no checkpoint (no policy.json, no checkpoints/last); give a run directory "
        "made by `tether train` or one of its checkpoints/ subdirectories"
    )


def read_policy_json(ckpt: Path) -> dict[str, Any]:
    """policy.json of checkpoint `ckpt`, checked; every problem is a PolicyError naming the file."""
    path = ckpt / "policy.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PolicyError(f"{path} is missing; {ckpt} is not a complete checkpoint. Copy the whole "
                          "checkpoint directory or give the run directory") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{path} is corrupt or truncated ({exc}); re-copy the checkpoint or load "
                          "another one (the run's checkpoints/last or checkpoints/best)") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PolicyError(f"{path} is not a tether policy checkpoint (no \"format\": \"{FORMAT}\"); "
                          "give a directory made by `tether train`")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{path} has an invalid format_version {meta.get('format_version')!r}; "
                          "the checkpoint is corrupt") from exc
    if version > FORMAT_VERSION:
        raise PolicyError(
            f"checkpoint format version {version} in {path} is newer than this tether "
            f"({FORMAT_VERSION}); upgrade tether to load it"
        )
    for key, kind in (("policy_type", str), ("model_config", dict), ("spec", dict)):
        if not isinstance(meta.get(key), kind):
            raise PolicyError(f"{path} has no valid '{key}'; the checkpoint is corrupt or was edited "
                              "by hand. Load another checkpoint or re-export this one")
    return meta


def load_policy(path: str | Path, device: str = "cpu", use_ema: bool = True) -> Policy:
    """Load a policy for inference from a run or checkpoint directory (no training code runs).

    The policy type picks the family in `tether.policies.registry` (an unknown one is a
    PolicyError listing the known types). Only files inside the checkpoint are read: a
    `pretrained_backbone` path in policy.json is never followed. Every missing or corrupt file
    raises PolicyError naming it and the fix.
    """
    ckpt = find_checkpoint(path)
    meta = read_policy_json(ckpt)
    family = get_family(meta["policy_type"], ckpt / "policy.json")
    model = family.build(meta["model_config"], load_pretrained=False, source=ckpt / "policy.json")
    weights = ckpt / ("ema.safetensors" if use_ema and meta.get("has_ema") else "model.safetensors")
    _load_state(model, read_tensors(weights), weights)
    model.eval()
    normalizer = _read_normalizer(ckpt / "normalizer.safetensors")
    try:
        spec = PolicySpec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"the spec in {ckpt / 'policy.json'} is invalid ({exc!r}); the checkpoint "
                          "is corrupt or was edited by hand") from exc
    if spec.normalizer_hash and spec.normalizer_hash != normalizer.digest():
        raise PolicyError(f"normalizer in {ckpt} does not match the hash in policy.json; the "
                          "checkpoint was modified or mixed with files from another run")
    if family.prepare_for_inference is not None:
        family.prepare_for_inference(model)
    return family.policy_class(model, normalizer, spec, device)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint; missing or corrupt -> PolicyError naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise PolicyError(f"{path} is missing; the checkpoint {path.parent} is incomplete. Copy the "
                          "whole checkpoint directory, or load another checkpoint of the run")
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (corrupt, truncated), OSError
        raise PolicyError(f"{path} could not be read ({exc}); the file is corrupt or truncated. "
                          "Re-copy the checkpoint or load another one") from exc


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """The in-place inference transforms `load_policy` applies to ACT (exposed for benchmarks)."""
    from tether.policies.vision import optimize_trunks

    return optimize_trunks(model)


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone(): safetensors refuses tensors that share storage (e.g. tied or viewed weights).
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise PolicyError(f"weights in {source} do not match the model config in policy.json: "
                          f"{str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else exc}") from exc
    if missing or unexpected:
        raise PolicyError(
            f"weights in {source} do not match the model config in policy.json: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )


def _read_normalizer(path: Path) -> Normalizer:
    if not path.is_file():
        raise PolicyError(f"{path} is missing; the checkpoint {path.parent} is incomplete. Copy the "
                          "whole checkpoint directory, or load another checkpoint of the run")
    try:
        return Normalizer.load(path)
    except PolicyError:
        raise
    except Exception as exc:  # SafetensorError, JSON in the metadata
        raise PolicyError(f"{path} could not be read ({exc}); the file is corrupt or truncated. "
                          "Re-copy the checkpoint or load another one") from exc


def _write_file(path: Path, data: bytes) -> None:
    """The one place checkpoint bytes reach the disk: write, flush, fsync (so the rename that
    publishes the directory never points at data still in the page cache)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
