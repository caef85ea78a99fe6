# Shepherd: two commands.
#   make demo   installs what it needs, builds, builds the guest image once, runs a 3-host cluster
#   make test   installs what it needs and runs the whole test suite
SHELL := /bin/bash
export PATH := $(if $(wildcard /opt/swift/usr/bin/swift),/opt/swift/usr/bin:,)$(PATH)
PREFIX ?= /usr/local
STATE_DIR ?= /var/lib/shepherd
GUEST ?= guest/tiny
SWIFT_BUILD_FLAGS ?=

.PHONY: all deps build guest install demo test bench bench-storage bench-memory bench-network faults openapi clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	swift build $(SWIFT_BUILD_FLAGS)

# The guest image is built once and kept (guest/ is not in git).
guest: deps $(GUEST)/manifest.json
$(GUEST)/manifest.json: scripts/build-guest-image.sh scripts/guest-dirty.c
	scripts/build-guest-image.sh $(GUEST)

install: build
	install -m 0755 .build/debug/shepherd $(PREFIX)/bin/shepherd

demo: install guest
	shepherd demo --state-dir $(STATE_DIR) --image $(GUEST)

test: deps guest
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	SHEPHERD_GUEST_IMAGE=$(abspath $(GUEST)) SHEPHERD_BINARY=$(abspath .build/debug/shepherd) \
	  swift test --skip-build --skip FaultCampaign --skip Benchmarks $(SWIFT_BUILD_FLAGS)

bench: build guest
	bench/boot-to-tools.sh
	bench/planetlab.sh
	$(MAKE) bench-storage
	$(MAKE) bench-memory
	$(MAKE) bench-network

# Storage migration next to qemu-img convert, and the guest's write latency during the mirror.
bench-storage: deps guest
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	SHEPHERD_GUEST_IMAGE=$(abspath $(GUEST)) SHEPHERD_BINARY=$(abspath .build/debug/shepherd) \
	  swift test --skip-build --filter Benchmarks.StorageBenchmark $(SWIFT_BUILD_FLAGS)

# Memory overcommit: density of tiny guests off / 150 % / 200 %, KSM and balloon savings, the
# balloon controller's hand-over time.
bench-memory: deps guest
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	SHEPHERD_GUEST_IMAGE=$(abspath $(GUEST)) SHEPHERD_BINARY=$(abspath .build/debug/shepherd) \
	  swift test --skip-build --filter Benchmarks.MemoryBenchmark $(SWIFT_BUILD_FLAGS)

# The virtual switch path: guest-to-guest TCP and ping on one host and across hosts, next to the
# kernel-only and the guest-less DVS path; NIC rate limits asked vs measured.
bench-network: deps guest
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	SHEPHERD_GUEST_IMAGE=$(abspath $(GUEST)) SHEPHERD_BINARY=$(abspath .build/debug/shepherd) \
	  swift test --skip-build --filter Benchmarks.NetworkBenchmark $(SWIFT_BUILD_FLAGS)

# The randomized HA fault campaign (FAULT_ROUNDS rounds, FAULT_SEED to replay); results in bench/results/.
FAULT_ROUNDS ?= 20
faults: deps guest
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	SHEPHERD_GUEST_IMAGE=$(abspath $(GUEST)) SHEPHERD_BINARY=$(abspath .build/debug/shepherd) \
	  SHEPHERD_FAULT_ROUNDS=$(FAULT_ROUNDS) $(if $(FAULT_SEED),SHEPHERD_FAULT_SEED=$(FAULT_SEED)) \
	  swift test --skip-build --filter FaultCampaign $(SWIFT_BUILD_FLAGS)

# Regenerates the embedded copy of docs/api/openapi.yaml that the manager serves.
openapi:
	scripts/embed-openapi.sh

clean:
	rm -rf .build
