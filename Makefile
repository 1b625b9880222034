# Serin: build, test, and a local Kubernetes control plane for both.
#
#   make demo           a local control plane with a real node, Serin from its image, real
#                       traffic, and two rollouts shown live (one promoted, one rolled back);
#                       REAL_NODE=0: on kwok's fake nodes with simulated traffic
#   make bench          detection: time to roll back and false rollbacks, Serin vs a threshold rule vs Wald's bound
#   make bench-rollout  reaction times and controller memory on the local control plane
#   make bench-scale    1,000 and 10,000 Canaries on one controller: memory, CPU, API requests, a 10% wave
#   make bench-e2e-judge  false rollbacks and time to rollback through real Prometheus scrapes (about an hour)
#   make test           every test: unit, Prometheus, and end-to-end on a local control plane
#                       (kwok's fake nodes, and a real node running real containers)
#   make cluster-up     start the control plane and a real node in the background
#                       (REAL_NODE=0 leaves the node out; make cluster-down stops it)
#   make image          the controller, workload and pause images as OCI archives in .cache/images
#   make crds           regenerate crds/ (and the chart's copy) from the Rust types
#   make manifests      regenerate the CRDs and deploy/serin.yaml, the chart rendered
#   make lint           rustfmt and clippy, as CI runs them

BIN         := .cache/bin
CLUSTER_DIR := .cache/cluster
GO_BUILD    := go build -trimpath -ldflags="-s -w" -o $(CURDIR)/$(BIN)/
K8S_VERSION := v1.33.13
GO_BUILD_K8S = go build -trimpath -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=33" -o $(CURDIR)/$(BIN)/
K8S_BINS    := $(BIN)/kube-apiserver $(BIN)/kube-controller-manager $(BIN)/kube-scheduler $(BIN)/kubectl \
               $(BIN)/kubelet $(BIN)/kube-proxy
LAUNCHER    := target/debug/serin-cluster
REAL_NODE   ?= 1
IMAGES      := .cache/images
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
TRIPLE      := $(shell uname -m)-unknown-linux-gnu
STATIC_DIR  := target/$(TRIPLE)/release

.PHONY: arch-check build image system-packages controlplane demo bench bench-rollout bench-scale bench-e2e-judge test unit e2e crds crds-check manifests manifests-check lint cluster-up cluster-down clean

## Debian packages the demo and the tests run: installed when missing (as root),
## otherwise the command to run is printed.
PACKAGES := prometheus openssl ca-certificates containerd runc containernetworking-plugins \
            iptables iproute2 conntrack umoci
TOOLS    := prometheus openssl containerd runc ctr iptables ip conntrack umoci

build:
	cargo build --workspace --locked

system-packages:
	@missing=""; for tool in $(TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACKAGES) >/dev/null; \
		else \
			echo "missing:$$missing. Run: sudo apt-get install -y $(PACKAGES)" >&2; exit 1; \
		fi; \
	fi

## The Kubernetes binaries, built once from the Go modules pinned under e2e/, with
## CoreDNS (the real node's cluster DNS), Traefik (the Gateway API data plane) and
## Prometheus with its Kubernetes discovery (Debian's package has none), and Helm
## (to lint, render and install charts/serin), serin-kstatus (kstatus, as Flux
## reads a Canary's health), and serin-metrics-adapter (the external metrics API a
## test's HorizontalPodAutoscaler reads).
controlplane: $(K8S_BINS) $(BIN)/kwok $(BIN)/prometheus $(BIN)/coredns $(BIN)/traefik $(BIN)/helm \
              $(BIN)/serin-kstatus $(BIN)/serin-metrics-adapter

$(K8S_BINS) &: e2e/controlplane/go.mod e2e/controlplane/go.sum
	cd e2e/controlplane && $(GO_BUILD_K8S) k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
	touch $(K8S_BINS)

$(BIN)/kwok: e2e/kwok/go.mod e2e/kwok/go.sum
	cd e2e/kwok && $(GO_BUILD) sigs.k8s.io/kwok/cmd/kwok
	touch $@

