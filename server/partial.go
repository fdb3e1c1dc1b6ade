package server

import (
	"math/bits"
	"sync"

	"github.com/gannetmq/gannet/codec"
)

// A packet that arrives over several reads is kept by the client, not in
// gnet's input buffer. gnet's buffers come from one pool that every
// connection draws from, and one keeps the capacity it grew to: left in
// gnet, a maximum-size PUBLISH would grow a buffer to a megabyte that,
// back in the pool, would then hold a few bytes of another connection's
// half-sent packet for as long as that connection stalls. A client that
// sends large packets, and thousands that stall half-way through small
// ones, would pin a megabyte each. Kept here, a packet begun holds a
// buffer of its own declared size (at most --max-packet-size), freed once
// it is handled, and a stalled connection holds only the bytes it sent.
//
// Only the first packet of the input is kept this way, once it is known
// to be incomplete: whole packets that a hold leaves unread (a parked
// CONNECT, the publish rate, acknowledgements waiting for the disk, the
// cluster's lanes) stay in gnet's buffer, as before.

// partialKeep is the capacity of a kept-packet buffer that is reused for
// the next packet rather than freed.
const partialKeep = 1 << 10

// keepPartial takes rest, the input's last bytes, when they are the start
// of one packet not yet whole, and reports how many bytes it took (0 or
// len(rest)). Its buffer is of the packet's size class once the fixed
// header is whole (finishPartial grows one begun before).
func (c *client) keepPartial(rest []byte) int {
	need := c.partialNeed(rest)
	if need == 0 {
		return 0 // whole, or decode reports why it cannot be
	}
	r := c.rareState()
	if size := len(rest) + need; cap(r.partial) < size {
		r.partial = getPartial(size)
	}
	r.partial = append(r.partial[:0], rest...)
	return len(rest)
}

// partialNeed is how many more bytes the packet begun in p needs: at
// least one while its fixed header is incomplete, 0 when it is whole or
// cannot be (decode reports why).
func (c *client) partialNeed(p []byte) int {
	h, n, err := codec.DecodeFixedHeader(p)
	switch {
	case err == codec.ErrIncomplete:
		return 1
	case err != nil:
		return 0
	}
	if size := n + h.Remaining; size <= c.srv.cfg.MaxPacketSize && size > len(p) {
		return size - len(p)
	}
	return 0
}

// finishPartial completes the packet kept in c.rare.partial from gnet's
// buffer and handles it. It reports true when the packet is done with and
// the input goes on in gnet's buffer; false when it waits for more bytes,
// or a hold keeps it (whatever ends the hold wakes the connection), or it
// failed.
func (c *client) finishPartial(ob *outbox) bool {
	r := c.rare
	for need := c.partialNeed(r.partial); need > 0; need = c.partialNeed(r.partial) {
		k := min(need, c.gc.InboundBuffered())
		if k == 0 {
			return false
		}
		if want := len(r.partial) + need; cap(r.partial) < want && need > 1 {
			// The header came whole only now: room for the packet at
			// once, rather than growing as it arrives.
			r.partial = append(getPartial(want), r.partial...)
		}
		b, _ := c.gc.Peek(k)
		r.partial = append(r.partial, b...)
		_, _ = c.gc.Discard(k)
	}
	used, err := c.decode(ob, r.partial, 0)
	if err != nil {
		c.fail(ob, err)
		return false
	}
	if used < len(r.partial) {
		return false
	}
	if cap(r.partial) > partialKeep {
		putPartial(r.partial) // what the packet held is copied where it is kept
		r.partial = nil
	} else {
		r.partial = r.partial[:0]
	}
	return true
}

// dropPartial lets go of a packet begun, when the connection closed.
func (c *client) dropPartial() {
	putPartial(c.rare.partial)
	c.rare.partial = nil
}

// hasPartial reports whether c keeps the start of a packet.
func (c *client) hasPartial() bool { return c.rare != nil && len(c.rare.partial) > 0 }

// Buffers for kept packets larger than partialKeep, by power-of-two size
// class: a client that sends large packets one after another, or many
// clients that do, reuse them rather than allocating each anew (a
// megabyte a packet at the maximum size), and a class holds buffers only
// of its size, so a small packet never holds a large one.
var partialPools [bits.UintSize]sync.Pool

// getPartial returns an empty buffer of at least size bytes.
func getPartial(size int) []byte {
	if size <= partialKeep {
		return make([]byte, 0, size)
	}
	k := bits.Len(uint(size - 1))
	if v, ok := partialPools[k].Get().(*[]byte); ok {
		return (*v)[:0]
	}
	return make([]byte, 0, 1<<k)
}

// putPartial gives back a buffer from getPartial.
func putPartial(b []byte) {
	if c := cap(b); c > partialKeep && c&(c-1) == 0 {
		partialPools[bits.Len(uint(c-1))].Put(&b)
	}
}
