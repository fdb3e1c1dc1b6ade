package server

import (
	"cmp"
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/trie"
)

// session is the state MQTT keeps for a client id across connections:
// subscriptions, the outbound inflight window and queue, and inbound QoS 2
// packet ids awaiting PUBREL. Every field under mu is guarded by it; the
// delivery path locks mu briefly from any event loop, so nothing under mu
// may block or do I/O.
type session struct {
	srv *Server
	id  string
	// acl is the compiled ACL of the client that last attached; deliveries
	// through a subscription the ACL allows only in part check it (auth.go).
	acl atomic.Pointer[auth.Matcher]

	mu struct {
		sync.Mutex
		cl       *client // attached connection; nil while offline
		gen      uint64  // bumped at every attach; stale timers compare it
		expiry   time.Duration
		expTimer *time.Timer

		// The maps are nil until their first entry (newSession).
		subs     map[string]fanout.Options // filter as subscribed -> options
		inflight map[uint16]*outMsg
		seq      uint64
		queue    msgQueue
		rxQoS2   map[uint16]struct{} // inbound QoS 2 ids awaiting PUBREL
		will     *pendingWill
		since    int64 // broker clock when the last connection attached
		// owner is the user whose connection made or last took the
		// session; another user may not take it (auth.go).
		owner string
		// movedTo names the peer an ended session moved to; for a grace
		// period its subscriptions stay and what still arrives here for
		// it is sent on (takeover.go).
		movedTo     string
		restoredSeq uint64 // see restored
		nextID      uint16
		window      uint16 // outbound inflight limit for the attached connection (MaxInflight <= 65535)
		ended       bool   // removed from the server; late deliveries are dropped
		// restored marks a session loaded from the store that no client
		// has attached to since: in a cluster its client may have moved
		// to another node while this one was down (stale.go). Entries
		// numbered above restoredSeq arrived after the load or after the
		// client last left.
		restored bool
		// routeSet says that routeDurable is decided (routeDurable).
		routeSet, routeDurable bool
		// recent is what the session was given in its first
		// recentWindow, in a cluster (origin.go); nil after.
		recent *recent
	}
}

// outMsg is one QoS 1/2 message on its way to a session: queued (pid 0) or
// inflight (pid set, waiting for PUBACK, or PUBREC then PUBCOMP).
type outMsg struct {
	msg      *message
	qos      byte
	retain   bool
	subIDs   []uint32
	pid      uint16
	idb      [2]byte // pid in wire order, written beside the shared frame
	released bool    // QoS 2: PUBREC received and PUBREL sent
	seq      uint64  // delivery order within the session; its store key
	stored   bool    // has an entry in the store (persistent session)
	// forgot and blocked wait for creator (outbox.track): the entry was
	// to be deleted, or a pump stopped at the message.
	forgot, blocked bool
	// creator is the outbox whose batch creates the entry, until it has
	// handed the batch to the store (outbox.track); nil after.
	creator *outbox
	// share is the shared subscription group the message came through;
	// nil for a plain subscription. What the session leaves unfinished
	// of such a message goes to another member (reshare.go).
	share *trie.Group[*session, fanout.Options]
}

// msgQueue is a FIFO of outMsg with a bound; when full the oldest goes.
type msgQueue struct {
	items []*outMsg
	head  int
	// bytes is what the queued messages weigh (queuedSize), also added
	// to total, the node's sum over every session (nil for none).
	bytes int64
	total *atomic.Int64
}

// queuedSize is what a queued message counts for against the byte
// bounds: its topic and payload, and the bookkeeping around them. A
// message queued for several sessions counts once in each.
func queuedSize(m *outMsg) int64 {
	return int64(len(m.msg.topic)+len(m.msg.payload)) + queuedOverhead
}

// queuedOverhead is about what a queued message costs besides its topic
// and payload: the outMsg, its share of the message and of the queue.
const queuedOverhead = 128

func (q *msgQueue) len() int { return len(q.items) - q.head }

func (q *msgQueue) add(n int64) {
	q.bytes += n
	if q.total != nil {
		q.total.Add(n)
	}
}

func (q *msgQueue) push(m *outMsg) {
	q.items = append(q.items, m)
	q.add(queuedSize(m))
}

// release gives up every queued message's weight, for a queue dropped
// whole.
func (q *msgQueue) release() {
	q.add(-q.bytes)
}

// peek returns the oldest queued message. REQUIRES: q.len() > 0.
func (q *msgQueue) peek() *outMsg { return q.items[q.head] }

func (q *msgQueue) pop() *outMsg {
	m := q.items[q.head]
	q.add(-queuedSize(m))
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head >= 1024 && q.head*2 >= len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return m
}

// filter keeps, in order, the queued messages keep returns true for.
func (q *msgQueue) filter(keep func(*outMsg) bool) {
	kept := q.items[q.head:q.head]
	for _, m := range q.items[q.head:] {
		if keep(m) {
			kept = append(kept, m)
		} else {
			q.add(-queuedSize(m))
		}
	}
	clear(q.items[q.head+len(kept):])
	q.items = q.items[:q.head+len(kept)]
}

