# cvmd — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)
export CGO_ENABLED := 1

TAGS    := seccomp netgo osusergo grpcnotrace
STATIC  := -s -w -linkmode external -extldflags "-static"
BIN     := bin
GOTEST  := $(GO) test -tags '$(TAGS)'
TESTTIMEOUT ?= 40m

.PHONY: help deps build cvmd cvmd-test cvm test race unit run bench bench-vm soak-vm proto proto-check lint image vm clean

help: ## show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install apt packages and pinned Go tools (idempotent)
	@scripts/deps.sh test

build: deps cvmd cvm ## build bin/cvmd (static, seccomp: the measured binary) and bin/cvm

cvmd:
	@mkdir -p $(BIN)
	$(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(STATIC)' -o $(BIN)/cvmd ./cmd/cvmd

# The tests' build of cvmd: the same plus its test switches (cvmd probe,
# --test-misbehave, --test-panic-on-sigusr1), which bin/cvmd does not have.
cvmd-test:
	@mkdir -p $(BIN)
	$(GO) build -tags '$(TAGS) cvmdtest' -trimpath -ldflags '$(STATIC)' -o $(BIN)/cvmd-test ./cmd/cvmd

cvm:
	@mkdir -p $(BIN)
	$(GO) build -tags grpcnotrace -trimpath -o $(BIN)/cvm ./cmd/cvm

proto: ## regenerate the Go code of proto/*.proto
	@scripts/genproto.sh

proto-check: ## fail if the committed generated code is stale
	@scripts/genproto.sh
	@git diff --exit-code --stat -- proto/ || { echo "proto: generated code is stale: run make proto and commit"; exit 1; }

lint: deps ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'); echo "lint: not gofmt-ed"; exit 1; }
	$(GO) vet -tags '$(TAGS)' ./...
	$(GO) vet -tags '$(TAGS) cvmdtest' ./cmd/cvmd ./supervisor/...
	staticcheck -tags '$(TAGS)' ./...

test: deps proto-check build cvmd-test ## all tests (as root): unit, integration and the VM end-to-end
	$(GO) vet -tags '$(TAGS)' ./...
	CVMD_BIN=$(CURDIR)/$(BIN) $(GOTEST) -count=1 -timeout $(TESTTIMEOUT) -p 2 ./...

# The race detector covers every package but tests/vm, whose test process
# only drives qemu and swtpm (the guest's cvmd is the plain static build), so
# -race would double the VM suite's time and find nothing. Elsewhere too, the
# processes a suite starts (bin/cvmd, its children) are the plain build:
# -race checks the test processes, where the in-process tests run the real
# code (children, queues, ipc, the supervisor's handlers).
RACE_SKIP := /tests/vm$$

race: deps build cvmd-test ## the race detector (go test -race, cgo) over every package but the VM suite
	CVMD_BIN=$(CURDIR)/$(BIN) $(GO) test -race -tags '$(TAGS)' -count=1 -timeout $(TESTTIMEOUT) -p 2 $$($(GO) list ./... | grep -v -E '$(RACE_SKIP)')

unit: ## quick tests: every package but the integration and VM suites of tests/ (-short)
	$(GOTEST) -short -count=1 $$($(GO) list ./... | grep -v '/tests/')

run: build ## boot cvmd locally (dev mode) and run a sample computation end to end
	@scripts/run.sh

bench: build cvmd-test ## print BENCH <name> <value> <unit> lines
	@set -o pipefail; CVMD_BENCH=1 CVMD_BIN=$(CURDIR)/$(BIN) $(GOTEST) -count=1 -timeout 60m -p 1 -run '^TestBench' -v ./... 2>&1 | tee $(BIN)/bench.log | awk '/^BENCH / && !seen[$$2]++ {print $$1, $$2, $$3, $$4; n++} END{if (!n) {print "bench: no figures (see $(BIN)/bench.log)"; exit 1}}'

# --- VM image (images/, tests/vm) ---------------------------------------------------
IMAGE_PYTHON ?= 0
VMFLAGS ?=

image: deps cvmd ## build the VM image: images/out/vmlinuz + initramfs.cpio.zst (IMAGE_PYTHON=1 adds python3)
	@IMAGE_PYTHON=$(IMAGE_PYTHON) images/build.sh

vm: image ## boot the image under qemu (TCG, swtpm, 127.0.0.1:7002 → guest); VMFLAGS="-manager ... -env FILE"
	@$(GO) build -o $(BIN)/runvm ./images/cmd/runvm
	$(BIN)/runvm $(VMFLAGS)

bench-vm: build ## VM figures: boot times, end to end, image size, the scratch disk (boots qemu)
	@set -o pipefail; CVMD_BENCH_VM=1 CVMD_BIN=$(CURDIR)/$(BIN) $(GOTEST) -count=1 -timeout 60m -p 1 -run '^TestBench' -v ./tests/vm/ 2>&1 | tee $(BIN)/bench-vm.log | awk '/^BENCH / && !seen[$$2]++ {print $$1, $$2, $$3, $$4; n++} END{if (!n) {print "bench-vm: no figures (see $(BIN)/bench-vm.log)"; exit 1}}'

SOAK_N ?= 50
SOAK_BOUND ?= 3m
SOAK_MACHINE ?= cvmd
SOAK_TPM ?= 1
soak-vm: build ## boot the test image SOAK_N times (default 50; SOAK_MACHINE=cocos or cocos-reported: Cocos's VM, SOAK_TPM=0: no vTPM); report each boot not ready within SOAK_BOUND, with its dump
	@set -o pipefail; CVMD_SOAK_VM=$(SOAK_N) CVMD_SOAK_BOUND=$(SOAK_BOUND) CVMD_SOAK_MACHINE=$(SOAK_MACHINE) CVMD_SOAK_TPM=$(SOAK_TPM) CVMD_BIN=$(CURDIR)/$(BIN) $(GOTEST) -count=1 -timeout 0 -p 1 -run '^TestSoakBoots$$' -v ./tests/vm/ 2>&1 | tee $(BIN)/soak-vm-$$$$.log | grep -E '^(SOAK|--- |FAIL|ok|PASS)|boot [0-9]+/'

clean: ## remove build outputs
	rm -rf $(BIN)
