"""Calibration: camera intrinsics, hand-eye, leader/follower offsets, latency, twin system id."""
