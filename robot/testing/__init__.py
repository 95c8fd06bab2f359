"""Reusable test suites for implementations of the robot interfaces (see contract.py)."""
