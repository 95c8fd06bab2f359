"""Helpers of benchmarks/vs_lerobot.py: the two measuring sides, the LeRobot venv, the report.

`tether_side.py` and `lerobot_side.py` run as scripts in their own venvs and import only
`measure.py` beside them; `lerobot_venv.py` and `report.py` are used by the orchestrator.
"""
