"""The bottom layer: errors, config, schema (array keys and specs), clock, optional imports.

Nothing here imports any other part of tether, so every layer above can use it, and a robot
computer's slim install (numpy, pyzmq, msgpack, pyyaml) can import all of it.
"""
