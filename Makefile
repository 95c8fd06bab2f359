# The two commands a newcomer needs (see README):
#   make demo   - set everything up on a fresh machine and run the main job (tether demo)
#   make test   - set everything up the same way and run the default test suite
# `make test-slow` runs the long checks (100-episode success rates, 20x kill -9, ...).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tether-installed
# Debian packages: EGL/Mesa for offscreen MuJoCo rendering, libusb for pyrealsense2, hidapi for
# pyspacemouse, chromium to check that the HTML evaluation report renders.
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libusb-1.0-0 libhidapi-hidraw0 chromium
# Everything: every part (all = train, twin, data, viz, eval), the hardware SDKs and the dev tools.
# A robot computer needs far less: pip install 'tether[dynamixel]' (see README, Install).
EXTRAS := all,dev,realsense,dynamixel,feetech,ur,spacemouse

.PHONY: setup demo test test-slow test-stress test-random lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU torch pin first, so nothing below can pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: setup
	MUJOCO_GL=egl $(BIN)/tether demo

# Two pytest workers (pytest-xdist), one test file each at a time: the suite is CPU-bound on
# 2 cores, and its tests hold under load (`make test-stress`), so a second worker is safe.
PYTEST_WORKERS := -n 2 --dist loadfile
# A bound on the whole default suite (~7 min here): when a worker process dies, xdist may wait
# for it forever; SIGINT at the bound makes pytest stop and print what ran and what failed.
SUITE_TIMEOUT ?= 1800

test: setup
	MUJOCO_GL=egl timeout --signal=INT --kill-after=60 $(SUITE_TIMEOUT) \
		$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_WORKERS)

test-slow: setup
	MUJOCO_GL=egl $(BIN)/python -m pytest -m slow -q

# diffusion_policy's own ReplayBuffer (zarr<3, its own venv in ~/.cache/tether/venvs/dp-zarr2)
# loads `tether export --format diffusion_policy` output. Offline: set
# TETHER_DIFFUSION_POLICY_SRC to a clone of github.com/real-stanford/diffusion_policy.
.PHONY: test-replay-buffer-real
test-replay-buffer-real: setup
	$(BIN)/python -m pytest -m slow -q tests/data/test_replay_buffer_real_slow.py

# lerobot 0.4.4 itself (installed --no-deps beside CPU torch in its own venv,
# ~/.cache/tether/venvs/lerobot-0.4.4, or $TETHER_LEROBOT_VENV) loads our LeRobotDataset export,
# and tether import reads a dataset lerobot's own writer made.
.PHONY: lerobot-check
lerobot-check: setup
	@dpkg -s ffmpeg >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get install -y -qq --no-install-recommends ffmpeg; }  # torchcodec's libraries
	$(BIN)/python -m pytest -m slow -q -s tests/data/test_lerobot_real_slow.py

# tether vs LeRobot 0.4.4 side by side (issue 17), both measured alternately on this machine;
# builds LeRobot's venv once (benchmarks/vs_lerobot/lerobot_venv.py: the recipe above plus its
# policies' and trainer's packages) and rewrites the table in docs/performance.md. Run it on a
# quiet machine (~15 min). Options: make bench-lerobot BENCH_ARGS="--items act,train --rounds 1"
.PHONY: bench-lerobot
bench-lerobot: setup
	@dpkg -s ffmpeg >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get install -y -qq --no-install-recommends ffmpeg; }  # torchcodec's libraries
	$(BIN)/python benchmarks/vs_lerobot.py --write-docs $(BENCH_ARGS)

# The default suite while two busy loops load both cores: tests must check behaviour, not how
# fast the machine is, so this must pass exactly like `make test`.
test-stress: setup
	@for i in 1 2; do (timeout 3600 bash -c "while :; do :; done") & echo $$! >> .stress-pids; done; \
	MUJOCO_GL=egl $(BIN)/python -m pytest -m "not slow" -q $(PYTEST_WORKERS); rc=$$?; \
	kill $$(cat .stress-pids) 2>/dev/null; rm -f .stress-pids; exit $$rc

# The default suite in a random order (prints the seed; rerun with --random-order-seed=N).
test-random: setup
	MUJOCO_GL=egl $(BIN)/python -m pytest -m "not slow" -q --random-order

lint: setup
	$(BIN)/ruff check .
	# Layers point down only (import-linter contracts in pyproject.toml).
	$(BIN)/python tools/check_layers.py

clean:
	rm -rf $(VENV) build dist *.egg-info

# Issue 19: ACT on transfer_cube / insertion and Diffusion Policy on lift / transfer_cube from 50
# scripted demos, snapshots along each run evaluated on the twin, the pick on 50 held-out seeds
# (runs/bench_learning/learning.json + learning.html; hours on 2 cores: see docs/policies.md).
# A smoke version of every stage: make bench-learning BENCH_LEARNING_ARGS=--smoke
.PHONY: bench-learning
bench-learning: setup
	MUJOCO_GL=egl $(BIN)/python benchmarks/learning.py --out runs/bench_learning $(BENCH_LEARNING_ARGS)
