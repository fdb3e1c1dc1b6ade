package server

import (
	"context"
	"testing"
	"unsafe"

	"github.com/gannetmq/gannet/codec"
)

// TestClientSize keeps the per-connection structs in the allocator's
// 224-byte size class: a broker holds hundreds of thousands of them, and
// a field that pushes one into the next class (240) costs 16 bytes of
// every connection. Move what few connections use into connectInfo or
// clientRare, or order the fields so that they pack, before raising
// these bounds.
func TestClientSize(t *testing.T) {
	if n := unsafe.Sizeof(client{}); n > 224 {
		t.Errorf("client is %d bytes, want at most 224", n)
	}
	if n := unsafe.Sizeof(session{}); n > 224 {
		t.Errorf("session is %d bytes, want at most 224", n)
	}
}

// TestIdleConnectionHoldsLittle connects a plain MQTT 3.1.1 client (clean
// session, no subscription, no will) and checks that, once the sweep has
// run, its connection and session hold nothing but their structs: no
// write buffers, no rarely used state, no empty maps.
func TestIdleConnectionHoldsLittle(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V311)
	rc.connect("idle", func(p *codec.Connect) { p.KeepAlive = 60 })

	type held struct {
		found, connected       bool
		pend, arena            int
		rare, info             bool
		subs, inflight, rxQoS2 bool
		keepAlive              uint16
		remote                 string
	}
	got := make(chan held, 2)
	for _, l := range s.loopList() {
		err := l.el.Execute(context.Background(), runFunc(func() {
			l.sweep(s.now())
			var h held
			for _, c := range l.conns {
				if c.id != "idle" {
					continue
				}
				h.found = true
				h.pend, h.arena = cap(c.pend), cap(c.arena)
				h.rare, h.info = c.rare != nil, c.info != nil
				h.keepAlive, h.remote, h.connected = c.keepAlive, c.remote(), c.connected
				c.sess.mu.Lock()
				h.subs = c.sess.mu.subs != nil
				h.inflight = c.sess.mu.inflight != nil
				h.rxQoS2 = c.sess.mu.rxQoS2 != nil
				c.sess.mu.Unlock()
			}
			got <- h
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	var h held
	for range s.loopList() {
		if g := <-got; g.found {
			h = g
		}
	}
	switch {
	case !h.found:
		t.Fatal("the client is on no loop's list")
	case !h.connected:
		t.Fatal("the client is not connected")
	case h.pend != 0 || h.arena != 0:
		t.Errorf("idle connection holds write buffers: pend cap %d, arena cap %d", h.pend, h.arena)
	case h.rare || h.info:
		t.Errorf("plain client has out-of-line state: rare %v, info %v", h.rare, h.info)
	case h.subs || h.inflight || h.rxQoS2:
		t.Errorf("session without subscriptions or QoS 1/2 has maps: subs %v, inflight %v, rxQoS2 %v", h.subs, h.inflight, h.rxQoS2)
	}
	if h.keepAlive != 60 {
		t.Errorf("keepalive %d s, want 60", h.keepAlive)
	}
	if want := rc.c.LocalAddr().String(); h.remote != want {
		t.Errorf("remote address %q, want %q", h.remote, want)
	}
}
