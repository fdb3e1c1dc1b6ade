package server

import "github.com/gannetmq/gannet/interlink"

// A QoS 1/2 message published by a client is either queued for every
// peer that should have it and delivered here, or refused (0x97) before
// anything sees it. The publisher sends a refused message again, as a new
// exchange, so a copy delivered before the refusal would arrive twice,
// which QoS 2 forbids. Queuing for a peer can fail (its queue is bounded,
// interlink.Config.QueueLimit), so before the retained store or any
// receiver sees the message, room is taken in the queue of every peer it
// may go to (reserveFor), and forwarding fills that room (cluster.send),
// which cannot fail.

// reservation is room taken in a peer's queue for the message being
// routed.
type reservation struct {
	peer string
	r    interlink.Reservation
}

// publishOrRefuse publishes a message whose publisher is told when it is
// refused and then sends it again: a QoS 1/2 message in a cluster is
// published only when every peer that should have it can queue it, and
// otherwise not at all; ok is false then. A will, which no one sends
// again, goes through publishOn instead: as far as it can.
func (s *Server) publishOrRefuse(ob *outbox, m *message) (n int, ok bool) {
	if s.cl != nil && m.qos > 0 && !s.cl.reserveFor(ob, m) {
		return 0, false
	}
	return s.publishOn(ob, m)
}

// reserveFor matches m against the peers' routes and takes room for one
// record in the queue of every peer m may be forwarded to: those with
// plain routes, and for each shared group with members on peers the peer
// whose turn it is. Which peer that is depends on whether this node has
// members of the group too, known only once the local subscribers are
// matched (after the retained store has m), so room is taken with both.
// It reports false, holding nothing, when a queue has no room. On true,
// routeFrom uses the matched routes, forward the room, and what forward
// did not use is given back after it (releaseUnused).
func (cl *cluster) reserveFor(ob *outbox, m *message) bool {
	cl.matchRoutes(ob, m)
	if len(ob.targets) == 0 && len(ob.rgroups) == 0 {
		ob.matched = true
		return true
	}
	lane := cl.node.LaneFor(m.from)
	size := forwardBound(m)
	for i := range ob.targets {
		if !cl.reserve(ob, ob.targets[i].peer, lane, size) {
			return false
		}
	}
	for i := range ob.rgroups {
		rg := &ob.rgroups[i]
		gsize := size + len("$share/") + len(rg.name) + 1 + len(rg.filter) + 10
		// With members here the turn includes this node (sharedLocal);
		// without, only the peers (forward).
		if k := rg.next % uint64(len(rg.peers)+1); k > 0 && !cl.reserve(ob, rg.peers[k-1], lane, gsize) {
			return false
		}
		if !cl.reserve(ob, rg.peers[rg.next%uint64(len(rg.peers))], lane, gsize) {
			return false
		}
	}
	ob.matched = true
	return true
}

// reserve takes room for one record in peer's queue unless ob holds some
// already; on failure it gives back all that ob holds and forgets the
// matched routes.
func (cl *cluster) reserve(ob *outbox, peer string, lane, size int) bool {
	for i := range ob.resv {
		if ob.resv[i].peer == peer {
			return true
		}
	}
	r, err := cl.node.Reserve(peer, lane, size)
	if err != nil {
		cl.s.logThrottled("refusing a QoS 1/2 publish: a peer cannot queue it", "peer", peer, "err", err)
		cl.releaseUnused(ob)
		ob.targets, ob.rgroups = ob.targets[:0], ob.rgroups[:0]
		return false
	}
	ob.resv = append(ob.resv, reservation{peer: peer, r: r})
	return true
}

// takeReservation returns the room ob holds in peer's queue, if any, and
// forgets it.
func (ob *outbox) takeReservation(peer string) (interlink.Reservation, bool) {
	for i := range ob.resv {
		if ob.resv[i].peer == peer {
			r := ob.resv[i].r
			last := len(ob.resv) - 1
			ob.resv[i] = ob.resv[last]
			ob.resv[last] = reservation{}
			ob.resv = ob.resv[:last]
			return r, true
		}
	}
	return interlink.Reservation{}, false
}

// releaseUnused gives back the room ob holds.
func (cl *cluster) releaseUnused(ob *outbox) {
	for i := range ob.resv {
		cl.node.Release(ob.resv[i].r)
		ob.resv[i] = reservation{}
	}
	ob.resv = ob.resv[:0]
}

// forwardBound is at least the length of m's forwarded record without
// groups (appendForward, appendMessage): every string counted with the
// longest length prefix, the origin, the routing time and the skip list.
func forwardBound(m *message) int {
	const str = 10 // the longest uvarint
	n := 2 + str + 1 + 8 + str + str + 3*str + len(m.from) + len(m.topic) + len(m.payload) + str
	n += str + maxSkip*str + maxSkipBytes
	if pr := m.props; pr != nil {
		n += 1 + 3*str + len(pr.ContentType) + len(pr.ResponseTopic) + len(pr.CorrelationData) + str
		for _, u := range pr.User {
			n += 2*str + len(u.Key) + len(u.Value)
		}
	}
	return n
}
