//go:build tools

// Package traefik pins the Gateway API data plane of the real-node tests.
package traefik

import (
	_ "github.com/traefik/traefik/v3/cmd/traefik"
)
