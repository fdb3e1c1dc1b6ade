package server

import (
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Per-client publish rates (--max-publish-rate, --max-publish-bytes-rate).
// A client past its rate is not refused: its next PUBLISH waits in the
// read buffer, with everything behind it, until the bucket has room, and
// a timer wakes the connection then. The client meanwhile gets no
// acknowledgement, and TCP slows it down as a slower broker would. Its
// input is held up to holdLimit (as pace.go holds input for the cluster's
// lanes); a client that sends more than that while held keeps exceeding
// its rate on purpose: MQTT 5 clients get DISCONNECT 0x96 (message rate
// too high), MQTT 3 ones are closed.

// pubLimit is a client's publish buckets; nil fields are not limited.
type pubLimit struct {
	msgs  *rate.Limiter
	bytes *rate.Limiter
	// waking is set while a timer to wake the connection is pending.
	waking atomic.Bool
}

// newPubLimit makes the buckets the configuration asks for, or nil.
func (s *Server) newPubLimit() *pubLimit {
	cfg := s.limits()
	if cfg.MaxPublishRate <= 0 && cfg.MaxPublishBytesRate <= 0 {
		return nil
	}
	l := &pubLimit{}
	if r := cfg.MaxPublishRate; r > 0 {
		l.msgs = rate.NewLimiter(rate.Limit(r), max(1, int(r)))
	}
	if r := cfg.MaxPublishBytesRate; r > 0 {
		// A packet never needs more than the bucket holds.
		l.bytes = rate.NewLimiter(rate.Limit(r), max(int(r), cfg.MaxPacketSize))
	}
	return l
}

// publishAllowed takes a PUBLISH of size bytes from c's buckets, or, when
// they have no room yet, takes nothing, arranges for the connection to be
// woken when they will, and reports false. On c's loop.
func (c *client) publishAllowed(size int) bool {
	l := c.rare.limit
	now := time.Now()
	var delay time.Duration
	var rs [2]*rate.Reservation
	for i, lim := range []*rate.Limiter{l.msgs, l.bytes} {
		if lim == nil {
			continue
		}
		n := 1
		if i == 1 {
			n = size
		}
		rs[i] = lim.ReserveN(now, n)
		delay = max(delay, rs[i].DelayFrom(now))
	}
	if delay == 0 {
		return true
	}
	for _, r := range rs {
		if r != nil {
			r.CancelAt(now)
		}
	}
	c.srv.stats.publishDelayed.Inc()
	if l.waking.CompareAndSwap(false, true) {
		gc := c.gc
		time.AfterFunc(delay, func() {
			l.waking.Store(false)
			_ = gc.Wake(nil)
		})
	}
	return false
}
