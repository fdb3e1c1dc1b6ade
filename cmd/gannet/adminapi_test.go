package main

import (
	"os"
	"strings"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// POST /api/v1/reload on the real binary rereads the config file as
// SIGHUP does: a new limit applies at once (200), and a change only a
// restart can make is refused with a 422 that names it, the running
// configuration staying.
func TestReloadOverAPI(t *testing.T) {
	keys := t.TempDir() + "/api-keys"
	ro, rw := addKey(t, keys, "grafana", "read"), addKey(t, keys, "ops", "write")
	file := writeFile(t, "gannet.toml", "max-connections = 0\n")
	b := startGannet(t, "--config", file, "--api-key-file="+keys)
	rewrite := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	if code, body := request(t, b, "POST", "/api/v1/reload", ro); code != 403 {
		t.Fatalf("reload with a read key: %d %s", code, body)
	}
	rewrite("max-connections = 1\n")
	if code, body := request(t, b, "POST", "/api/v1/reload", rw); code != 200 || !strings.Contains(body, `"reloaded":true`) {
		t.Fatalf("reload: %d %s", code, body)
	}
	dialMQTT(t, b.mqtt, codec.V5, "first")
	if code, _ := connectCode(t, b.mqtt, "second"); code != codec.QuotaExceeded {
		t.Fatalf("a second client got CONNACK %v after max-connections = 1, want 0x97", code)
	}

	rewrite("max-connections = 5\nevent-loops = 3\n")
	code, body := request(t, b, "POST", "/api/v1/reload", rw)
	if code != 422 || !strings.Contains(body, "only a restart can change event-loops") {
		t.Fatalf("a reload needing a restart: %d %s", code, body)
	}
	if code, _ := connectCode(t, b.mqtt, "third"); code != codec.QuotaExceeded {
		t.Fatalf("after the refused reload a client got CONNACK %v, want 0x97 still", code)
	}
}