## The images a real node runs, built without a Docker engine: static binaries
## (glibc, crt-static) on an empty base with umoci (hack/build-image, the layout of
## the Dockerfile), as OCI archives; imported into the node of `make cluster-up`
## when it runs, and by every real node at start.
image: system-packages
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked --release \
		--target $(TRIPLE) -p serin --bin serin -p serin-e2e --bin serin-workload --bin serin-pause
	hack/build-image $(STATIC_DIR)/serin ghcr.io/serin-dev/serin:$(VERSION) $(IMAGES)/serin.tar controller
	hack/build-image $(STATIC_DIR)/serin-workload localhost/serin/workload:$(VERSION) $(IMAGES)/workload.tar
	hack/build-image $(STATIC_DIR)/serin-pause localhost/serin/pause:$(VERSION) $(IMAGES)/pause.tar
	@if [ -S $(CLUSTER_DIR)/node/containerd.sock ]; then \
		for archive in $(IMAGES)/*.tar; do \
			ctr --address $(CLUSTER_DIR)/node/containerd.sock -n k8s.io images import $$archive; \
		done; \
	fi

$(BIN)/coredns: e2e/coredns/go.mod e2e/coredns/go.sum
	cd e2e/coredns && $(GO_BUILD) github.com/coredns/coredns
	touch $@

$(BIN)/traefik: e2e/traefik/go.mod e2e/traefik/go.sum
	cd e2e/traefik && $(GO_BUILD) github.com/traefik/traefik/v3/cmd/traefik
	touch $@

$(BIN)/helm: e2e/helm/go.mod e2e/helm/go.sum
	cd e2e/helm && $(GO_BUILD) helm.sh/helm/v3/cmd/helm
	touch $@

$(BIN)/serin-kstatus: e2e/kstatus/go.mod e2e/kstatus/go.sum e2e/kstatus/main.go
	cd e2e/kstatus && $(GO_BUILD)serin-kstatus .

$(BIN)/serin-metrics-adapter: e2e/metrics-adapter/go.mod e2e/metrics-adapter/main.go
	cd e2e/metrics-adapter && $(GO_BUILD)serin-metrics-adapter .
	touch $@

$(BIN)/prometheus: e2e/prometheus/go.mod e2e/prometheus/go.sum
	cd e2e/prometheus && $(GO_BUILD) github.com/prometheus/prometheus/cmd/prometheus
	touch $@

demo: system-packages controlplane $(if $(filter 1,$(REAL_NODE)),image)
	cargo build --quiet --locked -p serin -p kubectl-serin -p serin-e2e
	target/debug/serin-demo $(if $(filter 1,$(REAL_NODE)),,--simulated)

## The detection benchmark of record (no cluster needed); figures also in target/bench/detection.json.
bench:
	cargo build --quiet --locked --release -p kubectl-serin
	target/release/kubectl-serin simulate --grid --wide --json target/bench/detection.json
	target/release/kubectl-serin simulate --grid --wide --kind latency --regression 1.25,1.5,2 \
		--json target/bench/detection-latency.json

bench-rollout: controlplane
	cargo build --quiet --locked --release -p serin -p serin-e2e
	target/release/serin-bench

## The judge through the real pipeline; figures also in target/bench/e2e-judge.json.
## QUICK=1 runs the first configuration only (1 s scrapes, 200 req/s).
bench-e2e-judge: system-packages controlplane
	cargo build --quiet --locked --release -p serin -p serin-e2e
	target/release/serin-bench-judge $(if $(filter 1,$(QUICK)),--quick)

## The scale benchmark of record; figures also in target/bench/scale.json.
## FLEETS=1000 for a shorter run.
bench-scale: controlplane
	cargo build --quiet --locked --release -p serin -p serin-e2e
	target/release/serin-bench-scale $(if $(FLEETS),--fleets $(FLEETS))

test: system-packages controlplane image
	cargo build --workspace --locked --bins
	cargo test --workspace --locked

unit:
	cargo test --workspace --locked --exclude serin-e2e

e2e: system-packages controlplane image
	cargo build --workspace --locked --bins
	cargo test --locked -p serin-e2e

## The CRD from the Rust types, into crds/ and the chart's crds/.
crds:
	cargo run --quiet --locked -p serin -- crds > crds/serin.dev_canaries.yaml
	cp crds/serin.dev_canaries.yaml charts/serin/crds/serin.dev_canaries.yaml

crds-check:
	cargo run --quiet --locked -p serin -- crds | diff -u crds/serin.dev_canaries.yaml - \
		|| { echo "crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; }
	diff -u crds/serin.dev_canaries.yaml charts/serin/crds/serin.dev_canaries.yaml \
		|| { echo "charts/serin/crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; }

## deploy/serin.yaml is the chart rendered with its defaults (one source of truth:
## the chart), namespace and CRD included, for `kubectl apply -f` and kustomize.
RENDER_DEPLOY := $(BIN)/helm template serin charts/serin --namespace serin-system --include-crds \
                 --set createNamespace=true

manifests: crds $(BIN)/helm
	$(RENDER_DEPLOY) > deploy/serin.yaml

manifests-check: crds-check $(BIN)/helm
	$(BIN)/helm lint --strict charts/serin
	$(RENDER_DEPLOY) | diff -u deploy/serin.yaml - \
		|| { echo "deploy/serin.yaml is stale: run 'make manifests' and commit the result" >&2; exit 1; }
	@for field in version appVersion; do \
		grep -qx "$$field: \"\?$(VERSION)\"\?" charts/serin/Chart.yaml \
			|| { echo "charts/serin/Chart.yaml: $$field must be $(VERSION), the version in Cargo.toml" >&2; exit 1; }; \
	done

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

cluster-up: controlplane $(if $(filter 1,$(REAL_NODE)),image)
	cargo build --quiet --locked -p serin-e2e --bin serin-cluster
	$(LAUNCHER) start --dir $(CLUSTER_DIR) $(if $(filter 1,$(REAL_NODE)),--real-node)
	@echo "export KUBECONFIG=$(CURDIR)/$(CLUSTER_DIR)/kubeconfig PATH=$(CURDIR)/$(BIN):\$$PATH"

cluster-down:
	@if [ -x $(LAUNCHER) ]; then $(LAUNCHER) stop --dir $(CLUSTER_DIR); fi

clean: cluster-down
	rm -rf target .cache
