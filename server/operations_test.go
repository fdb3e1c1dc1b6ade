package server

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

func TestSysTopics(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.SysInterval = 50 * time.Millisecond })
	all := sub(t, s, codec.V5, "all", codec.Subscription{Filter: []byte("#")})
	sys := sub(t, s, codec.V5, "sys", codec.Subscription{Filter: []byte("$SYS/broker/#")})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{Topic: []byte("plain"), Payload: []byte("x")})
	if p := all.expect().(*codec.Publish); string(p.Topic) != "plain" {
		t.Fatalf("'#' subscriber got %q", p.Topic)
	}
	// Read $SYS updates until the counters reflect the three clients and
	// the message above.
	want := map[string]func(int64) bool{
		"$SYS/broker/clients/connected":   func(v int64) bool { return v == 3 },
		"$SYS/broker/messages/received":   func(v int64) bool { return v >= 1 },
		"$SYS/broker/messages/sent":       func(v int64) bool { return v >= 1 },
		"$SYS/broker/bytes/received":      func(v int64) bool { return v > 0 },
		"$SYS/broker/bytes/sent":          func(v int64) bool { return v > 0 },
		"$SYS/broker/messages/dropped":    func(v int64) bool { return v == 0 },
		"$SYS/broker/uptime":              func(v int64) bool { return v >= 0 },
		"$SYS/broker/subscriptions/count": func(v int64) bool { return v == 2 },
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(want) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not seen with the expected value: %v", want)
		}
		p := sys.expect().(*codec.Publish)
		ok, known := want[string(p.Topic)]
		if !known {
			continue
		}
		v, err := strconv.ParseInt(string(p.Payload), 10, 64)
		if err != nil {
			t.Fatalf("%s = %q: %v", p.Topic, p.Payload, err)
		}
		if ok(v) {
			delete(want, string(p.Topic))
		}
	}
	// '#' never matched a $SYS topic [MQTT-4.7.2-1]: the marker is the next
	// thing it sees.
	if got := drain(pub, all, "plain"); len(got) != 0 {
		t.Fatalf("'#' subscriber got %q", got[0].Topic)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func metric(t *testing.T, body, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("metric %s missing", name)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestHTTPEndpoints(t *testing.T) {
	s := startBroker(t, nil)
	base := "http://" + s.HTTPAddr()
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz %d", code)
	}
	rc := sub(t, s, codec.V5, "m", codec.Subscription{Filter: []byte("m")})
	pub := dialRaw(t, s, codec.V311)
	pub.connect("p", nil)
	for range 5 {
		pub.send(&codec.Publish{Topic: []byte("m"), Payload: []byte("12345")})
		rc.expect()
	}
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics %d", code)
	}
	if v := metric(t, body, "gannet_clients_connected"); v != 2 {
		t.Errorf("gannet_clients_connected %v, want 2", v)
	}
	if v := metric(t, body, "gannet_messages_received_total"); v != 5 {
		t.Errorf("gannet_messages_received_total %v, want 5", v)
	}
	if v := metric(t, body, "gannet_messages_sent_total"); v != 5 {
		t.Errorf("gannet_messages_sent_total %v, want 5", v)
	}
	if v := metric(t, body, "gannet_subscriptions"); v != 1 {
		t.Errorf("gannet_subscriptions %v, want 1", v)
	}
	if !strings.Contains(body, "process_resident_memory_bytes") {
		t.Error("process metrics missing")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// A v5 client hears why it is being disconnected.
	if got := rc.expectClosed(); len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.ServerShuttingDown {
		t.Fatalf("v5 client got %v, want DISCONNECT 0x8B", got)
	}
	if got := pub.expectClosed(); len(got) != 0 {
		t.Fatalf("3.1.1 client got %v", got)
	}
}

// While shutting down, /readyz turns 503 before connections are closed, so
// a load balancer stops sending new clients.
func TestReadyzDuringShutdown(t *testing.T) {
	s := startBroker(t, nil)
	base := "http://" + s.HTTPAddr()
	s.ready.Store(false) // the first step of Shutdown
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d while not ready", code)
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
}