// newSession makes an empty session. Its maps are made by their first
// entry (setSubLocked, setInflightLocked, addRxQoS2Locked): most clients
// never subscribe or exchange QoS 1/2, and three empty maps would be
// about 150 bytes of every idle connection. A nil map reads as empty.
func newSession(srv *Server, id string) *session {
	s := &session{srv: srv, id: id}
	s.mu.queue.total = &srv.queuedBytes
	s.newRecentLocked(srv.now())
	return s
}

// setSubLocked records the subscription to filter with opts.
// REQUIRES: s.mu held.
func (s *session) setSubLocked(filter string, opts fanout.Options) {
	if s.mu.subs == nil {
		s.mu.subs = make(map[string]fanout.Options)
	}
	s.mu.subs[filter] = opts
}

// setInflightLocked records m as inflight under its packet id.
// REQUIRES: s.mu held.
func (s *session) setInflightLocked(m *outMsg) {
	if s.mu.inflight == nil {
		s.mu.inflight = make(map[uint16]*outMsg)
	}
	s.mu.inflight[m.pid] = m
}

// addRxQoS2Locked records an inbound QoS 2 packet id awaiting PUBREL.
// REQUIRES: s.mu held.
func (s *session) addRxQoS2Locked(pid uint16) {
	if s.mu.rxQoS2 == nil {
		s.mu.rxQoS2 = make(map[uint16]struct{})
	}
	s.mu.rxQoS2[pid] = struct{}{}
}

// resumable reports whether a later connection may resume the session: a
// session with expiry 0 (a clean session, in MQTT 3 terms) ends with its
// connection, and its state is never reused [MQTT-3.1.2-6], even while that
// connection is still open or its end is still under way.
func (s *session) resumable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.mu.ended && s.mu.expiry > 0
}

// newOutMsgLocked makes the session's next QoS 1/2 delivery of msg.
// REQUIRES: s.mu held.
func (s *session) newOutMsgLocked(msg *message, qos byte, retain bool, subIDs []uint32) *outMsg {
	s.mu.seq++
	om := &outMsg{msg: msg, qos: qos, retain: retain, seq: s.mu.seq}
	if len(subIDs) > 0 {
		om.subIDs = append([]uint32(nil), subIDs...)
	}
	return om
}

// enqueueLocked appends m to the queue, dropping the oldest when the queue
// is at its bound in messages (--max-queued-messages) or bytes
// (--max-queued-bytes). Past the node's budget for every queue together
// (--max-queued-bytes-total) the session's own oldest messages make room,
// or m is refused, as --queue-full-policy says.
// REQUIRES: s.mu held.
func (s *session) enqueueLocked(ob *outbox, m *outMsg) {
	cfg := s.srv.limits()
	limit := cfg.MaxQueuedMessages
	size := queuedSize(m)
	if limit == 0 || (cfg.MaxQueuedBytes > 0 && size > cfg.MaxQueuedBytes) {
		s.srv.stats.droppedQueueFull.Add(1)
		return
	}
	q := &s.mu.queue
	for q.len() >= limit || (cfg.MaxQueuedBytes > 0 && q.bytes+size > cfg.MaxQueuedBytes) {
		s.forgetLocked(ob, q.pop())
		s.srv.stats.droppedQueueFull.Add(1)
	}
	if budget := cfg.MaxQueuedBytesTotal; budget > 0 && s.srv.queuedBytes.Load()+size > budget {
		if cfg.QueueFullPolicy == QueueFullRefuse {
			s.srv.stats.droppedBudget.Add(1)
			return
		}
		for q.len() > 0 && s.srv.queuedBytes.Load()+size > budget {
			s.forgetLocked(ob, q.pop())
			s.srv.stats.droppedBudget.Add(1)
		}
		if s.srv.queuedBytes.Load()+size > budget {
			// Others' queues hold the budget: this one keeps nothing.
			s.srv.stats.droppedBudget.Add(1)
			return
		}
	}
	q.push(m)
	s.storeEntryLocked(ob, m)
	ob.track(s, m)
}

// allocIDLocked returns a packet id not in use by the inflight window.
// REQUIRES: s.mu held and len(inflight) < 65535.
func (s *session) allocIDLocked() uint16 {
	for {
		s.mu.nextID++
		if s.mu.nextID == 0 {
			s.mu.nextID = 1
		}
		if _, used := s.mu.inflight[s.mu.nextID]; !used {
			return s.mu.nextID
		}
	}
}

