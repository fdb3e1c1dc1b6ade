package server

import (
	"bytes"
	"context"

	"github.com/gannetmq/gannet/fanout"
)

// Retained messages on subscribe are paced. A SUBSCRIBE whose filters
// match many retained messages does not encode them all at once: the
// connection gets a backlog, the messages the filters match (pointers to
// the retained store's own copies, looked up on the loop's turn after
// the SUBSCRIBE, once its SUBACK and the other SUBSCRIBEs read with it
// are answered, unless the store holds few), and the backlog is
// delivered through the same flow control as everything else:
//   - at most retainTurn messages or retainTurnBytes per turn of the
//     loop, the rest on the loop's next turn (gnet.Conn.Wake), so that the
//     loop's other clients are served in between;
//   - nothing while the connection's unwritten bytes are above its
//     outbound high-water mark; the broker's clock resumes it every 10 ms
//     until they are not (resumeRetained), since gnet says nothing when
//     a connection's output drains;
//   - QoS 1/2 only while the session's inflight window has room and its
//     queue is empty; an acknowledgement resumes it (handleAck).
//
// Nothing is truncated: the session queue's bounds do not apply, since a
// backlog holds only pointers. A message whose topic was given a new
// retained message, or cleared, since the SUBSCRIBE is skipped: the
// subscriber received the new one live, and the old one must not follow
// it. The backlog belongs to the connection: if it ends first, the rest
// is not queued for the session (the messages stay retained, and the next
// SUBSCRIBE gets them).

const (
	retainTurn      = 256
	retainTurnBytes = 256 << 10
	// retainMatchNow is the number of retained messages up to which a
	// SUBSCRIBE looks them up and starts sending at once, in its own
	// turn: the lookup costs little, and the first messages follow the
	// SUBACK without a turn of the loop in between.
	retainMatchNow = 4096
)

// retainBacklog is a connection's retained messages still to deliver, in
// SUBSCRIBE order.
type retainBacklog struct {
	batches []retainBatch
	waking  bool // a Wake is pending for the next turn
	listed  bool // on the loop's retainWait
}

type retainBatch struct {
	filter  []byte // matched on the batch's first turn
	matched bool
	opts    fanout.Options
	msgs    []*message
	next    int
}

// queueRetained adds the retained messages filter matches, for a
// subscription with opts, to c's backlog, and has the loop look them up
// on its next turn: the SUBACK goes at once, and the SUBSCRIBEs the loop
// has read meanwhile (others' too) are answered before any of the work a
// filter matching many retained messages makes. On c's loop.
func (c *client) queueRetained(filter []byte, opts fanout.Options) {
	if c.retainQ == nil {
		c.retainQ = &retainBacklog{}
	}
	c.retainQ.batches = append(c.retainQ.batches, retainBatch{filter: bytes.Clone(filter), opts: opts})
	if !c.retainQ.waking {
		c.retainQ.waking = true
		_ = c.gc.Wake(nil) // onTraffic pumps it
	}
}

// pumpRetained delivers what c's backlog may deliver in this turn. On c's
// loop.
func (c *client) pumpRetained(ob *outbox) {
	b := c.retainQ
	if b == nil || c.closed || !c.connected {
		return
	}
	b.waking = false
	room := min(c.srv.outboundHighWater()-c.gc.OutboundBuffered(), retainTurnBytes)
	for _, p := range c.pend {
		room -= len(p) // not written yet: coalesced (coalesce.go) or waiting for a commit
	}
	if room <= 0 || c.slow() {
		c.waitRetained()
		return
	}
	now := c.srv.now()
	var mg fanout.Merged
	for n := 0; len(b.batches) > 0; {
		rb := &b.batches[0]
		if !rb.matched {
			rb.msgs, rb.matched, rb.filter = c.srv.retained.match(nil, rb.filter), true, nil
		}
		for rb.next < len(rb.msgs) {
			if room <= 0 {
				c.waitRetained()
				return
			}
			if n == retainTurn {
				b.waking = true
				_ = c.gc.Wake(nil) // the rest on the next turn (onTraffic)
				return
			}
			n++
			m := rb.msgs[rb.next]
			if m.expired(now) || !c.srv.retained.holds(m) || !c.sess.mayRead(rb.opts, m.topic) {
				rb.msgs[rb.next] = nil
				rb.next++
				continue
			}
			mg = fanout.Merged{}
			mg.Add(rb.opts)
			qos, _ := mg.Deliver(m.qos, true, true)
			if qos > 0 && !c.sess.windowOpen() {
				return // an acknowledgement resumes it (handleAck)
			}
			c.sess.deliverStored(ob, m, qos, true, mg.SubIDs, now)
			rb.msgs[rb.next] = nil
			rb.next++
			room -= len(m.topic) + len(m.payload) + 16
		}
		b.batches[0] = retainBatch{}
		b.batches = b.batches[1:]
	}
	c.retainQ = nil
}

// waitRetained lists c for resumeRetained.
func (c *client) waitRetained() {
	if c.retainQ.listed {
		return
	}
	c.retainQ.listed = true
	c.loop.retainWait = append(c.loop.retainWait, c)
	c.srv.retainWaiting.Add(1)
}

// resumeRetained goes on with the backlogs that wait for their
// connection's output to drain, on each loop. The clock calls it every
// 10 ms while any waits.
func (s *Server) resumeRetained() {
	for _, l := range s.loopList() {
		_ = l.el.Execute(context.Background(), runFunc(func() {
			list := l.retainWait
			if len(list) == 0 {
				return
			}
			l.retainWait = nil
			s.retainWaiting.Add(-int64(len(list)))
			for _, c := range list {
				if c.retainQ != nil {
					c.retainQ.listed = false
					c.pumpRetained(l.ob)
				}
			}
			l.ob.flush()
		}))
	}
}

// windowOpen reports whether a QoS 1/2 message would be sent at once
// rather than queued.
func (ss *session) windowOpen() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.mu.queue.len() == 0 && len(ss.mu.inflight) < int(ss.mu.window)
}

// holds reports whether m is still the retained message of its topic.
func (r *retainStore) holds(m *message) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.get(m.topic) == m
}
