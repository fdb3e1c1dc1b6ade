package server

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gannetmq/gannet/apikey"
)

// httpDo sends one request to s's HTTP listener, with key as a bearer
// token unless it is empty, and returns the status, the body and the
// headers.
func httpDo(t testing.TB, s *Server, method, path, key, body string) (int, string, http.Header) {
	t.Helper()
	code, b, hdr, err := httpTry(s, method, path, key, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return code, b, hdr
}

// httpTry is httpDo for a goroutine other than the test's: it returns
// the error.
func httpTry(s *Server, method, path, key, body string) (int, string, http.Header, error) {
	req, err := http.NewRequest(method, "http://"+s.HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		return 0, "", nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// apiErrorOf returns the "error" of a JSON error body, failing when the
// body is not one.
func apiErrorOf(t testing.TB, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("body %q is not a JSON error: %v", body, err)
	}
	return e.Error
}

// keyFile makes a key file with a read key and a write key.
func keyFile(t testing.TB) (path, read, write string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "api-keys")
	read, err := apikey.Add(path, "grafana", apikey.Read)
	if err != nil {
		t.Fatal(err)
	}
	if write, err = apikey.Add(path, "deploy", apikey.Write); err != nil {
		t.Fatal(err)
	}
	return path, read, write
}

// With --api-key-file the API asks for a key (401 without one or with
// one the file lacks), a read key reads but does not write (403), a write
// key does both; health, readiness and (without --metrics-auth) metrics
// stay open; unknown routes are 404 and bad JSON 400, both with a JSON
// message; the file is read again by ReloadAPIKeys, and a broken file
// leaves the keys in force.
func TestAPIKeys(t *testing.T) {
	path, read, write := keyFile(t)
	s := startBroker(t, func(c *Config) { c.APIKeyFile = path })

	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, body, _ := httpDo(t, s, "GET", p, "", ""); code != http.StatusOK {
			t.Errorf("GET %s without a key: %d %q, want 200", p, code, body)
		}
	}
	for _, c := range []struct {
		method, path, key, body string
		want                    int
		says                    string // in the JSON error
	}{
		{"GET", "/api/v1/cluster", "", "", 401, "Authorization: Bearer"},
		{"GET", "/api/v1/cluster", read + "x", "", 401, "unknown API key"},
		{"GET", "/api/v1/cluster", write[:len(write)-1], "", 401, "unknown API key"},
		{"GET", "/api/v1/nowhere", "", "", 401, "API key is needed"},
		{"POST", "/api/v1/node/drain", "", "", 401, "API key is needed"},
		{"POST", "/x/../api/v1/node/drain", "", "", 401, "API key is needed"},
		{"POST", "//api/v1/node/drain", "", "", 401, "API key is needed"},
		{"POST", "/%61pi/v1/node/drain", "", "", 401, "API key is needed"},
		{"POST", "/api/v1/node/drain", read, "", 403, `"grafana" is read-only`},
		{"DELETE", "/api/v1/cluster", read, "", 403, "needs a write key"},
		{"GET", "/api/v1/nowhere", read, "", 404, "no such endpoint: GET /api/v1/nowhere"},
		{"POST", "/api/v1/node/drain", write, "{not json", 400, "bad JSON body"},
		{"POST", "/api/v1/node/drain", write, `{"rate": 5, "colour": "red"}`, 400, `unknown field "colour"`},
		{"POST", "/api/v1/node/drain", write, `{"rate": -1}`, 400, "rate must be at least 0"},
		{"POST", "/api/v1/node/drain", write, `{"lb_grace": "soon"}`, 400, `lb_grace must be a duration`},
		{"POST", "/api/v1/node/drain", write, `{} {}`, 400, "more than one value"},
	} {
		code, body, hdr := httpDo(t, s, c.method, c.path, c.key, c.body)
		if code != c.want {
			t.Errorf("%s %s (%s): %d %q, want %d", c.method, c.path, c.body, code, body, c.want)
			continue
		}
		if msg := apiErrorOf(t, body); !strings.Contains(msg, c.says) {
			t.Errorf("%s %s: error %q does not say %q", c.method, c.path, msg, c.says)
		}
		if code == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s: 401 without WWW-Authenticate: Bearer", c.method, c.path)
		}
		if strings.Contains(body, "goroutine") || strings.Contains(body, ".go:") {
			t.Errorf("%s %s: the answer shows code: %q", c.method, c.path, body)
		}
	}
	if s.Draining() {
		t.Fatal("a refused request started a drain")
	}
	for _, key := range []string{read, write} {
		code, body, _ := httpDo(t, s, "GET", "/api/v1/cluster", key, "")
		var v clusterView
		if code != http.StatusOK || json.Unmarshal([]byte(body), &v) != nil {
			t.Errorf("GET /api/v1/cluster with a key: %d %q", code, body)
		}
	}

	// A key added to the file works once the broker reloads it, and a
	// deleted one stops working.
	late, err := apikey.Add(path, "late", apikey.Read)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, _ := httpDo(t, s, "GET", "/api/v1/cluster", late, ""); code != http.StatusUnauthorized {
		t.Fatalf("a key added after start works before the reload: %d", code)
	}
	if err := apikey.Delete(path, "grafana"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadAPIKeys(); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := httpDo(t, s, "GET", "/api/v1/cluster", late, ""); code != http.StatusOK {
		t.Fatalf("the added key after the reload: %d, want 200", code)
	}
	if code, _, _ := httpDo(t, s, "GET", "/api/v1/cluster", read, ""); code != http.StatusUnauthorized {
		t.Fatalf("the deleted key after the reload: %d, want 401", code)
	}
	if err := os.WriteFile(path, []byte("nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadAPIKeys(); err == nil || !strings.Contains(err.Error(), path+":1") {
		t.Fatalf("reload of a broken file: %v, want an error naming %s:1", err, path)
	}
	if code, _, _ := httpDo(t, s, "GET", "/api/v1/cluster", late, ""); code != http.StatusOK {
		t.Fatalf("a failed reload dropped the keys in force: %d", code)
	}

	// A write key starts a drain.
	code, body, _ := httpDo(t, s, "POST", "/api/v1/node/drain", write, "")
	if code != http.StatusAccepted || !strings.Contains(body, `"draining":true`) {
		t.Fatalf("POST /api/v1/node/drain with a write key: %d %q, want 202 and the drain's status", code, body)
	}
}

// --metrics-auth closes /metrics to requests without a read key.
func TestMetricsAuth(t *testing.T) {
	path, read, write := keyFile(t)
	s := startBroker(t, func(c *Config) { c.APIKeyFile, c.MetricsAuth = path, true })
	if code, _, hdr := httpDo(t, s, "GET", "/metrics", "", ""); code != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") == "" {
		t.Fatalf("/metrics without a key: %d, want 401 with WWW-Authenticate", code)
	}
	if code, _, _ := httpDo(t, s, "GET", "/metrics", "wrong", ""); code != http.StatusUnauthorized {
		t.Fatalf("/metrics with a wrong key: %d, want 401", code)
	}
	for _, key := range []string{read, write} {
		if code, body, _ := httpDo(t, s, "GET", "/metrics", key, ""); code != http.StatusOK || !strings.Contains(body, "gannet_draining 0") {
			t.Fatalf("/metrics with a key: %d, want 200 and the metrics", code)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _, _ := httpDo(t, s, "GET", p, "", ""); code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200 (never behind a key)", p, code)
		}
	}
	// The flag alone would lock /metrics with no way in.
	cfg := DefaultConfig()
	cfg.MetricsAuth = true
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--metrics-auth needs --api-key-file") {
		t.Fatalf("Validate with --metrics-auth alone: %v", err)
	}
}

