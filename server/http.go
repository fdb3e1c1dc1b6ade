package server

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/gannetmq/gannet/interlink"
)

// startHTTP serves the operator endpoints:
//
//	/metrics  Prometheus text format: the broker's counters and the Go runtime's
//	/healthz  200 while the process runs
//	/readyz   200 while the broker accepts clients and its store takes
//	          writes, 503 otherwise
//	/api/v1/cluster  this node and its peers, with their state (JSON)
//	/api/v1/node/drain  GET: the node's drain; POST: drain it (drain.go)
//	/api/v1/...  the rest of the admin API, described by
//	          /api/v1/openapi.json (admin.go, bans.go)
//	/, /ui/   the dashboard, which calls the admin API (ui.go)
//
// With HTTPTLSCertFile it serves HTTPS only (TLS 1.2 and up). Who may call
// what is decided in one place, guardHTTP (apiauth.go).
func (s *Server) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("cannot listen for HTTP on %s: %w", s.cfg.HTTPListen, err)
	}
	s.httpAddr = ln.Addr()
	if hc := s.httpCert; hc != nil {
		ln = tls.NewListener(ln, &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return hc.cur.Load(), nil
			},
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.stats.set.WritePrometheus(w)
		if s.cfg.Auth != nil {
			s.cfg.Auth.Metrics().WritePrometheus(w)
		}
		metrics.WriteProcessMetrics(w)
	})
	mux.HandleFunc("GET /api/v1/cluster", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.clusterView())
	})
	s.drainRoutes(mux)
	s.adminRoutes(mux) // admin.go
	s.apiPeers.mux.Store(mux)
	mux.HandleFunc("/api/", apiNotFound)
	s.uiRoutes(mux) // ui.go
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if s.drain.active.Load() {
			http.Error(w, "not ready: draining", http.StatusServiceUnavailable)
			return
		}
		if s.storeUnhealthy() != nil {
			// Every QoS 1/2 publish would be refused: a load balancer
			// should send clients to a node that can keep them.
			http.Error(w, "not ready: the store refuses writes", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	s.http = &http.Server{Handler: s.guardHTTP(mux), ReadHeaderTimeout: 5 * time.Second,
		// net/http logs each failed TLS handshake: the client's
		// problem, worth a line at debug level only.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	go func() {
		if err := s.http.Serve(ln); err != nil && err != http.ErrServerClosed {
			s.log.Error("HTTP listener failed", "err", err)
		}
	}()
	return nil
}

// clusterView is the body of GET /api/v1/cluster.
type clusterView struct {
	Enabled bool               `json:"enabled"`
	Node    string             `json:"node,omitempty"`
	Members []interlink.Member `json:"members"`
}

func (s *Server) clusterView() clusterView {
	if s.cl == nil {
		return clusterView{Members: []interlink.Member{}}
	}
	return clusterView{Enabled: true, Node: s.cl.node.Name(), Members: s.cl.node.Members()}
}

// httpCert is the HTTP listener's certificate, when it serves HTTPS.
type httpCert struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// load reads the certificate and key; on error the old ones stay.
func (h *httpCert) load() error {
	cert, _, err := loadKeyPair(h.certFile, h.keyFile)
	if err != nil {
		return err
	}
	h.cur.Store(&cert)
	return nil
}

// reloadHTTPTLS reads the HTTP listener's certificate and key again.
func (s *Server) reloadHTTPTLS() error {
	if s.httpCert == nil {
		return nil
	}
	if err := s.httpCert.load(); err != nil {
		return fmt.Errorf("the HTTP listener keeps its old certificate: %w", err)
	}
	return nil
}
