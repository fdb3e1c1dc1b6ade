package server

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A client that connects while a peer that may hold its session is away
// (not linked, or silent past the takeover timeout) gets a new session
// here, and the peer's copy lives on, stale: it comes back with the peer
// (stale.go), and until then the forwards routed to it pile up in the
// queues of the nodes that route them. Some of those messages this node's
// session took too. If the client later resumes the old copy instead
// (this node is down then, and the peer is back), the peers' queued
// forwards reach the old copy, directly or sent on (redirect), and the
// client gets again what it completed here.
//
// So this node remembers its sessions made that way (awaySet), and a
// forward of a QoS 1/2 message that one of them took while its client
// was connected here names the client (forward.skip): the receiver does
// not give the message to that client's session, which is a stale copy
// wherever it lives. Nothing is lost by it: the session that took the
// message is the client's live one; it keeps the message until the
// client completes it, and should the client then resume an older copy
// elsewhere, this one goes to that copy's node when the two meet
// (claims, stale.go; a takeover; connectedElsewhere) with what it holds.
// Naming the client only while it is connected here keeps an offline
// session that a partition left behind from hiding messages from the
// live one.
//
// Such a session started here empty also knows when it was made (its
// client found no session), and so what it was not owed: a forward
// routed before that (by more than clockSkew), which arrives late (held
// in a queue while a link was cut, or sent again by a node that
// restarted), is not given to it: it went to the copy's node too, where
// the client's subscriptions were then, and comes with the copy when the
// copy is merged (keepMoved), once. Forwards carry when they were routed
// (appendMessage).

// maxSkip bounds the clients one forward names, and maxSkipBytes their
// ids' bytes.
const (
	maxSkip      = 16
	maxSkipBytes = 1024
)

// clockSkew is how far the clocks of two nodes may differ for a forward's
// routing time to be compared with a session's making.
const clockSkew = time.Second

// routeLag is how long a new session's subscriptions may take to reach
// every node: a message routed within it may have missed the session and
// gone only to where the client's subscriptions were before.
const routeLag = 5 * time.Second

// awaySet is the sessions made here while a peer that may hold a copy of
// them was away, with when each was made empty (0: it was resumed or
// moved here, and is older than that). It holds a session until the
// session ends.
type awaySet struct {
	n  atomic.Int32 // len(m), read without the lock on every forward
	mu sync.Mutex
	m  map[*session]int64
}

func (a *awaySet) add(ss *session, made int64) {
	a.mu.Lock()
	if a.m == nil {
		a.m = make(map[*session]int64)
	}
	a.m[ss] = made
	a.n.Store(int32(len(a.m)))
	a.mu.Unlock()
}

// made reports when ss was made empty, if it is of the set and was.
func (a *awaySet) made(ss *session) int64 {
	if a.n.Load() == 0 {
		return 0
	}
	a.mu.Lock()
	t := a.m[ss]
	a.mu.Unlock()
	return t
}

// drop forgets an ended session.
func (a *awaySet) drop(ss *session) {
	if a.n.Load() == 0 {
		return
	}
	a.mu.Lock()
	delete(a.m, ss)
	a.n.Store(int32(len(a.m)))
	a.mu.Unlock()
}

func (a *awaySet) has(ss *session) bool {
	if a.n.Load() == 0 {
		return false
	}
	a.mu.Lock()
	_, ok := a.m[ss]
	a.mu.Unlock()
	return ok
}

// skips appends to dst the clients whose forwards of m this node's
// sessions stand in for: sessions of the set, connected here, that take
// m at QoS 1 or 2 through a plain subscription (a shared group's message
// is the group's, wherever its member is).
func (a *awaySet) skips(dst []string, matches []match, m *message) []string {
	if m.qos == 0 || a.n.Load() == 0 {
		return dst
	}
	size := 0
	for i := range matches {
		mt := &matches[i]
		if mt.g != nil || mt.m.QoS == 0 || len(dst) == maxSkip || size+len(mt.s.id) > maxSkipBytes ||
			!a.has(mt.s) || !mt.s.online() {
			continue
		}
		if slices.Contains(dst, mt.s.id) {
			continue
		}
		dst = append(dst, mt.s.id)
		size += len(mt.s.id)
	}
	return dst
}

// droppedGiven counts a delivery a session dropped as given already, and
// has the peer's batch being taken (if any) store its position (Receive).
func (ob *outbox) droppedGiven() {
	ob.srv.stats.droppedSeen.Inc()
	ob.dropped = true
}
