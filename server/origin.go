package server

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"

	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/trie"
)

// A message published in a cluster has an identity, its origin: the
// publishing node's run (32 random bits drawn at start) and a count of
// that run's messages. It travels with the message wherever it goes on
// from there (forwarded, sent on by the node a session left, inside a
// moved or stale session), so that a session that may be given one
// message twice can tell:
//
//   - a session that moved to this node gets, for a while, what the
//     publishers' nodes send it here and what its old node sends on
//     (redirect, for movedGrace);
//   - a session a client started here while a copy of it lived on a node
//     that was away gets, when that copy is merged in (stale.go), what
//     the copy collected meanwhile, some of which reached it directly.
//
// So every session remembers the origins of the messages given to it in
// its first recentWindow (after it was created here, or arrived from a
// peer), and takes each origin once; a merged message is checked against
// that memory and otherwise kept (at least once). A message's origin is
// stored with it, so a session restored after a restart, handed to a
// peer, still tells the messages it holds from a copy of them that comes
// by another way. (A store written before origins were kept has messages
// without one, never dropped as seen.)

// recentWindow is how long a new session remembers what it was given:
// more than movedGrace, with room for the records under way then.
const recentWindow = 30 * movedGrace / 10

// recentMax bounds the origins one session remembers; past it, it
// remembers no more (a later duplicate is delivered, at least once).
const recentMax = 1 << 16

// origins hands out this node's message identities.
type origins struct {
	run  uint64
	next atomic.Uint64
}

func newOrigins() *origins {
	var b [4]byte
	_, _ = rand.Read(b[:])
	o := &origins{run: uint64(binary.BigEndian.Uint32(b[:])) << 32}
	if o.run == 0 {
		o.run = 1 << 32 // 0 is no origin
	}
	return o
}

// stamp gives m an origin unless it has one.
func (o *origins) stamp(m *message) {
	if m.origin == 0 {
		m.origin = o.run | o.next.Add(1)&(1<<32-1)
	}
}

// recent is what a session remembers of the origins given to it.
type recent struct {
	until int64 // broker clock; past it the session remembers nothing
	seen  map[uint64]struct{}
	// before marks, per peer stream, the records that were routed before
	// the session was here: up to each position.
	before []interlink.PeerPosition
}

// A session may be given, for a while after it came to be here, a message
// routed before that: a forward this node received and could not take
// yet (it refused it while its disk was full, or held it back behind
// one it refused) and takes from the peer's resend later, or one still
// on its way from the node a session moved from. A session that moved
// got such a message where it was (or gets it sent on, redirect); one
// that started here because its client found no session had it in the
// session that was lost. Either way its memory of origins, which starts
// here, does not know it. So a session remembers how far each peer's
// stream of records had got when it came to be here:
//
//   - what this node had received (interlink.Node.Heard), when the
//     session is made;
//   - for a session that moved, what the node it left had queued for
//     this one when it handed the session over (interlink.Node.SentTo,
//     in the takeover answer): that node routes a message's forwards
//     before its local deliveries, so a forward at or before the mark
//     was routed while the session was still there.
//
// Such forwards are not delivered to the session here, while it is
// young. A forward from a third node to this one, routed before a move
// and still on its way when the session arrived, is not told apart this
// way: the session's memory of origins covers it only if the message
// reached it here first.

// routedBeforeLocked reports whether the forward of m that ob is taking
// (ob.src) was routed before ss was here (recent.before), or before ss
// was made empty while a peer that may hold its client's session was
// away (away.go).
// REQUIRES: ss.mu held.
func (ss *session) routedBeforeLocked(ob *outbox, m *message, now int64) bool {
	if m.stamp != 0 && ob.src.Seq != 0 {
		if made := ss.srv.cl.away.made(ss); made != 0 && m.stamp < made-int64(clockSkew) {
			return true
		}
	}
	r, src := ss.mu.recent, &ob.src
	if r == nil || len(r.before) == 0 || src.Seq == 0 || now > r.until {
		return false
	}
	for _, mk := range r.before {
		if src.Seq <= mk.Seq && src.Lane == mk.Lane && src.Epoch == mk.Epoch && src.Peer == mk.Peer {
			return true
		}
	}
	return false
}

// appendSentMarks appends the takeover answer's trailing marks:
//
//	epoch uvarint | lanes uvarint | lanes × seq uvarint
func appendSentMarks(dst []byte, epoch uint64, seqs []uint64) []byte {
	dst = binary.AppendUvarint(dst, epoch)
	dst = binary.AppendUvarint(dst, uint64(len(seqs)))
	for _, q := range seqs {
		dst = binary.AppendUvarint(dst, q)
	}
	return dst
}

// maxLanes bounds the lanes a peer's marks may list.
const maxLanes = 256

