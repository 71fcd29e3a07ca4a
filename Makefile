# The two commands of the README:   make demo   (the main job)    make test   (the test suite)
# Both create .venv on a fresh machine and reuse it afterwards.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.densernet-deps
DATA    ?= synthetic
# Training seeds for bench-train and the Gardens Point demo (each seed, then mean and sd, when > 1).
SEEDS   ?= 1
# With a system ROS 2 sourced, use its rclpy (venv sees system site-packages); else the PyPI wheels.
ifdef ROS_DISTRO
VENV_FLAGS := --system-site-packages
EXTRAS     := dev
else
VENV_FLAGS :=
EXTRAS     := ros,dev
endif
export AMENT_PREFIX_PATH := $(if $(ROS_DISTRO),$(abspath $(VENV)):$(AMENT_PREFIX_PATH),$(abspath $(VENV)))

.PHONY: venv install weights test demo bench bench-train bench-index bench-node clean

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check ".[$(EXTRAS)]"
	touch $@

venv: $(STAMP)

# Reinstall our own package (no deps) so share/ (launch, config, ament marker) matches the tree.
install: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .

weights: install
	$(VENV)/bin/densernet weights fetch

test: weights
	bash scripts/run_tests.sh $(PY)

# Each data source keeps its own output folder (route, checkpoint and map are reused on reruns).
DEMO_OUT := $(if $(filter synthetic,$(DATA)),demo_out,demo_out_$(DATA))

demo: weights
	$(VENV)/bin/densernet-demo --data $(DATA) --out $(DEMO_OUT) $(if $(filter-out 1,$(SEEDS)),--seeds $(SEEDS))

bench: weights
	$(PY) benchmarks/bench_describe.py

# The headline training benchmark on ../shared/data/gardens_point (about 35 min on a 2-core CPU; SEEDS=5
# trains every preset five times, about 3 h: the seed figures came from --presets small --seeds 5).
bench-train: weights
	$(PY) benchmarks/bench_gardens_point.py --out bench_out/gardens_point --seeds $(SEEDS)

bench-index: install
	$(PY) benchmarks/bench_index.py --out bench_out/index

bench-node: weights
	$(PY) benchmarks/bench_node.py --out bench_out/node

clean:
	rm -rf build install log demo_out demo_out_* bench_out *.egg-info
