package server

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

// benchConn is a connection whose writes cost nothing, so that a
// benchmark measures the broker's own work per message: the rest of
// gnet.Conn is never called on this path.
type benchConn struct {
	gnet.Conn
	written int
}

func (c *benchConn) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	c.written += n
	return n, nil
}

func (c *benchConn) OutboundBuffered() int { return 0 }

// BenchmarkFanout is one client's QoS 0 PUBLISH, handled as OnTraffic
// handles it (decoded, routed, flushed), to subscribers connected to the
// same event loop: the broker's CPU per publish and per delivery without
// the system calls. Every subscriber is written at once (--write-delay 0),
// the most writes a publish can cost.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, subscribers int) {
	cfg := DefaultConfig()
	cfg.WriteDelay = 0
	cfg.Durability = DurabilityNone
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	l := &loop{}
	l.ob = newOutbox(s, l)
	l.initCoalesce(0, 0)
	connect := func(id string) *client {
		c := &client{srv: s, gc: &benchConn{}, loop: l, id: id, version: codec.V5, connected: true}
		c.sess = newSession(s, id)
		c.sess.mu.cl = c
		l.conns = append(l.conns, c)
		return c
	}
	for i := range subscribers {
		c := connect(fmt.Sprintf("sub-%d", i))
		if _, _, err := s.subs.Subscribe("bench/fanout", c.sess, fanout.Options{}); err != nil {
			b.Fatal(err)
		}
	}
	pub := connect("pub")
	pkt := (&codec.Publish{Topic: []byte("bench/fanout"), Payload: make([]byte, 64)}).Append(nil, codec.V5)
	h, hn, err := codec.DecodeFixedHeader(pkt)
	if err != nil {
		b.Fatal(err)
	}
	body := pkt[hn:]
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if err := pub.handlePublish(l.ob, h, body); err != nil {
			b.Fatal(err)
		}
		l.ob.flush()
	}
	b.StopTimer()
	if got := s.stats.msgsOut.Get(); got < uint64(subscribers*b.N) {
		b.Fatalf("%d deliveries for %d publishes to %d subscribers", got, b.N, subscribers)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subscribers), "ns/delivery")
}
