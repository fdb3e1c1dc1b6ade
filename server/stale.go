package server

import (
	"encoding/binary"

	"github.com/gannetmq/gannet/trie"
)

// A node that restarts loads its clients' offline sessions from the
// store. While it was down, some of those clients may have connected to
// another node, which found no session to take over (this node did not
// answer) and started a new one. The restored copy is stale then: its
// routes would collect messages the client never sees, and what was
// queued in it before the restart (acknowledged to publishers) would be
// stranded. So one node owns a client id, and the stale copy goes to it:
//
//   - when this node links to a peer, it sends the peer its claims: the
//     id and last disconnect time of every restored session that no
//     client has attached to since, and of every offline session made
//     here while a peer was away (away.go), which its client may have
//     left for a node that could not reach this one (recClaims);
//   - the peer answers with the ids it holds a newer session for: one
//     its client attached to after the claimed time, or one that was not
//     itself restored or made while a peer was away (recOwned);
//   - for each, this node ends its copy and sends what it held to the
//     owner (recStale): queued and inflight messages, inbound QoS 2 ids
//     and the subscriptions; what still reaches the copy is sent on to
//     the owner for movedGrace, as after a takeover (redirect). The owner
//     merges them into its session as a takeover that arrived late does
//     (keepMoved): the client was told no session was present, so
//     inflight messages are sent again as new and those past PUBREC are
//     dropped.
//
// A message that reached the stale copy after the restart, or after its
// client left a session made while a peer was away (marked late),
// may have reached the owner's session too. A session the client started
// recently remembers what it was given (origin.go) and drops those it
// has; an older one had its subscriptions when the message was routed,
// so it drops the late messages its plain subscriptions match, unless
// the message says it was routed before the session was made (or within
// routeLag after): a peer's queue for the copy's node, held while that
// node was down, brings such messages, however long it was away. So
// QoS 2 is not delivered twice, and nothing routed to the copy before the
// owner's session subscribed is lost. Messages that were in the stale
// copy before the restart cannot have reached the owner: they are
// merged.
//
// Claims, answers and the stale session are reliable records; the stale
// session is also kept in this node's store until the owner acknowledges
// it (cluster.send), in the batch that deletes the session here.

// claimChunk bounds a recClaims or recOwned record.
const claimChunk = 64 << 10

// sendClaims sends peer the claims of this node's restored sessions.
func (cl *cluster) sendClaims(peer string) {
	w := claimList{cl: cl, peer: peer, kind: recClaims}
	for _, sess := range cl.s.sessionList() {
		sess.mu.Lock()
		claim := cl.maybeStaleLocked(sess)
		since := sess.mu.since
		sess.mu.Unlock()
		if claim {
			w.add(sess.id, since)
		}
	}
	w.flush()
}

// claimList sends (id, since) pairs to a peer as reliable records of kind,
// in chunks of about claimChunk.
type claimList struct {
	cl   *cluster
	peer string
	kind byte
	b    []byte
}

func (w *claimList) add(id string, since int64) {
	if w.b == nil {
		w.b = []byte{wireVersion}
	}
	if w.b = appendClaim(w.b, id, since); len(w.b) >= claimChunk {
		w.flush()
	}
}

func (w *claimList) flush() {
	if w.b != nil {
		_ = w.cl.node.Send(w.peer, 0, w.kind, w.b, true)
		w.b = nil
	}
}

func appendClaim(dst []byte, id string, since int64) []byte {
	dst = appendStr(dst, []byte(id))
	return binary.AppendUvarint(dst, uint64(max(since, 0)))
}

// decodeClaims calls f for each (id, since) in a recClaims or recOwned
// body.
func decodeClaims(b []byte, f func(id string, since int64)) error {
	r := &wireReader{b: b}
	r.version()
	for len(r.b) > 0 && r.err == nil {
		id := r.str("client id")
		since := r.uvarint("since")
		if r.err == nil {
			f(string(id), int64(since))
		}
	}
	return r.err
}