// sendLocked makes m inflight on the attached client and queues its bytes in
// ob. dup marks a redelivery.
// REQUIRES: s.mu held, s.mu.cl != nil.
func (s *session) sendLocked(ob *outbox, m *outMsg, now int64) {
	cl := s.mu.cl
	if m.pid == 0 {
		m.pid = s.allocIDLocked()
		binary.BigEndian.PutUint16(m.idb[:], m.pid)
		s.setInflightLocked(m)
		s.storeEntryLocked(ob, m)
	}
	if m.released {
		ob.add(cl, cl.encodeAck(pubrelCode, m.pid))
		return
	}
	fr, ok := cl.encodeStored(m, now)
	if !ok {
		// Too big for this client: discard as if delivered [MQTT-3.1.2-25].
		delete(s.mu.inflight, m.pid)
		s.forgetLocked(ob, m)
		return
	}
	ob.addParts(cl, fr, m.idb[:], nil)
}

// mustQueueLocked reports whether a QoS 1/2 message for s that ob
// delivers waits in its queue rather than going into the inflight window
// now: no connection, a slow one, messages queued ahead of it, the window
// full, or other goroutines' deliveries in the window still on their way
// to the connection's loop (then the loop lets the queue out once they
// arrive).
// REQUIRES: s.mu held.
func (s *session) mustQueueLocked(ob *outbox) bool {
	cl := s.mu.cl
	if cl == nil || cl.slow() || s.mu.queue.len() > 0 || len(s.mu.inflight) >= int(s.mu.window) {
		return true
	}
	if ob.othersInTransit(cl) {
		ob.awaitTransit(cl)
		return true
	}
	return false
}

// pumpLocked moves queued messages into the inflight window while there is
// room and the connection is not slow.
// REQUIRES: s.mu held.
func (s *session) pumpLocked(ob *outbox, now int64) {
	cl := s.mu.cl
	if cl == nil || cl.slow() {
		return
	}
	if ob.othersInTransit(cl) {
		// What the queue lets out now would pass them. The loop pumps
		// once they arrive (xfer.run).
		ob.awaitTransit(cl)
		return
	}
	for s.mu.queue.len() > 0 && len(s.mu.inflight) < int(s.mu.window) {
		if m := s.mu.queue.peek(); m.createdElsewhere(ob) {
			// Its entry is not with the store yet: sent now, its
			// acknowledgement's deletion could be written before the
			// creation. The creator pumps once it has committed.
			m.blocked = true
			return
		}
		m := s.mu.queue.pop()
		if m.msg.expired(now) {
			s.srv.stats.droppedExpired.Add(1)
			s.forgetLocked(ob, m)
			continue
		}
		s.sendLocked(ob, m, now)
	}
}

// pumpQueue lets out what c's session queue holds while c holds the
// session.
func (c *client) pumpQueue(ob *outbox, now int64) {
	c.sess.mu.Lock()
	if c.sess.mu.cl == c && c.sess.mu.queue.len() > 0 {
		c.sess.pumpLocked(ob, now)
	}
	c.sess.mu.Unlock()
}

// pumpArrived lets out c's session queue once the deliveries in transit to
// c's loop, which held it back, have arrived: in a task of its own, after
// the loop has appended them, since xfer.run may run in the middle of
// other work on the loop's outbox. It runs on c's loop.
func (c *client) pumpArrived() {
	_ = c.loop.el.Execute(context.Background(), runFunc(func() {
		if c.closed {
			return
		}
		c.pumpQueue(c.loop.ob, c.srv.now())
		c.loop.ob.flush()
	}))
}

// inflightLocked returns the inflight window in delivery order.
// REQUIRES: s.mu held.
func (s *session) inflightLocked() []*outMsg {
	list := make([]*outMsg, 0, len(s.mu.inflight))
	for _, m := range s.mu.inflight {
		list = append(list, m)
	}
	slices.SortFunc(list, func(a, b *outMsg) int { return cmp.Compare(a.seq, b.seq) })
	return list
}

// resendLocked redelivers the inflight window in its original order after a
// reconnect, PUBLISH with DUP set or PUBREL [MQTT-4.4.0-1].
// REQUIRES: s.mu held, s.mu.cl != nil.
func (s *session) resendLocked(ob *outbox, now int64) {
	if len(s.mu.inflight) == 0 {
		return
	}
	for _, m := range s.inflightLocked() {
		// Expiry no longer applies: onward delivery has started.
		cl := s.mu.cl
		if m.released {
			ob.add(cl, cl.encodeAck(pubrelCode, m.pid))
			continue
		}
		fr, ok := cl.encodeStoredDup(m, now)
		if !ok {
			delete(s.mu.inflight, m.pid)
			s.forgetLocked(ob, m)
			continue
		}
		ob.addParts(cl, fr, m.idb[:], nil)
	}
}

// routeDurable reports whether the session's subscriptions are announced
// to cluster peers as held by a persistent session (cluster.announce). It
// is decided once, by the session's expiry at its first subscription,
// so that a subscription is withdrawn as it was announced: a session
// with subscriptions never goes from clean to persistent (a clean one
// ends with its connection), and one that goes the other way keeps
// counting as persistent, which only costs its peers a wait.
func (s *session) routeDurable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.routeSet {
		s.mu.routeSet, s.mu.routeDurable = true, s.mu.expiry > 0
	}
	return s.mu.routeDurable
}
