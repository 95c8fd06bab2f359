"""Converters into the episode store from other datasets (data layer).

The diffusion_policy / UMI ReplayBuffer import lives in `tether.data.replay_buffer` beside its
export (`tether export|import --format diffusion_policy`); this name stays for existing callers.
"""

from __future__ import annotations

from tether.data.replay_buffer import import_replay_buffer

__all__ = ["import_replay_buffer"]
