"""Teleoperation: input devices (leader arm, spacemouse, keyboard, scripted expert) and the recorder."""
