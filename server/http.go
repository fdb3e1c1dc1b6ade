package server

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/gannetmq/gannet/interlink"
)

// startHTTP serves the operator endpoints:
//
//	/metrics  Prometheus text format: the broker's counters and the Go runtime's
//	/healthz  200 while the process runs
//	/readyz   200 while the broker accepts clients, 503 otherwise
//	/api/v1/cluster  this node and its peers, with their state (JSON)
func (s *Server) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("cannot listen for HTTP on %s: %w", s.cfg.HTTPListen, err)
	}
	s.httpAddr = ln.Addr()
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
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
