"""Policies: ACT, Diffusion Policy and the MLP baseline, vision backbones, schedulers, trainer,
server, client.

Two halves with different installs. The inference protocol (`protocol`, `client`, `server`,
`base`, `simple`) needs only the core install, so a robot computer runs the client without
torch (import-linter's slim-install contract in pyproject.toml keeps it so). The models, the
trainer and checkpoints need the `train` extra; without it, importing one of them raises
MissingExtraError: "tether.policies.act needs torch: pip install 'tether[train]'".
This package imports nothing itself, so either half loads alone.
"""