// Without --api-key-file the API reads as before, and refuses every
// change with a message that says how to allow it.
func TestAPIWithoutKeys(t *testing.T) {
	s := startBroker(t, nil)
	for _, p := range []string{"/api/v1/cluster", "/api/v1/node/drain"} {
		if code, body, _ := httpDo(t, s, "GET", p, "", ""); code != http.StatusOK {
			t.Errorf("GET %s without keys: %d %q, want 200", p, code, body)
		}
	}
	code, body, _ := httpDo(t, s, "POST", "/api/v1/node/drain", "", "")
	if code != http.StatusForbidden || !strings.Contains(apiErrorOf(t, body), "--api-key-file") {
		t.Fatalf("POST without keys: %d %q, want 403 naming --api-key-file", code, body)
	}
	if s.Draining() {
		t.Fatal("a refused POST started a drain")
	}
	if code, body, _ := httpDo(t, s, "GET", "/api/v2/anything", "", ""); code != http.StatusNotFound ||
		!strings.Contains(apiErrorOf(t, body), "no such endpoint") {
		t.Fatalf("unknown route: %d %q, want a JSON 404", code, body)
	}
	if code, _, _ := httpDo(t, s, "GET", "/nowhere", "", ""); code != http.StatusNotFound {
		t.Fatalf("unknown route outside the API: %d, want 404", code)
	}

	// A key file that cannot be read stops New, naming the flag.
	cfg := DefaultConfig()
	cfg.APIKeyFile = filepath.Join(t.TempDir(), "missing")
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "--api-key-file") {
		t.Fatalf("New with a missing key file: %v", err)
	}
}

// A handler's panic is a 500 that says nothing of the code; the stack
// goes to the log.
func TestHTTPPanicShowsNoStack(t *testing.T) {
	s := startBroker(t, nil)
	h := s.guardHTTP(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("secret detail") }))
	for _, p := range []string{"/api/v1/cluster", "/healthz"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		body := rec.Body.String()
		if rec.Code != http.StatusInternalServerError || strings.Contains(body, "secret") || strings.Contains(body, "goroutine") {
			t.Errorf("%s: %d %q, want 500 without the panic's text", p, rec.Code, body)
		}
	}
}
