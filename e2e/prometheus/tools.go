//go:build tools

// Package prometheus pins the Prometheus server the real-node tests run. Debian's
// prometheus package is built without the Kubernetes service discovery, and
// operators discover pods with kubernetes_sd_configs, so the tests build it.
package prometheus

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
