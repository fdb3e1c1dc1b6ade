package server

import (
	"slices"
	"strings"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// Reload changes limits on a running broker, for the clients already
// connected too: a bound per address counts the connections opened before
// it was set, a subscription bound holds a connected client's next
// SUBSCRIBE. A bad configuration, or turning the memory limit on, changes
// nothing.
func TestReloadLimits(t *testing.T) {
	s := startBroker(t, nil)
	a := dialRaw(t, s, codec.V5)
	a.connect("a", nil)
	b := dialRaw(t, s, codec.V311)
	b.connect("b", nil)

	cfg := s.cfg
	cfg.MaxConnectionsPerIP = 2
	cfg.MaxSubscriptions = 1
	cfg.MaxConnectionRate = 1000
	cfg.ReceiveMaximum = 7 // not reloadable: ignored
	changed, err := s.Reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"max-connections-per-ip", "max-connection-rate", "max-subscriptions"}; !slices.Equal(changed, want) {
		t.Fatalf("changed %q, want %q", changed, want)
	}
	if s.adm.limiters[kindMQTT].Load() == nil {
		t.Error("no connection rate bucket after the reload")
	}
	expectRefused(t, s, nil, codec.V5, codec.QuotaExceeded) // a and b hold 127.0.0.1's two places
	a.subscribe("t/1", 0)
	a.send(&codec.Subscribe{PacketID: a.nextID(), Subs: []codec.Subscription{{Filter: []byte("t/2")}}})
	if sa, ok := a.expect().(*codec.Suback); !ok || sa.Codes[0] != codec.QuotaExceeded {
		t.Fatalf("a second subscription after the reload: %+v, want SUBACK 0x97", sa)
	}

	bad := cfg
	bad.MaxInflight = 0
	if _, err := s.Reload(bad); err == nil || !strings.Contains(err.Error(), "--max-inflight") {
		t.Fatalf("Reload of an invalid configuration: %v", err)
	}
	on := cfg
	on.MemoryLimit = 1 << 30
	on.MaxSubscriptions = 5
	if _, err := s.Reload(on); err == nil || !strings.Contains(err.Error(), "--memory-limit") {
		t.Fatalf("Reload turning the memory limit on: %v", err)
	}
	if got := s.limits().MaxSubscriptions; got != 1 {
		t.Fatalf("a refused reload changed --max-subscriptions to %d", got)
	}

	cfg.MaxConnectionsPerIP = 0
	cfg.MaxConnectionRate = 0
	if _, err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if s.adm.limiters[kindMQTT].Load() != nil {
		t.Error("a connection rate bucket after the bound was lifted")
	}
	c := dialRaw(t, s, codec.V5)
	if ca := c.connect("c", nil); ca.Code != codec.Success {
		t.Fatalf("with no bound per address: CONNACK %v", ca.Code)
	}
	waitFor(t, "the refused connection released", func() bool { return s.adm.refusing.Load() == 0 })
	_ = c.c.Close()
	_ = b.c.Close()
	waitFor(t, "the per-address count back to one", func() bool {
		s.adm.mu.Lock()
		defer s.adm.mu.Unlock()
		return len(s.adm.byIP) == 1 && s.adm.byIP[ipOf(a.c.LocalAddr().String())] == 1
	})
}
