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

// routeDigest is the digest of a set of filters.
func routeDigest(filters ...string) uint64 {
	var d uint64
	for _, f := range filters {
		d ^= routeHash(f)
	}
	return d
}

// peerRouteSet is what one peer announced, with the state of its stream of
// route records.
type peerRouteSet struct {
	have   map[string]struct{}
	seq    uint64 // the number of the last delta or whole set applied
	digest uint64 // of have

	// A whole set arriving in chunks, applied when its last arrives.
	pending   []string
	pendSeq   uint64
	receiving bool
	asked     time.Time // when the whole set was last asked for
}

// announce records a local subscription added (+1) or removed (-1) and
// tells peers when the filter's first subscription appears or its last
// goes.
func (cl *cluster) announce(filter string, delta int) {
	cl.ann.Lock()
	defer cl.ann.Unlock()
	n := cl.ann.local[filter] + delta
	var kind byte
	switch {
	case n <= 0:
		if _, had := cl.ann.local[filter]; had {
			delete(cl.ann.local, filter)
			kind = recRouteDel
		}
	default:
		cl.ann.local[filter] = n
		if n == 1 && delta > 0 {
			kind = recRouteAdd
		}
	}
	if kind != 0 {
		cl.ann.seq++
		cl.ann.digest ^= routeHash(filter)
		cl.broadcast(kind, appendRouteDelta(nil, cl.ann.seq, filter))
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
		chunk = appendStr(chunk, []byte(f))
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
		ps = &peerRouteSet{have: make(map[string]struct{})}
		cl.peerRoutes.m[peer] = ps
	}
	return ps
}

// addRoute adds filter to ps's routes. Called with peerRoutes held. A
// filter the trie refuses is kept in the set all the same, so that the
// digests agree, and logged.
func (cl *cluster) addRoute(peer string, ps *peerRouteSet, f string) {
	if _, ok := ps.have[f]; ok {
		return
	}
	ps.have[f] = struct{}{}
	ps.digest ^= routeHash(f)
	if _, _, err := cl.routes.Subscribe(f, peer, struct{}{}); err != nil {
		cl.s.log.Warn("peer announced a bad filter", "peer", peer, "filter", f, "err", err)
	}
}

func (cl *cluster) removeRoute(peer string, ps *peerRouteSet, f string) {
	if _, ok := ps.have[f]; ok {
		delete(ps.have, f)
		ps.digest ^= routeHash(f)
		_, _, _ = cl.routes.Unsubscribe(f, peer)
	}
}

// routeDelta applies a numbered add or delete from peer and reports
// whether the whole set must be asked for: a number was skipped.
func (cl *cluster) routeDelta(peer string, add bool, body []byte) (resync bool, err error) {
	seq, f, err := decodeRouteDelta(body)
	if err != nil {
		return false, err
	}
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	ps := cl.peerSet(peer)
	if add {
		cl.addRoute(peer, ps, f)
	} else {
		cl.removeRoute(peer, ps, f)
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
	keep := make(map[string]struct{}, len(ps.pending))
	for _, f := range ps.pending {
		keep[f] = struct{}{}
	}
	for f := range ps.have {
		if _, ok := keep[f]; !ok {
			cl.removeRoute(peer, ps, f)
		}
	}
	for f := range keep {
		cl.addRoute(peer, ps, f)
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
	cl.routes.Match(m.topic, func(peer string, _ struct{}) {
		ob.target(peer).plain = true
	}, func(g *trie.Group[string, struct{}]) {
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
		t.peer, t.plain, t.groups = peer, false, t.groups[:0]
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
	}
	if len(ob.targets) == 0 {
		return 0, true
	}
	ob.fwmsg = appendMessage(ob.fwmsg[:0], m, cl.s.now())
	lane := cl.node.LaneFor(m.from)
	ok := true
	for i := range ob.targets {
		t := &ob.targets[i]
		f := forward{plain: t.plain, groups: t.groups}
		ob.fwbuf = appendForward(ob.fwbuf[:0], &f, ob.fwmsg)
		if err := cl.send(ob, t.peer, lane, recForward, ob.fwbuf, m.qos > 0); err != nil && m.qos > 0 {
			ok = false
			cl.s.logThrottled("cannot queue a QoS 1/2 message for a peer", "peer", t.peer, "err", err)
		}
		t.groups = t.groups[:0]
	}
	n := len(ob.targets)
	ob.targets = ob.targets[:0]
	cl.s.stats.forwardedOut.Add(n)
	return n, ok
}

// reshare forwards m to a peer with a member of the shared group
// name/filter (reshare.go), preferring one that is linked now; false
// when no peer has one or its queue refused a QoS 1/2 message.
func (cl *cluster) reshare(ob *outbox, m *message, name, filter string) bool {
	var peer string
	cl.routes.Match(m.topic, func(string, struct{}) {}, func(g *trie.Group[string, struct{}]) {
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
