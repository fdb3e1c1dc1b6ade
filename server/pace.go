package server

import (
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
)

// Holding publishers back. When a lane to a peer falls behind (the peer
// takes messages more slowly than this node's clients publish them, as at
// overload), reading more publishes would only fill the lane until it
// drops QoS 0 messages. Instead a connected client's input stays in its
// read buffer, as a parked CONNECT's does, until the lanes catch up; then
// the held connections are woken. No event loop waits: the loop serves
// its other connections meanwhile, and a client whose input is held gets
// no PINGRESP or acknowledgement either, so the client slows down as it
// would behind a slower broker. It is bounded twice: a client's held input
// is read anyway past holdLimit bytes, and a lane that stops writing
// (a peer that stopped reading) stops counting within
// --interlink-backpressure, after which its QoS 0 is dropped as before.

// holdLimit bounds the input held back per connection.
const holdLimit = 256 << 10

// held lists the connections whose input waits for the lanes. gen counts
// the lists woken so far: a client knows it is on the current list when
// its heldGen matches.
type held struct {
	gen   atomic.Uint64
	mu    sync.Mutex
	conns []gnet.Conn
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
}

func newHeld() *held {
	h := &held{kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	h.gen.Store(1)
	return h
}

// holdBack reports whether c's input is to wait for the lanes, and if so
// registers c to be woken. At the start of a read (first), a connection
// woken from an earlier list reads at least one packet before it is held
// again, so that under lasting overload every held client still makes
// progress rather than losing the race for the lanes to others each time.
// On c's loop.
func (cl *cluster) holdBack(c *client, first bool) bool {
	if !c.connected || c.closed || !cl.node.Behind() || c.gc.InboundBuffered() >= holdLimit {
		return false
	}
	h := cl.held
	gen := h.gen.Load()
	r := c.rareState()
	if r.heldGen == gen {
		return true // on the list: woken with the rest
	}
	if first && r.heldGen != 0 {
		r.heldGen = 0 // woken: one packet first
		return false
	}
	h.mu.Lock()
	r.heldGen = h.gen.Load()
	h.conns = append(h.conns, c.gc)
	kick := len(h.conns) == 1
	h.mu.Unlock()
	if kick {
		select {
		case h.kick <- struct{}{}:
		default:
		}
	}
	cl.s.stats.heldBack.Add(1)
	return true
}

// isHeld reports whether c is on the current list of held connections.
// On c's loop.
func (cl *cluster) isHeld(c *client) bool {
	return c.rare != nil && c.rare.heldGen != 0 && c.rare.heldGen == cl.held.gen.Load()
}

// release wakes the held connections each time the lanes catch up, until
// stop closes.
func (cl *cluster) release() {
	h := cl.held
	defer close(h.done)
	var conns []gnet.Conn
	for {
		select {
		case <-h.kick:
		case <-h.stop:
			return
		}
		select {
		case <-cl.node.Caught():
		case <-h.stop:
			return
		}
		h.mu.Lock()
		conns, h.conns = h.conns, conns[:0]
		h.gen.Add(1)
		h.mu.Unlock()
		for i, gc := range conns {
			_ = gc.Wake(nil) // a closed connection has nothing to read
			conns[i] = nil
		}
	}
}
