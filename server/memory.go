package server

import (
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// The memory limit (--memory-limit). cmd/gannet gives the Go runtime the
// same limit (debug.SetMemoryLimit, as GOMEMLIMIT does), so the garbage
// collector works harder as the broker nears it; the broker itself sheds
// load past a high-water mark of 90% of it: new connections and new
// persistent sessions are refused (0x97 / 3, counted with reason
// memory_limit), and a receiver counts as slow, losing QoS 0 messages,
// at a sixteenth of --outbound-high-water. Below 80% service resumes by
// itself. Each change is logged once and shown in gannet_memory_high.

const (
	memHighPercent   = 90
	memResumePercent = 80
	memCheckEvery    = 250 * time.Millisecond
)

// memGuard watches the memory the Go runtime holds against the limit.
type memGuard struct {
	limit atomic.Int64 // bytes; 0: none
	high  atomic.Bool
	used  atomic.Int64 // at the last look
}

// memSamples are what the guard reads: all the memory the runtime holds
// from the OS, less what it has given back.
var memSamples = []metrics.Sample{
	{Name: "/memory/classes/total:bytes"},
	{Name: "/memory/classes/heap/released:bytes"},
}

// memoryLoop looks at the memory in use every memCheckEvery until the
// broker stops.
func (s *Server) memoryLoop() {
	defer s.wg.Done()
	t := time.NewTicker(memCheckEvery)
	defer t.Stop()
	samples := make([]metrics.Sample, len(memSamples))
	copy(samples, memSamples)
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		metrics.Read(samples)
		used := int64(samples[0].Value.Uint64() - samples[1].Value.Uint64())
		s.mem.used.Store(used)
		limit := s.mem.limit.Load()
		switch {
		case limit <= 0:
		case !s.mem.high.Load() && used > limit/100*memHighPercent:
			s.mem.high.Store(true)
			s.log.Warn("memory above the high-water mark: refusing new connections and persistent sessions, dropping QoS 0 to slow receivers",
				"used_bytes", used, "limit_bytes", limit)
		case s.mem.high.Load() && used < limit/100*memResumePercent:
			s.mem.high.Store(false)
			s.log.Info("memory below the high-water mark again: service resumes", "used_bytes", used, "limit_bytes", limit)
		}
	}
}

// outboundHighWater is the outbound buffer level past which a receiver is
// slow: lower while memory is short.
func (s *Server) outboundHighWater() int {
	hw := s.limits().OutboundHighWater
	if s.mem.high.Load() {
		return hw / 16
	}
	return hw
}
