"""The application layer: CLI commands, rollout, evaluation and the demo.

The only layer that knows every part: it wires robot, data, teleop, policies and calibration
together, passing objects down as arguments. Nothing below imports from here.
"""
