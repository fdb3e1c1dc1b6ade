package server

import (
	"sync"
	"sync/atomic"
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

// maxSkip bounds the clients one forward names.
const maxSkip = 16

// awaySet is the sessions made here while a peer that may hold a copy of
// them was away. It holds a session until the session ends.
type awaySet struct {
	n  atomic.Int32 // len(m), read without the lock on every forward
	mu sync.Mutex
	m  map[*session]struct{}
}

func (a *awaySet) add(ss *session) {
	a.mu.Lock()
	if a.m == nil {
		a.m = make(map[*session]struct{})
	}
	a.m[ss] = struct{}{}
	a.n.Store(int32(len(a.m)))
	a.mu.Unlock()
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
next:
	for i := range matches {
		mt := &matches[i]
		if mt.g != nil || mt.m.QoS == 0 || len(dst) == maxSkip || !a.has(mt.s) || !mt.s.online() {
			continue
		}
		for _, id := range dst {
			if id == mt.s.id {
				continue next
			}
		}
		dst = append(dst, mt.s.id)
	}
	return dst
}

// skips reports whether the forward's sender has id's live session.
func (f *forward) skips(id string) bool {
	for _, s := range f.skip {
		if s == id {
			return true
		}
	}
	return false
}
