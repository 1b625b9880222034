//go:build tools

// Package coredns pins the cluster DNS server of the real node.
package coredns

import (
	_ "github.com/coredns/coredns"
)
