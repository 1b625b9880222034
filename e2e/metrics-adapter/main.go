// serin-metrics-adapter serves external.metrics.k8s.io/v1beta1 behind the API
// server's aggregation layer: each metric is a file in --values holding one
// quantity, read at every request, so a test changes what an HPA sees by writing
// a file. It answers over TLS with a certificate made at start (the APIService
// skips verification); it is a test fixture and checks no client.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"log"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

const (
	group        = "external.metrics.k8s.io"
	version      = "v1beta1"
	groupVersion = group + "/" + version
)

// A metric's name as a file name: no path tricks.
var metricName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$`)

func main() {
	listen := flag.String("listen", "", "address:port to serve on")
	values := flag.String("values", "", "directory of metric files, one quantity each")
	flag.Parse()
	if *listen == "" || *values == "" {
		log.Fatal("usage: serin-metrics-adapter --listen ADDRESS:PORT --values DIR")
	}
	certificate, err := selfSigned()
	if err != nil {
		log.Fatalf("making a certificate: %v", err)
	}
	server := &http.Server{
		Addr:              *listen,
		Handler:           handler(*values),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{certificate}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Printf("serving %s on https://%s from %s", groupVersion, *listen, *values)
	log.Fatal(server.ListenAndServeTLS("", ""))
}

func handler(values string) http.Handler {
	mux := http.NewServeMux()
	preferred := map[string]string{"groupVersion": groupVersion, "version": version}
	apiGroup := map[string]any{
		"kind": "APIGroup", "apiVersion": "v1", "name": group,
		"versions": []any{preferred}, "preferredVersion": preferred,
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /apis", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, map[string]any{
			"kind": "APIGroupList", "apiVersion": "v1", "groups": []any{apiGroup},
		})
	})
	mux.HandleFunc("GET /apis/"+group, func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, apiGroup)
	})
	mux.HandleFunc("GET /apis/"+groupVersion, func(w http.ResponseWriter, _ *http.Request) {
		resources := []any{}
		entries, _ := os.ReadDir(values)
		for _, entry := range entries {
			resources = append(resources, map[string]any{
				"name": entry.Name(), "singularName": "", "namespaced": true,
				"kind": "ExternalMetricValueList", "verbs": []string{"get"},
			})
		}
		reply(w, http.StatusOK, map[string]any{
			"kind": "APIResourceList", "apiVersion": "v1",
			"groupVersion": groupVersion, "resources": resources,
		})
	})
	mux.HandleFunc("GET /apis/"+groupVersion+"/namespaces/{namespace}/{metric}", func(w http.ResponseWriter, r *http.Request) {
		metric := r.PathValue("metric")
		if !metricName.MatchString(metric) {
			status(w, http.StatusBadRequest, "BadRequest", "not a metric name: "+metric)
			return
		}
		raw, err := os.ReadFile(filepath.Join(values, metric))
		if err != nil {
			status(w, http.StatusNotFound, "NotFound", "no value for "+metric)
			return
		}
		value := strings.TrimSpace(string(raw))
		log.Printf("%s/%s = %s", r.PathValue("namespace"), metric, value)
		reply(w, http.StatusOK, map[string]any{
			"kind": "ExternalMetricValueList", "apiVersion": groupVersion,
			"metadata": map[string]any{},
			"items": []any{map[string]any{
				"metricName": metric, "metricLabels": map[string]string{},
				"timestamp": time.Now().UTC().Format(time.RFC3339), "value": value,
			}},
		})
	})
	return mux
}

func reply(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(body); err != nil {
		log.Printf("writing a reply: %v", err)
	}
}

func status(w http.ResponseWriter, code int, reason, message string) {
	reply(w, code, map[string]any{
		"kind": "Status", "apiVersion": "v1", "status": "Failure",
		"reason": reason, "message": message, "code": code,
	})
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "serin-metrics-adapter"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
