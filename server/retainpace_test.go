package server

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gannetmq/gannet/codec"
)

// retainMany stores n retained messages r/0 .. r/n-1 of size bytes each
// at qos, the publishes pipelined and their acknowledgements awaited.
func retainMany(t *testing.T, s *Server, n, size int, qos byte) {
	t.Helper()
	pub := dialRaw(t, s, codec.V5)
	pub.connect("retainer", nil)
	pad := bytes.Repeat([]byte("p"), size)
	for start := 0; start < n; start += 500 {
		var b []byte
		end := min(n, start+500)
		for i := start; i < end; i++ {
			p := &codec.Publish{Topic: []byte("r/" + strconv.Itoa(i)), Payload: pad, QoS: qos, Retain: true}
			if qos > 0 {
				p.PacketID = pub.nextID()
			}
			b = p.Append(b, pub.v)
		}
		pub.write(b)
		if qos > 0 {
			for i := start; i < end; i++ {
				if a, ok := pub.expect().(*codec.Ack); !ok || a.Code.IsError() {
					t.Fatalf("retained publish %d refused: %+v", i, a)
				}
			}
		}
	}
	_ = pub.ping()
	waitFor(t, "the retained messages stored", func() bool { return s.retained.len() == n })
}

// receiveRetained reads until every topic r/0 .. r/n-1 has arrived with
// the retain flag, acknowledging QoS 1, and fails on a duplicate.
func receiveRetained(t *testing.T, rc *rawConn, n int) {
	t.Helper()
	seen := make(map[string]bool, n)
	for len(seen) < n {
		p, ok := rc.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected PUBLISH, %d of %d retained messages received", len(seen), n)
		}
		if !p.Retain || seen[string(p.Topic)] {
			t.Fatalf("%s: retain %v, already seen %v", p.Topic, p.Retain, seen[string(p.Topic)])
		}
		seen[string(p.Topic)] = true
		if p.QoS == 1 {
			rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		}
	}
}

// Retained messages on subscribe are not cut short by the session
// queue's bound: at QoS 1 they go out as the inflight window frees, all
// of them. A topic retained anew while its old message waits gets only
// the new one.
func TestRetainedOnSubscribeNotTruncated(t *testing.T) {
	const n, window = 2000, 4
	s := startBroker(t, func(c *Config) {
		c.MaxQueuedMessages = 10
		c.MaxInflight = window
	})
	retainMany(t, s, n, 16, 1)
	sub := dialRaw(t, s, codec.V5)
	sub.connect("sub", nil)
	sub.subscribe("r/#", 1)
	// The window is full and nothing is acknowledged yet.
	seen := map[string]bool{}
	var first []*codec.Publish
	for range window {
		p, ok := sub.expect().(*codec.Publish)
		if !ok || !p.Retain {
			t.Fatalf("expected a retained PUBLISH, got %+v", p)
		}
		seen[string(p.Topic)] = true
		first = append(first, p)
	}
	renewed := ""
	for i := range n {
		if topic := "r/" + strconv.Itoa(i); !seen[topic] {
			renewed = topic
			break
		}
	}
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked(renewed, "new", 1, true)
	for _, p := range first {
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	for len(seen) < n {
		p, ok := sub.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected PUBLISH, %d of %d topics received", len(seen), n)
		}
		topic := string(p.Topic)
		if seen[topic] {
			t.Fatalf("%s delivered twice", topic)
		}
		seen[topic] = true
		if topic == renewed && string(p.Payload) != "new" {
			t.Fatalf("%s: the old retained message followed the SUBSCRIBE, not the new one", topic)
		}
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	if got := s.stats.droppedQueueFull.Get(); got != 0 {
		t.Fatalf("%d messages dropped for a full queue", got)
	}
}

// A client that subscribes to many retained messages and does not read
// makes the broker hold at most about its outbound high-water mark, not
// every message; a client on the same loop is served meanwhile; the
// reader then gets every message, and a topic retained anew while the
// backlog waits ends with its new message.
func TestRetainedOnSubscribePaced(t *testing.T) {
	const highWater = 64 << 10
	s := startBroker(t, func(c *Config) {
		c.EventLoops = 1
		c.OutboundHighWater = highWater
		c.SlowTimeout = 0
	})
	const n, size = 10000, 1 << 10 // 10 MiB: more than the socket buffers hold
	retainMany(t, s, n, size, 0)

	// A small receive buffer keeps the kernel from taking it all.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		_ = rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10) })
		return err
	}}
	nc, err := d.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	sub := &rawConn{t: t, c: nc, r: bufio.NewReader(nc), v: codec.V5}
	sub.connect("sub", nil)
	sub.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("r/#")}}})
	// sub reads nothing for now.
	other := dialRaw(t, s, codec.V5)
	other.connect("other", nil)
	other.subscribe("unrelated", 0)

	// Once the kernel's buffers are full, what the broker holds for sub
	// stays near the high-water mark.
	outbound := func() int {
		got := make(chan int, 1)
		for _, l := range s.loopList() {
			_ = l.el.Execute(context.Background(), runFunc(func() {
				for _, c := range l.conns {
					if c.id == "sub" {
						got <- c.gc.OutboundBuffered()
					}
				}
			}))
		}
		return <-got
	}
	waitFor(t, "sub above its high-water mark", func() bool { return outbound() > highWater })
	_ = other.ping() // several sweeps later, nothing more has been added
	if got := outbound(); got > highWater+512<<10 {
		t.Fatalf("broker holds %d bytes for a client that does not read (high-water mark %d)", got, highWater)
	}

	if _, ok := sub.expect().(*codec.Suback); !ok {
		t.Fatal("expected SUBACK first")
	}
	receiveRetained(t, sub, n)
	if got := sub.ping(); len(got) != 0 {
		t.Fatalf("%d more packets after every topic arrived", len(got))
	}
}
