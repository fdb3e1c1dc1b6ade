package server

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/gannetmq/gannet/apikey"
)

// Who may call the HTTP listener, decided in one place (guardHTTP) for
// every handler, so that no handler can forget it:
//
//   - /healthz and /readyz are open: load balancers and orchestrators
//     call them without credentials.
//   - /metrics is open, unless --metrics-auth asks for a read key.
//   - / and /ui/ (the dashboard, ui.go) are open: they hold no data, and
//     the page asks for a key to call the API with.
//   - /api/ with --api-key-file: GET and HEAD need a read or write key,
//     every other method a write key, sent as "Authorization: Bearer
//     KEY". No key, or one the file does not hold, is 401; a read key on a
//     write request is 403.
//   - /api/ without --api-key-file: GET and HEAD are open, as they were
//     before keys existed (hence the warning in --http-listen's help:
//     keep the listener on a private interface); every other method is
//     403, since nothing could tell who asked to change the broker.
//
// Errors under /api/ are JSON ({"error": "..."}); a handler's panic is a
// 500 with no detail, its stack going to the log only.

// loadAPIKeys reads --api-key-file, for New.
func (s *Server) loadAPIKeys() error {
	if s.cfg.APIKeyFile == "" {
		return nil
	}
	f, err := apikey.Load(s.cfg.APIKeyFile)
	if err != nil {
		return fmt.Errorf("--api-key-file: %w", err)
	}
	if f.Len() == 0 {
		s.log.Warn("the API key file holds no key: every /api/ request is refused until one is added (gannet apikey add) and the broker reloads (SIGHUP)",
			"file", s.cfg.APIKeyFile)
	}
	if host, _, _ := net.SplitHostPort(s.cfg.HTTPListen); s.cfg.HTTPTLSCertFile == "" && !isLoopback(host) {
		s.log.Warn("API keys cross the network in the clear: serve HTTPS with --http-tls-cert and --http-tls-key, "+
			"or bind --http-listen to a loopback address", "http", s.cfg.HTTPListen)
	}
	s.apiKeys = f
	return nil
}

// isLoopback reports whether host (from a listen address) is a loopback
// address or localhost; "" (every interface) is not.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ReloadAPIKeys reads --api-key-file again; when it cannot be read or
// does not parse, the keys in force stay and the error says why. Safe
// for concurrent use with requests.
func (s *Server) ReloadAPIKeys() error {
	if s.apiKeys == nil {
		return nil
	}
	if err := s.apiKeys.Reload(); err != nil {
		return fmt.Errorf("the API keys in force stay: %w", err)
	}
	return nil
}

// apiError answers a request under /api/ with status and a JSON body
// that says why.
func apiError(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{fmt.Sprintf(format, args...)})
}

// apiJSON answers with status and v as JSON.
func apiJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// apiNotFound answers a path under /api/ that no handler serves.
func apiNotFound(w http.ResponseWriter, r *http.Request) {
	apiError(w, http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
}

// guardHTTP wraps the listener's handler with the checks above.
func (s *Server) guardHTTP(next http.Handler) http.Handler {
	mux, _ := next.(*http.ServeMux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// By the path as sent and by the route the mux picks, so that no
		// spelling of a path reaches an API handler unchecked.
		api := strings.HasPrefix(r.URL.Path, "/api/")
		metricsPath := r.URL.Path == "/metrics"
		if mux != nil {
			_, pattern := mux.Handler(r)
			_, route, _ := strings.Cut(pattern, " ")
			if route == "" {
				route = pattern
			}
			api = api || strings.HasPrefix(route, "/api/")
			metricsPath = metricsPath || route == "/metrics"
		}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.stats.panics.Inc()
				s.log.Error("panic in an HTTP handler", "method", r.Method, "path", r.URL.Path,
					"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if api {
					apiError(w, http.StatusInternalServerError, "internal error")
				} else {
					http.Error(w, "internal error", http.StatusInternalServerError)
				}
			}
		}()
		need := apikey.Role("")
		switch {
		case api && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			need = apikey.Read
		case api:
			need = apikey.Write
		case metricsPath && s.cfg.MetricsAuth:
			need = apikey.Read
		}
		if need != "" && !s.allowHTTP(w, r, need, api) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allowHTTP checks r's key for need and answers the refusal itself,
// reporting whether the request may go on.
func (s *Server) allowHTTP(w http.ResponseWriter, r *http.Request, need apikey.Role, api bool) bool {
	refuse := func(status int, format string, args ...any) bool {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gannet"`)
		}
		if api {
			apiError(w, status, format, args...)
		} else {
			http.Error(w, fmt.Sprintf(format, args...), status)
		}
		return false
	}
	if s.apiKeys == nil {
		if need == apikey.Read {
			return true
		}
		return refuse(http.StatusForbidden, "%s %s changes the broker, which needs API keys: start it with --api-key-file "+
			"(keys made with gannet apikey add) and send a write key as Authorization: Bearer KEY", r.Method, r.URL.Path)
	}
	scheme, key, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if key == "" || !strings.EqualFold(scheme, "Bearer") {
		return refuse(http.StatusUnauthorized, "an API key is needed: send it as Authorization: Bearer KEY")
	}
	name, role, ok := s.apiKeys.Check(strings.TrimSpace(key))
	if !ok {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		s.logThrottled("refusing an HTTP request: unknown API key", "remote", host, "method", r.Method, "path", r.URL.Path)
		return refuse(http.StatusUnauthorized, "unknown API key")
	}
	if !role.Allows(need) {
		return refuse(http.StatusForbidden, "API key %q is read-only: %s %s needs a write key", name, r.Method, r.URL.Path)
	}
	if need == apikey.Write {
		// Changes to the broker are few and worth a line each.
		s.log.Info("API request", "key", name, "method", r.Method, "path", r.URL.Path)
	}
	return true
}
