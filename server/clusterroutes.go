package server

import (
	"bytes"
	"time"

	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/trie"
)

// Route state between nodes converges by construction, whatever the
// control lane drops (it carries routes unreliably: a record that finds
// its buffer full is lost):
//
//   - every change of this node's route set is a delta numbered from 1 in
//     this run (cluster.ann.seq);
//   - on link up, and whenever a peer asks (recRouteResync), the whole set
//     goes, in chunks, with the number it was taken at and its digest;
//   - every routeDigestEvery each linked peer gets the number and digest of
//     the set as it stands (recRouteDigest);
//   - a peer that sees a number skipped, a digest other than that of what
//     it holds, or a whole set that did not arrive whole, asks for the
//     whole set again, at most once per routeResyncGap.
//
// The digest is the XOR of routeHash over the set's filters: independent
// of order and kept up to date in O(1) per change. All of a node's route
// records travel on lane 0 in the order they were made, so a digest
// compares the set that its sender had when it sent it with what the
// receiver holds after every record before it.

// routeDigestEvery is how often each peer is told the digest of this
// node's routes; routeResyncGap bounds how often one peer's whole set is
// asked for.
const (
	routeDigestEvery = 5 * time.Second
	routeResyncGap   = 2 * time.Second
)

// routeHash is a filter's share of a route digest: FNV-1a, then mixed, so
// that sets of similar filters do not cancel out.
func routeHash(f string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(f); i++ {
		h ^= uint64(f[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h
}

// routeEntryHash is a route's share of a digest: its filter's, changed
// when a persistent session holds the filter (durable).
func routeEntryHash(f string, durable bool) uint64 {
	h := routeHash(f)
	if durable {
		h ^= 0x9e3779b97f4a7c15
	}
	return h
}

// peerRouteSet is what one peer announced, with the state of its stream of
// route records.
type peerRouteSet struct {
	have   map[string]bool // filter: whether a persistent session holds it
	seq    uint64          // the number of the last delta or whole set applied
	digest uint64          // of have

	// A whole set arriving in chunks, applied when its last arrives.
	pending   []routeEntry
	pendSeq   uint64
	receiving bool
	asked     time.Time // when the whole set was last asked for
}

// announce records a local subscription added (+1) or removed (-1), by a
// persistent session when durable, and tells peers when the filter's
// first subscription appears or its last goes, and when the first
// persistent session's appears or the last goes: a peer waits for this
// node's acknowledgement of a QoS 1/2 message only where a persistent
// session may take it (peerack.go, forward).
func (cl *cluster) announce(filter string, delta int, durable bool) {
	cl.ann.Lock()
	defer cl.ann.Unlock()
	_, had := cl.ann.local[filter]
	wasDurable := cl.ann.durable[filter] > 0
	if durable {
		if cl.ann.durable[filter] += delta; cl.ann.durable[filter] <= 0 {
			delete(cl.ann.durable, filter)
		}
	}
	isDurable := cl.ann.durable[filter] > 0
	n := cl.ann.local[filter] + delta
	var kind byte
	switch {
	case n <= 0:
		if had {
			delete(cl.ann.local, filter)
			kind = recRouteDel
		}
	default:
		cl.ann.local[filter] = n
		if !had || isDurable != wasDurable {
			kind = recRouteAdd
		}
	}
	if kind != 0 {
		cl.ann.seq++
		if had {
			cl.ann.digest ^= routeEntryHash(filter, wasDurable)
		}
		if kind == recRouteAdd {
			cl.ann.digest ^= routeEntryHash(filter, isDurable)
		}
		cl.broadcast(kind, appendRouteDelta(nil, cl.ann.seq, routeEntry{filter, isDurable}))
	}
}

// sendRoutes sends peer this node's whole route set (link up, or asked).
func (cl *cluster) sendRoutes(peer string) {
	cl.ann.Lock()
	defer cl.ann.Unlock()
	hdr := routeSetHeader{first: true, seq: cl.ann.seq, digest: cl.ann.digest}
	chunk := appendRouteSetHeader(nil, hdr)
	n := 0
	for f := range cl.ann.local {
		chunk = appendRouteEntry(chunk, routeEntry{f, cl.ann.durable[f] > 0})
		n++
		if len(chunk) >= routeChunk && n < len(cl.ann.local) {
			cl.control(peer, recRoutesAll, chunk)
			hdr.first = false
			chunk = appendRouteSetHeader(chunk[:0], hdr)
		}
	}
	hdr.last = true
	chunk[1] = hdr.flags()
	cl.control(peer, recRoutesAll, chunk)
}

// sendDigests tells every linked peer the number and digest of this
// node's route set. It sends under cluster.ann, as every route record is
// sent, so that a digest never comes between the chunks of a whole set.
func (cl *cluster) sendDigests() {
	cl.ann.Lock()
	defer cl.ann.Unlock()
	b := appendRouteDigest(nil, cl.ann.seq, cl.ann.digest)
	for _, p := range cl.node.Peers() {
		if cl.node.Linked(p) {
			cl.control(p, recRouteDigest, b)
		}
	}
}

// digestLoop runs sendDigests every routeDigestEvery, and the retained
// digests every retainDigestEvery of those, until the server stops.
func (cl *cluster) digestLoop() {
	defer cl.s.wg.Done()
	t := time.NewTicker(routeDigestEvery)
	defer t.Stop()
	for {
		select {
		case <-cl.s.done:
			return
		case <-t.C:
			cl.sendDigests()
			cl.sendRetainDigests(false) // retainsync.go
		}
	}
}

// peerSet returns peer's route set, adding it. Called with peerRoutes held.
func (cl *cluster) peerSet(peer string) *peerRouteSet {
	ps := cl.peerRoutes.m[peer]
	if ps == nil {
		ps = &peerRouteSet{have: make(map[string]bool)}
		cl.peerRoutes.m[peer] = ps
	}
	return ps
}

// addRoute adds filter to ps's routes. Called with peerRoutes held. A
// filter the trie refuses is kept in the set all the same, so that the
// digests agree, and logged.
func (cl *cluster) addRoute(peer string, ps *peerRouteSet, e routeEntry) {
	f := e.filter
	old, ok := ps.have[f]
	if ok && old == e.durable {
		return
	}
	if ok {
		ps.digest ^= routeEntryHash(f, old)
	}
	ps.have[f] = e.durable
	ps.digest ^= routeEntryHash(f, e.durable)
	if _, _, err := cl.routes.Subscribe(f, peer, e.durable); err != nil {
		cl.s.log.Warn("peer announced a bad filter", "peer", peer, "filter", f, "err", err)
	}
}

func (cl *cluster) removeRoute(peer string, ps *peerRouteSet, f string) {
	if d, ok := ps.have[f]; ok {
		delete(ps.have, f)
		ps.digest ^= routeEntryHash(f, d)
		_, _, _ = cl.routes.Unsubscribe(f, peer)
	}
}

// routeDelta applies a numbered add or delete from peer and reports
// whether the whole set must be asked for: a number was skipped.
func (cl *cluster) routeDelta(peer string, add bool, body []byte) (resync bool, err error) {
	seq, e, err := decodeRouteDelta(body)
	if err != nil {
		return false, err
	}
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	ps := cl.peerSet(peer)
	if add {
		cl.addRoute(peer, ps, e)
	} else {
		cl.removeRoute(peer, ps, e.filter)
	}
	gap := seq != ps.seq+1
	ps.seq = seq
	return gap && cl.mayAsk(ps), nil
}

// routeSetChunk applies one chunk of peer's whole route set and reports
// whether the whole set must be asked for again: a chunk went missing.
func (cl *cluster) routeSetChunk(peer string, body []byte) (resync bool, err error) {
	h, fs, err := decodeRouteSet(body)
	if err != nil {
		return false, err
	}
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	ps := cl.peerSet(peer)
	if h.first {
		ps.pending, ps.pendSeq, ps.receiving = ps.pending[:0], h.seq, true
	} else if !ps.receiving || ps.pendSeq != h.seq {
		// The set's first chunk was lost: wait for the next whole set.
		ps.receiving = false
		ps.pending = nil
		return cl.mayAsk(ps), nil
	}
	ps.pending = append(ps.pending, fs...)
	if !h.last {
		return false, nil
	}
	keep := make(map[string]bool, len(ps.pending))
	for _, e := range ps.pending {
		keep[e.filter] = e.durable
	}
	for f := range ps.have {
		if _, ok := keep[f]; !ok {
			cl.removeRoute(peer, ps, f)
		}
	}
	for f, d := range keep {
		cl.addRoute(peer, ps, routeEntry{f, d})
	}
	ps.pending, ps.receiving, ps.seq = nil, false, h.seq
	if ps.digest != h.digest {
		return cl.mayAsk(ps), nil
	}
	ps.asked = time.Time{}
	return false, nil
}

// routeDigestFrom compares peer's digest with the set held for it and
// reports whether the whole set must be asked for.
func (cl *cluster) routeDigestFrom(peer string, body []byte) (resync bool, err error) {
	seq, digest, err := decodeRouteDigest(body)
	if err != nil {
		return false, err
	}
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	ps := cl.peerSet(peer)
	if ps.receiving {
		// Digests never come between the chunks of a set (both are sent
		// under cluster.ann): the set's last chunk was lost.
		ps.pending, ps.receiving = nil, false
		return cl.mayAsk(ps), nil
	}
	if ps.seq == seq && ps.digest == digest {
		return false, nil
	}
	return cl.mayAsk(ps), nil
}

// mayAsk reports whether ps's whole set may be asked for now, and if so
// notes that it is. Called with peerRoutes held.
func (cl *cluster) mayAsk(ps *peerRouteSet) bool {
	now := time.Now()
	if !ps.asked.IsZero() && now.Sub(ps.asked) < routeResyncGap {
		return false
	}
	ps.asked = now
	cl.s.stats.routeResyncs.Add(1)
	return true
}

// askRoutes asks peer for its whole route set.
func (cl *cluster) askRoutes(peer string) {
	cl.control(peer, recRouteResync, []byte{wireVersion})
}

// dropRoutes forgets every route of peer.
func (cl *cluster) dropRoutes(peer string) {
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	if ps := cl.peerRoutes.m[peer]; ps != nil {
		for f := range ps.have {
			cl.removeRoute(peer, ps, f)
		}
		delete(cl.peerRoutes.m, peer)
	}
}

// routeState reports how many routes peer has here and their digest.
func (cl *cluster) routeState(peer string) (int, uint64) {
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	if ps := cl.peerRoutes.m[peer]; ps != nil {
		return len(ps.have), ps.digest
	}
	return 0, 0
}

// target is one peer a message is forwarded to.
type target struct {
	peer   string
	plain  bool
	groups []string
	// durable: a persistent session there may take the message, so a
	// QoS 1/2 one is acknowledged to its publisher only once the peer
	// or this node's store has it (peerack.go).
	durable bool
}

// rgroup is a shared group with members on peers, met while routing.
type rgroup struct {
	name, filter string
	peers        []string
	next         uint64
	done         bool
}

// matchRoutes finds the peers with subscribers for m: the plain routes, and
// the shared groups with members there. Called before the local match,
// which then picks one member of each group across the cluster.
func (cl *cluster) matchRoutes(ob *outbox, m *message) {
	ob.targets = ob.targets[:0]
	ob.rgroups = ob.rgroups[:0]
	cl.routes.Match(m.topic, func(peer string, durable bool) {
		t := ob.target(peer)
		t.plain = true
		t.durable = t.durable || durable
	}, func(g *trie.Group[string, bool]) {
		rg := rgroup{name: g.Name, filter: g.Filter, next: g.Next()}
		for i := range g.Len() {
			p, _ := g.At(i)
			if cl.node.Linked(p) {
				rg.peers = append(rg.peers, p)
			}
		}
		if len(rg.peers) == 0 { // none reachable now: queue for one anyway
			for i := range g.Len() {
				p, _ := g.At(i)
				rg.peers = append(rg.peers, p)
			}
		}
		ob.rgroups = append(ob.rgroups, rg)
	})
}

// target returns the forwarding entry for peer, adding it.
func (ob *outbox) target(peer string) *target {
	for i := range ob.targets {
		if ob.targets[i].peer == peer {
			return &ob.targets[i]
		}
	}
	if n := len(ob.targets); n < cap(ob.targets) {
		ob.targets = ob.targets[:n+1]
		t := &ob.targets[n]
		t.peer, t.plain, t.groups, t.durable = peer, false, t.groups[:0], false
		return t
	}
	ob.targets = append(ob.targets, target{peer: peer})
	return &ob.targets[len(ob.targets)-1]
}

// sharedLocal decides whether the local members of group g take m: it
// reports true when they do, and otherwise hands the message to the peer
// whose turn it is.
func (ob *outbox) sharedLocal(g *trie.Group[*session, fanout.Options]) bool {
	for i := range ob.rgroups {
		rg := &ob.rgroups[i]
		if rg.name != g.Name || rg.filter != g.Filter {
			continue
		}
		rg.done = true
		k := rg.next % uint64(len(rg.peers)+1)
		if k == 0 {
			return true
		}
		t := ob.target(rg.peers[k-1])
		t.groups = append(t.groups, "$share/"+rg.name+"/"+rg.filter)
		t.durable = true // which member takes it is the peer's to say
		return false
	}
	return true
}

// forward sends m to every peer that matched, once per peer. It returns
// the number of peers and false when a QoS 1/2 message could not be
// queued for one of them.
func (cl *cluster) forward(ob *outbox, m *message) (int, bool) {
	for i := range ob.rgroups {
		rg := &ob.rgroups[i]
		if rg.done {
			continue
		}
		t := ob.target(rg.peers[rg.next%uint64(len(rg.peers))])
		t.groups = append(t.groups, "$share/"+rg.name+"/"+rg.filter)
		t.durable = true
	}
	if len(ob.targets) == 0 {
		ob.skip = ob.skip[:0]
		return 0, true
	}
	now := cl.s.now()
	ob.fwmsg = appendMessage(ob.fwmsg[:0], m, now, true)
	var older []byte // for peers that read no routing time (features.go); made when one is met
	lane := cl.node.LaneFor(m.from)
	ok := true
	for i := range ob.targets {
		t := &ob.targets[i]
		f := forward{plain: t.plain, groups: t.groups, skip: ob.skip}
		msg := ob.fwmsg
		if !cl.feats.has(t.peer, featRouted) {
			if len(older) == 0 {
				older = appendMessage(nil, m, now, false)
			}
			msg, f.skip = older, nil
		}
		ob.fwbuf = appendForward(ob.fwbuf[:0], &f, msg)
		if err := cl.sendForward(ob, t.peer, lane, ob.fwbuf, m.qos > 0, t.durable); err != nil && m.qos > 0 {
			ok = false
			cl.s.logThrottled("cannot queue a QoS 1/2 message for a peer", "peer", t.peer, "err", err)
		}
		t.groups = t.groups[:0]
	}
	n := len(ob.targets)
	ob.targets, ob.skip = ob.targets[:0], ob.skip[:0]
	cl.s.stats.forwardedOut.Add(n)
	return n, ok
}

// sendForward queues a forwarded message for peer. A QoS 1/2 one for a
// peer where no persistent session takes it is kept in memory only until
// the peer has it: no one waits for its acknowledgement (peerack.go).
func (cl *cluster) sendForward(ob *outbox, peer string, lane int, body []byte, reliable, durable bool) error {
	if reliable && !durable {
		return cl.sendKept(ob, peer, lane, recForward, body)
	}
	return cl.send(ob, peer, lane, recForward, body, reliable)
}

// reshare forwards m to a peer with a member of the shared group
// name/filter (reshare.go), preferring one that is linked now; false
// when no peer has one or its queue refused a QoS 1/2 message.
func (cl *cluster) reshare(ob *outbox, m *message, name, filter string) bool {
	var peer string
	cl.routes.Match(m.topic, func(string, bool) {}, func(g *trie.Group[string, bool]) {
		if g.Name != name || g.Filter != filter {
			return
		}
		for i := range g.Len() {
			p, _ := g.At(i)
			if peer == "" || cl.node.Linked(p) && !cl.node.Linked(peer) {
				peer = p
			}
		}
	})
	if peer == "" {
		return false
	}
	ob.targets, ob.rgroups = ob.targets[:0], ob.rgroups[:0]
	t := ob.target(peer)
	t.groups = append(t.groups, "$share/"+name+"/"+filter)
	_, ok := cl.forward(ob, m)
	return ok
}

// wants reports whether a forwarded message is for the local members of
// shared group g.
func (f *forward) wants(g *trie.Group[*session, fanout.Options]) bool {
	for _, k := range f.groups {
		rest, ok := bytes.CutPrefix([]byte(k), []byte("$share/"))
		if ok && len(rest) == len(g.Name)+1+len(g.Filter) && string(rest[:len(g.Name)]) == g.Name &&
			rest[len(g.Name)] == '/' && string(rest[len(g.Name)+1:]) == g.Filter {
			return true
		}
	}
	return false
}
