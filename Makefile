# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both run `make setup` first, which is quick when nothing changed.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dysta_ros-setup
# Debian libraries MuJoCo needs to render offscreen (EGL, with OSMesa as the fallback).
APT_PACKAGES := cmake g++ libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6
# Discovery stays on this machine, on a domain of its own.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
export MUJOCO_GL ?= egl

.PHONY: setup apt msgs demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): setup.py setup.cfg requirements-ros.txt package.xml CMakeLists.txt $(wildcard msg/*.msg) Makefile
	@$(MAKE) --no-print-directory apt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pinned: a CPU wheel on local disk; an unpinned torch downloads gigabytes of CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-ros.txt
	$(PIP) install -q -e '.[test,lerobot,fleet]' --config-settings editable_mode=compat
	@$(MAKE) --no-print-directory msgs
	$(PY) -c "from dysta_ros.msg import ActionChunk, TokenStats"
	touch $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Generate the message packages into the venv (no ROS install needed).
msgs:
	mkdir -p build
	export AMENT_PREFIX_PATH=$(abspath $(VENV)) CMAKE_PREFIX_PATH=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH; \
	cmake -S . -B build/venv -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) -DDYSTA_ROS_INSTALL_PYTHON=OFF \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) -DBUILD_TESTING=OFF > build/cmake.log 2>&1 \
	  && $(MAKE) --no-print-directory -C build/venv install >> build/cmake.log 2>&1 \
	  || { tail -n 40 build/cmake.log; exit 1; }

demo: setup
	$(VENV)/bin/dysta-ros demo --policy expert checkpoints/reference --strategy full dysta --episodes 2

test: setup
	$(PY) -m pytest -q

# The inner loop: the core layer only (no ROS graph, no sim rendering, no bags).
test-fast: setup
	$(PY) -m pytest -q test/core

lint: setup
	$(VENV)/bin/ruff check dysta_ros test

clean:
	rm -rf build $(VENV)
