// Builds serin-metrics-adapter: the external metrics API (external.metrics.k8s.io)
// with values a test sets, so a real HorizontalPodAutoscaler scales a Canary on a
// number the test controls. Standard library only.
module serin.dev/e2e/metrics-adapter

go 1.26.0