// decodeSentMarks reads from's marks (appendSentMarks); lanes with
// nothing sent are left out.
func decodeSentMarks(r *wireReader, from string) []interlink.PeerPosition {
	epoch := r.uvarint("marks epoch")
	n := r.uvarint("marks lanes")
	if n > maxLanes {
		r.fail("marks lanes")
		return nil
	}
	var marks []interlink.PeerPosition
	for i := uint64(0); i < n && r.err == nil; i++ {
		if q := r.uvarint("marks seq"); q > 0 {
			marks = append(marks, interlink.PeerPosition{Peer: from,
				Position: interlink.Position{Epoch: epoch, Lane: uint8(i), Seq: q}})
		}
	}
	if r.err != nil {
		return nil
	}
	return marks
}

// newRecentLocked starts a session's memory at now, in a cluster.
func (ss *session) newRecentLocked(now int64) {
	if ss.srv.cl != nil {
		ss.mu.recent = &recent{until: now + int64(recentWindow), before: ss.srv.cl.node.Heard(nil)}
	}
}

// youngLocked reports whether the session still remembers what it is
// given (its first recentWindow).
// REQUIRES: ss.mu held.
func (ss *session) youngLocked(now int64) bool {
	return ss.mu.recent != nil && now <= ss.mu.recent.until
}

// firstLocked reports whether m is given to the session for the first
// time, and remembers it. When ob takes a peer's batch (ob.seen not nil)
// it notes what it remembered: if the batch cannot be stored, the peer
// sends it again, and it is not seen then (forgetSeen).
// REQUIRES: ss.mu held.
func (ss *session) firstLocked(ob *outbox, m *message, now int64) bool {
	r := ss.mu.recent
	if r == nil || m.origin == 0 {
		return true
	}
	if now > r.until {
		ss.mu.recent = nil
		return true
	}
	if _, dup := r.seen[m.origin]; dup {
		if ob != nil {
			ob.droppedGiven()
		} else {
			ss.srv.stats.droppedSeen.Inc()
		}
		return false
	}
	if r.seen == nil {
		r.seen = make(map[uint64]struct{})
	}
	if len(r.seen) < recentMax {
		r.seen[m.origin] = struct{}{}
		if ob != nil && ob.seen != nil {
			ob.seen = append(ob.seen, seenAt{ss, m.origin})
		}
	}
	return true
}

// reachedDirectly reports whether a message another node sent on to ss
// (redirect) reached ss directly too, as far as can be told without its
// memory: ss is no longer young, the message says it was routed after
// ss had its subscriptions on every node (routedAfter), and one of
// its plain subscriptions matches it. (Sent on from a stale copy of the
// session on a node that came back, stale.go; a session that moved here
// is young while its old node sends on.)
func (s *Server) reachedDirectly(ss *session, m *message, now int64) bool {
	ss.mu.Lock()
	young, ended := ss.youngLocked(now), ss.mu.ended
	after := routedAfter(m, s.subsSinceLocked(ss))
	ss.mu.Unlock()
	if young || ended || !after {
		return false // an ended one sends it on (deliverMoved)
	}
	hit := false
	s.subs.Match(m.topic, func(o *session, _ fanout.Options) { hit = hit || o == ss },
		func(*trie.Group[*session, fanout.Options]) {})
	return hit
}

// subsSinceLocked is when ss has had its subscriptions since: when it
// was made empty here (away.go) or, not known, at the latest when its
// client last attached.
// REQUIRES: ss.mu held.
func (s *Server) subsSinceLocked(ss *session) int64 {
	if s.cl != nil {
		if made := s.cl.away.made(ss); made != 0 {
			return made
		}
	}
	return ss.mu.since
}

// routedAfter reports whether m was routed when subscriptions held since
// since (subsSinceLocked) had reached every node: they take up to
// routeLag to spread, on clocks up to clockSkew apart. A message routed
// before went only to where the client's subscriptions were then (a
// peer's queue for a node that was down brings such messages late). A
// message that does not say when it was routed (its sender did not yet
// know this node reads routing times, features.go, or it was loaded from
// a store) is not taken to be routed after: kept, at least once, rather
// than lost.
func routedAfter(m *message, since int64) bool {
	return m.stamp != 0 && m.stamp > since+int64(routeLag+clockSkew)
}

// seenAt is an origin a session remembered.
type seenAt struct {
	ss     *session
	origin uint64
}

// forgetSeen has sessions forget origins they remembered from a peer's
// batch that could not be stored.
func forgetSeen(seen []seenAt) {
	for _, a := range seen {
		a.ss.mu.Lock()
		if r := a.ss.mu.recent; r != nil {
			delete(r.seen, a.origin)
		}
		a.ss.mu.Unlock()
	}
}
