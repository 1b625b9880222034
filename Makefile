# Serin: build, test, and a local Kubernetes control plane for both.
#
#   make demo           a local control plane, Serin, and two rollouts shown live (one promoted, one aborted)
#   make bench          detection: time to roll back and false rollbacks, Serin vs a threshold rule vs Wald's bound
#   make bench-rollout  reaction times and controller memory on the local control plane
#   make test           every test: unit, Prometheus, and end-to-end on a local control plane
#   make cluster-up     start the control plane in the background (make cluster-down stops it)
#   make crds           regenerate crds/ from the Rust types
#   make lint           rustfmt and clippy, as CI runs them

BIN         := .cache/bin
CLUSTER_DIR := .cache/cluster
GO_BUILD    := go build -trimpath -ldflags="-s -w" -o $(CURDIR)/$(BIN)/
K8S_BINS    := $(BIN)/kube-apiserver $(BIN)/kube-controller-manager $(BIN)/kube-scheduler $(BIN)/kubectl
LAUNCHER    := target/debug/serin-cluster

.PHONY: arch-check build system-packages controlplane demo bench bench-rollout test unit e2e crds crds-check lint cluster-up cluster-down clean

## Debian packages the demo and the tests run: installed when missing (as root),
## otherwise the command to run is printed.
PACKAGES := prometheus openssl ca-certificates

build:
	cargo build --workspace --locked

system-packages:
	@missing=""; for tool in prometheus openssl; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACKAGES) >/dev/null; \
		else \
			echo "missing:$$missing. Run: sudo apt-get install -y $(PACKAGES)" >&2; exit 1; \
		fi; \
	fi

## The Kubernetes binaries, built once from the Go modules pinned under e2e/.
controlplane: $(K8S_BINS) $(BIN)/kwok

$(K8S_BINS) &: e2e/controlplane/go.mod e2e/controlplane/go.sum
	cd e2e/controlplane && $(GO_BUILD) k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubectl
	touch $(K8S_BINS)

$(BIN)/kwok: e2e/kwok/go.mod e2e/kwok/go.sum
	cd e2e/kwok && $(GO_BUILD) sigs.k8s.io/kwok/cmd/kwok
	touch $@

demo: system-packages controlplane
	cargo build --quiet --locked -p serin -p kubectl-serin -p serin-e2e
	target/debug/serin-demo

## The detection benchmark of record (no cluster needed); figures also in target/bench/detection.json.
bench:
	cargo build --quiet --locked --release -p kubectl-serin
	target/release/kubectl-serin simulate --grid --json target/bench/detection.json

bench-rollout: controlplane
	cargo build --quiet --locked --release -p serin -p serin-e2e
	target/release/serin-bench

test: system-packages controlplane
	cargo build --workspace --locked --bins
	cargo test --workspace --locked

unit:
	cargo test --workspace --locked --exclude serin-e2e

e2e: system-packages controlplane
	cargo build --workspace --locked --bins
	cargo test --locked -p serin-e2e

crds:
	cargo run --quiet --locked -p serin -- crds > crds/serin.dev_canaries.yaml

crds-check:
	cargo run --quiet --locked -p serin -- crds | diff -u crds/serin.dev_canaries.yaml - \
		|| { echo "crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; }

lint: arch-check
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## The decision crate stays pure by construction: nothing in its dependency tree can
## reach the network, a clock-driven runtime or the Kubernetes client.
IO_CRATES := kube-client kube-runtime kube-lease-manager hyper hyper-util tokio reqwest tower prometheus-http-query
arch-check:
	@tree=$$(cargo tree --locked -p serin-core -e normal --prefix none) || exit 1; \
	found=$$(echo "$$tree" | cut -d' ' -f1 | sort -u | grep -xE "$$(echo $(IO_CRATES) | tr ' ' '|')"); \
	if [ -n "$$found" ]; then echo "serin-core must not depend on: $$found (see docs/architecture.md)" >&2; exit 1; fi; \
	echo "serin-core: no I/O crate in its dependencies"

cluster-up: controlplane
	cargo build --quiet --locked -p serin-e2e --bin serin-cluster
	$(LAUNCHER) start --dir $(CLUSTER_DIR)
	@echo "export KUBECONFIG=$(CURDIR)/$(CLUSTER_DIR)/kubeconfig PATH=$(CURDIR)/$(BIN):\$$PATH"

cluster-down:
	@if [ -x $(LAUNCHER) ]; then $(LAUNCHER) stop --dir $(CLUSTER_DIR); fi

clean: cluster-down
	rm -rf target .cache
