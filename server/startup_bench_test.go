package server

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/gannetmq/gannet/persist"
)

// BenchmarkStartup measures a broker start on a data directory holding
// 100,000 offline sessions, each with one subscription and one queued
// 64-byte message: the time until Start returns and the heap the restored
// state takes.
func BenchmarkStartup(b *testing.B) {
	const sessions = 100_000
	dir := b.TempDir()
	st, err := persist.Open(persist.Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	var bt persist.Batch
	commit := func() {
		done := make(chan error, 1)
		st.Commit(&bt, func(err error) { done <- err })
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		bt.Reset()
	}
	now := time.Now().UnixNano()
	for i := range sessions {
		c := fmt.Sprintf("device-%06d", i)
		id := st.NextID()
		bt.PutSession(&persist.Session{ClientID: c, Expiry: time.Hour, DisconnectedAt: now,
			Subs: []persist.Subscription{{Filter: "devices/" + c + "/cmd", QoS: 1}}})
		bt.PutBody(&persist.Message{ID: id, Topic: []byte("devices/" + c + "/cmd"), Payload: make([]byte, 64), QoS: 1})
		bt.CreateEntry(c, &persist.Entry{Seq: 1, MsgID: id, QoS: 1})
		if bt.Len() >= 3000 {
			commit()
		}
	}
	commit()
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		cfg := DefaultConfig()
		cfg.Listen, cfg.HTTPListen, cfg.DataDir, cfg.SysInterval = "127.0.0.1:0", "", dir, 0
		s, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := s.Start(); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := len(s.sessions.m); n != sessions {
			b.Fatalf("%d sessions restored, want %d", n, sessions)
		}
		b.ReportMetric(took.Seconds(), "start-s")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/sessions, "heap-B/session")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = s.Shutdown(ctx)
		cancel()
	}
}
