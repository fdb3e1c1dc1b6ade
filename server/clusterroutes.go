package server

import (
	"bytes"

	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/trie"
)

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
		cl.broadcast(kind, []byte(filter))
	}
}

// setRoutes adds filters to peer's routes, first removing every route of
// peer when replace is set.
func (cl *cluster) setRoutes(peer string, filters []string, replace bool) {
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	have := cl.peerRoutes.m[peer]
	if have == nil {
		have = make(map[string]struct{})
		cl.peerRoutes.m[peer] = have
	}
	if replace {
		keep := make(map[string]struct{}, len(filters))
		for _, f := range filters {
			keep[f] = struct{}{}
		}
		for f := range have {
			if _, ok := keep[f]; !ok {
				_, _, _ = cl.routes.Unsubscribe(f, peer)
				delete(have, f)
			}
		}
	}
	for _, f := range filters {
		if _, ok := have[f]; ok {
			continue
		}
		if _, _, err := cl.routes.Subscribe(f, peer, struct{}{}); err != nil {
			cl.s.log.Warn("peer announced a bad filter", "peer", peer, "filter", f, "err", err)
			continue
		}
		have[f] = struct{}{}
	}
	if len(have) == 0 {
		delete(cl.peerRoutes.m, peer)
	}
}

func (cl *cluster) delRoute(peer, filter string) {
	cl.peerRoutes.Lock()
	defer cl.peerRoutes.Unlock()
	if have := cl.peerRoutes.m[peer]; have != nil {
		if _, ok := have[filter]; ok {
			delete(have, filter)
			_, _, _ = cl.routes.Unsubscribe(filter, peer)
		}
	}
}

func decodeRoutes(b []byte) (first bool, fs []string, err error) {
	r := &wireReader{b: b}
	first = r.byte1("route chunk") == 1
	for len(r.b) > 0 && r.err == nil {
		fs = append(fs, string(r.str("filter")))
	}
	return first, fs, r.err
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
