package bench

import (
	"context"
	"log/slog"
	"testing"

	"github.com/gannetmq/gannet/server"
)

// startBroker runs an in-process broker on a loopback port, without a
// store, $SYS or logs, changed by mutate when not nil, and stops it when
// the test ends.
func startBroker(t *testing.T, mutate func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Listen, cfg.HTTPListen, cfg.DataDir = "127.0.0.1:0", "", t.TempDir()
	cfg.Durability = server.DurabilityNone
	cfg.SysInterval = 0
	cfg.Logger = slog.New(slog.DiscardHandler)
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}
