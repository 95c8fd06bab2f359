"""Policies: ACT and Diffusion Policy, vision backbones, schedulers, trainer, server, client."""
