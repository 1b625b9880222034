//go:build tools

// Package kwok pins the kwok command the tests build.
package kwok

import _ "sigs.k8s.io/kwok/cmd/kwok"