// maybeStaleLocked reports whether sess, offline, may be a stale copy
// of its client's session: restored from the store and not attached
// since, or made while a peer that may hold the client's session was away
// (away.go), where its client may have gone meanwhile.
// REQUIRES: sess.mu held.
func (cl *cluster) maybeStaleLocked(sess *session) bool {
	return !sess.mu.ended && sess.mu.cl == nil && cl.maybeCopyLocked(sess)
}

// maybeCopyLocked reports whether sess may be one of two copies of its
// client's session: restored from the store, or made while a peer that
// may hold the client's session was away (away.go).
// REQUIRES: sess.mu held.
func (cl *cluster) maybeCopyLocked(sess *session) bool {
	return sess.mu.restored || cl.away.has(sess)
}

// claimed answers a peer's claims with the ids this node holds a newer
// session for.
func (cl *cluster) claimed(peer string, body []byte) error {
	w := claimList{cl: cl, peer: peer, kind: recOwned}
	err := decodeClaims(body, func(id string, since int64) {
		sess := cl.s.lookupSession(id)
		if sess == nil {
			return
		}
		sess.mu.Lock()
		// Of two sessions made while the other node was away (away.go),
		// the newer is the client's.
		mine := !sess.mu.ended && (!cl.maybeCopyLocked(sess) || sess.mu.since > since)
		own := sess.mu.since
		sess.mu.Unlock()
		if mine {
			w.add(id, own)
		}
	})
	w.flush()
	return err
}

// owned hands the restored sessions that peer owns over to it.
func (cl *cluster) owned(ob *outbox, peer string, body []byte) error {
	s := cl.s
	return decodeClaims(body, func(id string, since int64) {
		sess := s.lookupSession(id)
		if sess == nil {
			return
		}
		sess.mu.Lock()
		stale := cl.maybeStaleLocked(sess)
		sess.mu.Unlock()
		if !stale {
			return // a client attached here meanwhile: the takeover decides
		}
		cl.handStale(ob, sess, peer)
	})
}

// handStale hands a stale copy of a session to peer, which owns its
// client, as a takeover does: what is still on its way to the copy (a
// peer's queue sent after a restart) goes on to the owner for movedGrace,
// and the owner merges what the copy held into its session (keepMoved).
// When it cannot be sent the copy stays.
func (cl *cluster) handStale(ob *outbox, sess *session, peer string) {
	s := cl.s
	s.handOverTo(ob, sess, peer, func(mv *movedSession) bool {
		if mv == nil || mv.expiry == 0 {
			return true // ended, or ends with its connection [MQTT-3.1.2-6]: nothing to hand
		}
		if err := cl.send(ob, peer, 0, recStale, appendMoved([]byte{wireVersion}, mv, s.now(), cl.feats.has(peer, featRouted)), true); err != nil {
			s.log.Warn("cannot send a stale session to its owner; it stays here", "client", sess.id, "peer", peer, "err", err)
			return false
		}
		s.log.Info("stale session handed to the node that owns the client now", "client", sess.id, "to", peer,
			"messages", len(mv.msgs))
		return true
	})
}

// staleArrived merges a peer's stale copy of a session into this node's.
func (cl *cluster) staleArrived(ob *outbox, body []byte, now int64) error {
	r := &wireReader{b: body}
	r.version()
	if r.err != nil {
		return r.err
	}
	mv, err := decodeMoved(r, now)
	if err != nil {
		return err
	}
	cl.s.keepMoved(ob, mv)
	return nil
}

// matches reports whether a plain subscription of t matches topic. A
// shared group's member gets only some of the group's messages, so groups
// do not count.
func matches(t *trie.Trie[struct{}, struct{}], topic []byte) bool {
	hit := false
	t.Match(topic, func(struct{}, struct{}) { hit = true }, func(*trie.Group[struct{}, struct{}]) {})
	return hit
}
