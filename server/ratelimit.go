package server

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/gannetmq/gannet/codec"
)

// Per-client publish rates (--max-publish-rate, --max-publish-bytes-rate).
// The byte rate counts SUBSCRIBE and UNSUBSCRIBE packets too: the work a
// client makes the broker do grows with their size as with a PUBLISH's
// (a SUBSCRIBE may list a hundred thousand filters, each to check and
// answer), and a client that sends them again as soon as they are
// answered would otherwise be read as fast as it writes.
// A client past its rate is not refused: its next packet waits in the
// read buffer, with everything behind it, until the bucket has room, and
// a timer wakes the connection then. The client meanwhile gets no
// acknowledgement, and TCP slows it down as a slower broker would. Its
// input is held up to holdLimit beyond the packet that waits (as pace.go
// holds input for the cluster's lanes); a client that sends more than
// that while held keeps exceeding its rate on purpose (rateFlood): MQTT 5
// clients get DISCONNECT 0x96 (message rate too high), MQTT 3 ones are
// closed.

// pubLimit is a client's publish buckets; nil fields are not limited.
type pubLimit struct {
	msgs  *rate.Limiter
	bytes *rate.Limiter
	// waking is set while a timer to wake the connection is pending.
	waking atomic.Bool
	// held is the size of the packet waiting for the buckets (on the
	// client's loop).
	held int
}

// newPubLimit makes the buckets the configuration asks for, or nil. A
// client that left this node with its buckets not yet full again takes
// them up where it left them (rateMemo).
func (s *Server) newPubLimit(id string) *pubLimit {
	cfg := s.limits()
	if cfg.MaxPublishRate <= 0 && cfg.MaxPublishBytesRate <= 0 {
		return nil
	}
	msgs, bytes := pubBuckets(cfg)
	if l := s.rates.take(id, msgs, bytes); l != nil {
		return l
	}
	l := &pubLimit{}
	if msgs.rate > 0 {
		l.msgs = rate.NewLimiter(msgs.rate, msgs.burst)
	}
	if bytes.rate > 0 {
		l.bytes = rate.NewLimiter(bytes.rate, bytes.burst)
	}
	return l
}

// bucket is the size of a rate.Limiter; rate 0: no bucket.
type bucket struct {
	rate  rate.Limit
	burst int
}

// pubBuckets is the buckets cfg asks for: messages, bytes.
func pubBuckets(cfg *Config) (msgs, bytes bucket) {
	if r := cfg.MaxPublishRate; r > 0 {
		msgs = bucket{rate.Limit(r), max(1, int(r))}
	}
	if r := cfg.MaxPublishBytesRate; r > 0 {
		// A packet never needs more than the bucket holds.
		bytes = bucket{rate.Limit(r), max(int(r), cfg.MaxPacketSize)}
	}
	return msgs, bytes
}

// A client would escape its rate by connecting again: a new connection's
// buckets start full, a second's worth, and a client cut off for its rate
// (or one that just leaves) could spend that again at every reconnect.
// (The hostile torture scenario's maximum-size publisher reconnected 60
// times a second and was read a megabyte and more each time.) So the
// buckets a connection leaves with, when not full, are kept by client id
// until they would be full again, and the client's next connection to
// this node takes them up. Buckets of a configuration changed since
// (SIGHUP) are not taken up. At most rateMemoMax clients are remembered;
// past it, ones whose buckets are full again are forgotten first, then
// any.
type rateMemo struct {
	mu sync.Mutex
	m  map[string]rateLeft
}

// rateLeft is buckets a client left with.
type rateLeft struct {
	msgs, bytes *rate.Limiter
	full        time.Time // when both are full again
}

const rateMemoMax = 1 << 16

// leave keeps the buckets of client id's connection, if not full.
func (r *rateMemo) leave(id string, l *pubLimit) {
	now := time.Now()
	var full time.Time
	for _, lim := range []*rate.Limiter{l.msgs, l.bytes} {
		if lim == nil || lim.Limit() <= 0 {
			continue
		}
		if missing := float64(lim.Burst()) - lim.TokensAt(now); missing > 0 {
			t := now.Add(time.Duration(missing / float64(lim.Limit()) * float64(time.Second)))
			if t.After(full) {
				full = t
			}
		}
	}
	if full.IsZero() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string]rateLeft)
	}
	if len(r.m) >= rateMemoMax {
		makeRoom(r.m, rateMemoMax, func(v rateLeft) bool { return !v.full.After(now) })
	}
	r.m[id] = rateLeft{msgs: l.msgs, bytes: l.bytes, full: full}
}

// take returns client id's buckets as it left them, when they are not
// full yet and are of the sizes asked for; nil otherwise.
func (r *rateMemo) take(id string, msgs, bytes bucket) *pubLimit {
	r.mu.Lock()
	left, ok := r.m[id]
	delete(r.m, id)
	r.mu.Unlock()
	if !ok || !left.full.After(time.Now()) || !sized(left.msgs, msgs) || !sized(left.bytes, bytes) {
		return nil
	}
	// A new pubLimit: a wake-up timer of the old connection's may still
	// be pending on the old one.
	return &pubLimit{msgs: left.msgs, bytes: left.bytes}
}

// sized reports whether lim is the bucket b describes.
func sized(lim *rate.Limiter, b bucket) bool {
	if lim == nil {
		return b.rate == 0
	}
	return lim.Limit() == b.rate && lim.Burst() == b.burst
}

// rateFlood counts and returns the refusal of a client that sent more than
// holdLimit past the packet held for its rate.
func (c *client) rateFlood() *codec.Error {
	c.srv.stats.rateDisconnects.Inc()
	return &codec.Error{Code: codec.MessageRateTooHigh,
		Msg: "sending past --max-publish-rate or --max-publish-bytes-rate with more than the broker holds back"}
}

// rateCounted reports whether packets of kind t take from a client's
// buckets.
func rateCounted(t codec.Type) bool {
	return t == codec.PUBLISH || t == codec.SUBSCRIBE || t == codec.UNSUBSCRIBE
}

// rateAllowed takes a packet of kind t (rateCounted) and size bytes from
// c's buckets (a PUBLISH from both, the others from the bytes bucket), or,
// when they have no room yet, takes nothing, arranges for the connection
// to be woken when they will, and reports false. On c's loop.
func (c *client) rateAllowed(t codec.Type, size int) bool {
	l := c.rare.limit
	now := time.Now()
	var delay time.Duration
	var rs [2]*rate.Reservation
	for i, lim := range []*rate.Limiter{l.msgs, l.bytes} {
		if lim == nil || i == 0 && t != codec.PUBLISH {
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
	l.held = size
	if t == codec.PUBLISH {
		c.srv.stats.publishDelayed.Inc()
	} else {
		c.srv.stats.subscribeDelayed.Inc()
	}
	if l.waking.CompareAndSwap(false, true) {
		gc := c.gc
		time.AfterFunc(delay, func() {
			l.waking.Store(false)
			_ = gc.Wake(nil)
		})
	}
	return false
}
