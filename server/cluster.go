package server

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/persist"
	"github.com/gannetmq/gannet/trie"
)

// cluster is the broker's side of the interlink: it announces local
// routes, keeps the table of peers' routes, forwards publishes to the
// peers that have subscribers, replicates retained messages and moves
// sessions between nodes (interlink.Handler).
type cluster struct {
	s    *Server
	node *interlink.Node
	// takeoverWait replaces takeoverTimeout when a test sets it
	// (nanoseconds).
	takeoverWait atomic.Int64
	// routes maps filters to the peers that announced them.
	routes *trie.Trie[string, struct{}]

	// ann counts local subscriptions per filter; announcements are made
	// under its lock so that an add and a delete of one filter reach
	// peers in the order they happened.
	ann struct {
		sync.Mutex
		local map[string]int
	}
	// peerRoutes is what each peer announced, to replace it on a resync.
	peerRoutes struct {
		sync.Mutex
		m map[string]map[string]struct{}
	}
	reqs struct {
		sync.Mutex
		next uint64
		m    map[uint64]*takeoverReq
	}
	obs  sync.Pool // outboxes for receiving batches
	held *held     // connections whose input waits for the lanes (pace.go)
}

// takeoverTimeout bounds how long a CONNECT waits for peers to hand over
// its session.
const takeoverTimeout = 3 * time.Second

// routeChunk bounds a recRoutesAll record.
const routeChunk = 256 << 10

func newCluster(s *Server) (*cluster, error) {
	cl := &cluster{s: s, routes: trie.New[string, struct{}](), held: newHeld()}
	cl.ann.local = make(map[string]int)
	cl.peerRoutes.m = make(map[string]map[string]struct{})
	cl.reqs.m = make(map[uint64]*takeoverReq)
	cl.obs.New = func() any { return newOutbox(s, nil) }
	ic := *s.cfg.Cluster
	ic.Logger = s.log
	// What was forwarded to a peer that is gone longer than ForgetAfter
	// may still be for a session there that has not expired.
	ic.KeepQueued = s.cfg.MaxSessionExpiry
	ic.Metrics = s.stats.set
	n, err := interlink.New(ic, cl)
	if err != nil {
		return nil, err
	}
	cl.node = n
	for _, m := range s.marks {
		n.Restore(m.peer, m.pos)
	}
	s.marks = nil
	// Records acknowledged to publishers and not yet to peers go again,
	// in the order they were first sent on each lane: by run (the high
	// bits of the token) and sequence number.
	slices.SortFunc(s.spool, func(a, b spooled) int {
		return cmp.Or(strings.Compare(a.peer, b.peer), cmp.Compare(a.pos.Lane, b.pos.Lane),
			cmp.Compare(a.token>>40, b.token>>40), cmp.Compare(a.pos.Epoch, b.pos.Epoch), cmp.Compare(a.pos.Seq, b.pos.Seq))
	})
	for _, sp := range s.spool {
		if err := n.Preload(sp.peer, sp.pos, sp.kind, sp.body, sp.token); err != nil {
			s.log.Warn("cannot queue a kept record for a peer again", "peer", sp.peer, "err", err)
		}
	}
	if len(s.spool) > 0 {
		s.log.Info("records kept for peers queued again", "records", len(s.spool))
	}
	s.spool = nil
	// Sessions loaded from the store are subscribed already.
	s.subs.Walk(func(filter string, _ *session, _ fanout.Options) bool {
		cl.ann.local[filter]++
		return true
	})
	return cl, nil
}

// ReloadClusterTLS reads the cluster links' certificate, key and CA again
// (interlink.Node.ReloadTLS); without a cluster, or one without TLS, it
// does nothing.
func (s *Server) ReloadClusterTLS() error {
	if s.cl == nil {
		return nil
	}
	return s.cl.node.ReloadTLS()
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
		cl.broadcast(kind, []byte(filter))
	}
}

// broadcast sends an unreliable control record to every linked peer.
func (cl *cluster) broadcast(kind byte, body []byte) {
	for _, p := range cl.node.Peers() {
		_ = cl.node.Send(p, 0, kind, body, false)
	}
}

// PeerUp sends a peer everything it must know of this node: the whole
// route set (which replaces what it had), every retained message and
// clearing, and the clients connected here.
func (cl *cluster) PeerUp(peer string) {
	cl.ann.Lock()
	chunk := []byte{1}
	flush := func() {
		_ = cl.node.Send(peer, 0, recRoutesAll, chunk, false)
		chunk = append(chunk[:0], 0)
	}
	for f := range cl.ann.local {
		chunk = appendStr(chunk, []byte(f))
		if len(chunk) >= routeChunk {
			flush()
		}
	}
	flush()
	cl.ann.Unlock()

	msgs, tombs := cl.s.retained.snapshot()
	now := cl.s.now()
	var b []byte
	for _, m := range msgs {
		if bytes.HasPrefix(m.topic, []byte("$SYS/")) {
			continue // each node's own
		}
		b = appendRetained(b[:0], m, now)
		_ = cl.node.Send(peer, 0, recRetained, b, false)
	}
	for t, stamp := range tombs {
		m := &message{topic: []byte(t), stamp: stamp, retain: true}
		b = appendRetained(b[:0], m, now)
		_ = cl.node.Send(peer, 0, recRetained, b, false)
	}

	// The sessions are listed under Server.sessions and looked at after:
	// that lock is never held while taking another (doc.go), and holding
	// it through a million sessions would stall every CONNECT meanwhile.
	cl.s.sessions.Lock()
	all := make([]*session, 0, len(cl.s.sessions.m))
	for _, sess := range cl.s.sessions.m {
		all = append(all, sess)
	}
	cl.s.sessions.Unlock()
	for _, sess := range all {
		sess.mu.Lock()
		on, since := sess.mu.cl != nil, sess.mu.since
		sess.mu.Unlock()
		if on {
			_ = cl.node.Send(peer, 0, recConnected, appendConnected(b[:0], sess.id, since), false)
		}
	}
}

// PeerForget drops the routes of a peer gone for good.
func (cl *cluster) PeerForget(peer string) {
	cl.setRoutes(peer, nil, true)
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

// Receive applies one batch from a peer; done is called once its effects
// are as durable as this node's own publishes, or with the error that kept
// them from the disk (the peer sends the reliable records again). While
// the store refuses writes, the reliable records are refused up front, as
// a publisher's QoS 1/2 are, rather than delivered once now and again
// when the peer resends them.
func (cl *cluster) Receive(peer string, pos interlink.Position, recs []interlink.Record, done func(error)) {
	s := cl.s
	ob := cl.obs.Get().(*outbox)
	refused := s.storeUnhealthy()
	if (pos.Seq > 0 || len(recs) == 0) && s.store != nil && refused == nil {
		// Written with what the records did, so that after a crash the
		// peer's replay of them is dropped rather than delivered twice.
		// Without records, the link takes back a position stored past
		// records that could not be stored.
		ob.batch.PutMeta(markKey(peer, pos), markValue(pos))
	}
	now := s.now()
	var routeChunks []string
	replace := false
	for _, r := range recs {
		if refused != nil && r.Reliable {
			continue
		}
		var err error
		switch r.Kind {
		case recForward:
			m := &ob.scratch
			if err = decodeForward(r.Body, now, &ob.fw, m); err == nil {
				if m.qos > 0 {
					m = m.own() // queues and inflight windows keep it
				}
				s.stats.forwardedIn.Add(1)
				s.routeFrom(ob, m, &ob.fw)
			}
		case recRouteAdd:
			cl.setRoutes(peer, []string{string(r.Body)}, false)
		case recRouteDel:
			cl.delRoute(peer, string(r.Body))
		case recRoutesAll:
			var fs []string
			var first bool
			if first, fs, err = decodeRoutes(r.Body); err == nil {
				if first {
					if routeChunks != nil || replace {
						cl.setRoutes(peer, routeChunks, replace)
					}
					routeChunks, replace = fs, true
				} else {
					routeChunks = append(routeChunks, fs...)
				}
			}
		case recRetained:
			var m *message
			if m, err = decodeRetained(r.Body, now); err == nil {
				cl.applyRetained(ob, m)
			}
		case recTakeover:
			err = cl.handOverTo(ob, peer, r.Body)
		case recSession:
			err = cl.sessionArrived(peer, r.Body, now)
		case recConnected:
			err = cl.connectedElsewhere(ob, r.Body)
		case recRedirect:
			err = cl.redirected(ob, r.Body, now)
		default:
			err = errors.New("unknown record kind")
		}
		if err != nil {
			s.log.Warn("dropping a bad record from a peer", "peer", peer, "kind", r.Kind, "err", err)
		}
	}
	if replace || routeChunks != nil {
		cl.setRoutes(peer, routeChunks, replace)
	}
	if refused != nil {
		done(refused)
	} else {
		ob.after = done
	}
	ob.flush()
	cl.obs.Put(ob)
}

// markKey names the stored position of one run of a peer's lane (a
// restarted peer replays what it kept under its earlier run's identity).
func markKey(peer string, pos interlink.Position) string {
	return markPrefix + string(rune('0'+pos.Lane%10)) + string(rune('0'+pos.Lane/10)) + "/" +
		strconv.FormatUint(pos.Epoch|1<<63, 16) + "/" + peer
}

const markPrefix = "interlink/"

func markValue(pos interlink.Position) []byte {
	b := binary.BigEndian.AppendUint64(nil, pos.Epoch)
	return binary.BigEndian.AppendUint64(b, pos.Seq)
}

// restoreMark reads a stored position back; ok is false for another meta
// value.
func restoreMark(key string, val []byte) (peer string, pos interlink.Position, ok bool) {
	rest, found := strings.CutPrefix(key, markPrefix)
	if !found || len(rest) < 21 || rest[2] != '/' || rest[19] != '/' || len(val) != 16 {
		return "", pos, false
	}
	pos.Lane = (rest[0] - '0') + (rest[1]-'0')*10
	pos.Epoch = binary.BigEndian.Uint64(val)
	pos.Seq = binary.BigEndian.Uint64(val[8:])
	return rest[20:], pos, true
}

func decodeRoutes(b []byte) (first bool, fs []string, err error) {
	r := &wireReader{b: b}
	first = r.byte1("route chunk") == 1
	for len(r.b) > 0 && r.err == nil {
		fs = append(fs, string(r.str("filter")))
	}
	return first, fs, r.err
}

// appendRetained encodes a retained message (or a clearing: empty
// payload) with its stamp.
func appendRetained(dst []byte, m *message, now int64) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, uint64(m.stamp))
	return appendMessage(dst, m, now)
}

func decodeRetained(b []byte, now int64) (*message, error) {
	r := &wireReader{b: b}
	if v := r.byte1("version"); r.err == nil && v != wireVersion {
		return nil, errWire
	}
	stamp := r.uvarint("stamp")
	var rm message
	readMessage(r, now, &rm)
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return nil, r.err
	}
	m := rm.own()
	m.stamp = int64(stamp)
	m.retain = true
	return m, nil
}

// applyRetained takes a peer's retained message unless this node has a
// newer version of the topic.
func (cl *cluster) applyRetained(ob *outbox, m *message) {
	cl.s.observe(m.stamp)
	if !cl.s.retained.apply(m) {
		return
	}
	if cl.s.store == nil {
		return
	}
	if len(m.payload) == 0 {
		ob.batch.DeleteRetained(m.topic)
	} else {
		ob.batch.PutRetained(m.record())
	}
}

// replicateRetained sends a retained message set (or cleared) here to
// every peer.
func (cl *cluster) replicateRetained(m *message) {
	b := appendRetained(nil, m, cl.s.now())
	cl.broadcast(recRetained, b)
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

// connected tells peers that a client connected here, so that an older
// connection with the same id elsewhere (after a partition) goes.
func (cl *cluster) connected(id string, since int64) {
	cl.broadcast(recConnected, appendConnected(nil, id, since))
}

func appendConnected(dst []byte, id string, since int64) []byte {
	dst = binary.AppendUvarint(dst, uint64(since))
	return append(dst, id...)
}

// connectedElsewhere ends the local connection of a client that connected
// on a peer later: the newest connection wins.
func (cl *cluster) connectedElsewhere(ob *outbox, b []byte) error {
	since, n := binary.Uvarint(b)
	if n <= 0 {
		return errWire
	}
	id := string(b[n:])
	s := cl.s
	s.observe(int64(since))
	s.sessions.Lock()
	sess := s.sessions.m[id]
	s.sessions.Unlock()
	if sess == nil {
		return nil
	}
	sess.mu.Lock()
	older := sess.mu.cl != nil && sess.mu.since < int64(since)
	sess.mu.Unlock()
	if older {
		s.log.Info("client connected on another node later; closing it here", "client", id)
		s.handOver(ob, sess)
	}
	return nil
}

// takeoverReq is a CONNECT waiting for peers to hand over its session.
type takeoverReq struct {
	id      uint64
	c       *client
	req     *connectReq
	waiting map[string]bool
	moved   *movedSession
	timer   *time.Timer
	refused bool // a peer holds the session for another user
}

// takeover asks every linked peer to hand over c's session. It reports
// false when there is no one to ask.
func (cl *cluster) takeover(c *client, req *connectReq) bool {
	peers := cl.node.Peers()
	t := &takeoverReq{c: c, req: req, waiting: make(map[string]bool)}
	cl.reqs.Lock()
	cl.reqs.next++
	t.id = cl.reqs.next
	body := binary.AppendUvarint(nil, t.id)
	clean := byte(0)
	if req.cleanStart {
		clean = 1
	}
	body = append(body, clean)
	// Who asks: a peer hands the session only to its owner (auth.go).
	var who byte
	var user string
	if c.ident != nil {
		who, user = 1, c.ident.user
		if c.ident.superuser {
			who |= 2
		}
	}
	body = append(body, who)
	body = appendStr(body, []byte(user))
	body = append(body, req.id...)
	for _, p := range peers {
		if !cl.node.Linked(p) {
			continue
		}
		if cl.node.Send(p, 0, recTakeover, body, true) == nil {
			t.waiting[p] = true
		}
	}
	if len(t.waiting) == 0 {
		cl.reqs.Unlock()
		return false
	}
	cl.reqs.m[t.id] = t
	wait := takeoverTimeout
	if d := cl.takeoverWait.Load(); d > 0 {
		wait = time.Duration(d) // a test's
	}
	t.timer = time.AfterFunc(wait, func() { cl.finishTakeover(t.id, true) })
	cl.reqs.Unlock()
	return true
}

// handOverTo answers a peer's takeover request: the session leaves this
// node (its connection gets DISCONNECT 0x8E, no will) and its state goes
// to the peer.
func (cl *cluster) handOverTo(ob *outbox, peer string, b []byte) error {
	r := &wireReader{b: b}
	id := r.uvarint("request id")
	clean := r.byte1("clean start")
	who := r.byte1("who")
	user := string(r.str("user"))
	if r.err != nil {
		return r.err
	}
	client := string(r.b)
	s := cl.s
	reply := binary.AppendUvarint(nil, id)
	if who&1 != 0 && !s.mayOwn(client, &identity{user: user, superuser: who&2 != 0}) {
		// Another user's session: untouched, and the CONNECT is refused.
		s.log.Warn("refusing a peer's takeover: the client id belongs to another user", "client", client, "peer", peer)
		reply = append(reply, 2)
		if err := cl.send(ob, peer, 0, recSession, reply, true); err != nil {
			s.log.Warn("cannot answer a peer's takeover", "client", client, "peer", peer, "err", err)
		}
		return nil
	}
	// The answer is queued before the session ends here: when it cannot
	// be (the peer's queue is full), the session stays, and the peer's
	// CONNECT goes on without it once it stops waiting.
	answer := func(mv *movedSession) bool {
		r := reply
		// A session with expiry 0 ended with the connection it was
		// taken from: it is never reused [MQTT-3.1.2-6].
		if mv != nil && clean == 0 && mv.expiry > 0 {
			r = append(r, 1)
			r = appendMoved(r, mv, s.now())
		} else {
			r = append(r, 0)
		}
		// Reliable and kept: the answer carries the session, which
		// will no longer be stored here.
		if err := cl.send(ob, peer, 0, recSession, r, true); err != nil {
			s.log.Warn("cannot answer a peer's takeover; the session stays here", "client", client, "peer", peer, "err", err)
			return false
		}
		if mv != nil && clean == 0 && mv.expiry > 0 {
			s.log.Info("session handed over", "client", client, "to", peer)
		}
		return true
	}
	s.sessions.Lock()
	sess := s.sessions.m[client]
	s.sessions.Unlock()
	if sess != nil {
		s.handOverTo(ob, sess, peer, answer)
	} else {
		answer(nil)
	}
	return nil
}

// sessionArrived takes a peer's answer to a takeover request.
func (cl *cluster) sessionArrived(peer string, b []byte, now int64) error {
	r := &wireReader{b: b}
	id := r.uvarint("request id")
	present := r.byte1("present")
	if r.err != nil {
		return r.err
	}
	var mv *movedSession
	if present == 1 {
		var err error
		if mv, err = decodeMoved(r, now); err != nil {
			return err
		}
	}
	cl.reqs.Lock()
	t := cl.reqs.m[id]
	if t == nil {
		cl.reqs.Unlock()
		if mv != nil {
			// The CONNECT gave up waiting (takeover.go, keepMoved).
			ob := newOutbox(cl.s, nil)
			cl.s.keepMoved(ob, mv)
			ob.flush()
		}
		return nil
	}
	delete(t.waiting, peer)
	if present == 2 {
		t.refused = true
	}
	if mv != nil && (t.moved == nil || mv.since > t.moved.since) {
		t.moved = mv
	}
	last := len(t.waiting) == 0
	cl.reqs.Unlock()
	if last {
		cl.finishTakeover(id, false)
	}
	return nil
}

// finishTakeover resumes the parked CONNECT on its loop.
func (cl *cluster) finishTakeover(id uint64, timedOut bool) {
	cl.reqs.Lock()
	t := cl.reqs.m[id]
	delete(cl.reqs.m, id)
	cl.reqs.Unlock()
	if t == nil {
		return
	}
	t.timer.Stop()
	if timedOut {
		cl.s.log.Warn("peers did not answer a session takeover in time; connecting without their state",
			"client", t.req.id, "waiting_for", len(t.waiting))
	}
	c := t.c
	err := c.loop.el.Execute(context.Background(), runFunc(func() {
		ob := c.loop.ob
		if c.closed {
			if t.moved != nil {
				cl.s.keepMoved(ob, t.moved)
			}
			ob.flush()
			return
		}
		c.parked = false
		if t.refused {
			if t.moved != nil {
				cl.s.install(ob, t.moved)
			}
			c.srv.stats.connRefusedOwner.Inc()
			c.refuseConnect(ob, codec.ClientIdentifierNotValid, codec.V3IdentifierRejected,
				"client id belongs to another user on a peer")
			ob.flush()
			return
		}
		c.finishConnect(ob, t.req, t.moved)
		ob.flush()
		_ = c.gc.Wake(nil)
	}))
	if err != nil && t.moved != nil {
		ob := newOutbox(cl.s, nil)
		cl.s.install(ob, t.moved)
		ob.flush()
	}
}

// redirect sends a delivery for a session that has moved to peer on to
// it: a message routed here before the peer announced the session's
// subscriptions.
// REQUIRES: the session's mu held (sending only queues).
func (cl *cluster) redirect(ob *outbox, client, peer string, m *message, qos byte, retain bool, subIDs []uint32) {
	b := appendStr(nil, []byte(client))
	fl := qos & 3
	if retain {
		fl |= 4
	}
	b = append(b, fl)
	b = binary.AppendUvarint(b, uint64(len(subIDs)))
	for _, id := range subIDs {
		b = binary.AppendUvarint(b, uint64(id))
	}
	b = appendMessage(b, m, cl.s.now())
	if err := cl.send(ob, peer, cl.node.LaneFor(m.from), recRedirect, b, qos > 0); err != nil && qos > 0 {
		cl.s.logThrottled("cannot send a moved session's message on", "client", client, "peer", peer, "err", err)
	}
}

// redirected delivers a message sent on by the node a session left.
func (cl *cluster) redirected(ob *outbox, b []byte, now int64) error {
	r := &wireReader{b: b}
	client := r.str("client id")
	fl := r.byte1("flags")
	n := r.uvarint("subscription ids")
	if n > uint64(len(r.b)) {
		r.fail("subscription ids")
	}
	var subIDs []uint32
	for i := uint64(0); i < n && r.err == nil; i++ {
		subIDs = append(subIDs, uint32(r.uvarint("subscription id")))
	}
	var m message
	readMessage(r, now, &m)
	if r.err == nil && (fl&3 == 3 || fl&^7 != 0) {
		r.fail("flags")
	}
	if r.err != nil {
		return r.err
	}
	s := cl.s
	s.sessions.Lock()
	sess := s.sessions.m[string(client)]
	s.sessions.Unlock()
	if sess != nil {
		sess.deliverMoved(ob, m.own(), fl&3, fl&4 != 0, subIDs, now)
	}
	return nil
}

// send queues a record for peer. A reliable one is also written to the
// store in ob's batch (when there is a store), so that what this node
// acknowledged to a publisher survives its own crash; it is deleted when
// the peer acknowledges it (Settled) and sent again after a restart.
func (cl *cluster) send(ob *outbox, peer string, lane int, kind byte, body []byte, reliable bool) error {
	if !reliable {
		return cl.node.Send(peer, lane, kind, body, false)
	}
	g := cl.s.store
	if g == nil {
		return cl.node.Send(peer, lane, kind, body, true)
	}
	token := g.st.NextID()
	pos, err := cl.node.SendTracked(peer, lane, kind, body, token)
	if err == nil {
		ob.batch.CreateMeta(spoolKey(peer, token), spoolValue(pos, kind, body))
	}
	return err
}

// Settled deletes the stored copies of records a peer acknowledged.
func (cl *cluster) Settled(peer string, tokens []uint64) {
	g := cl.s.store
	if g == nil {
		return
	}
	var b persist.Batch
	for _, t := range tokens {
		b.DeleteMeta(spoolKey(peer, t))
	}
	g.commit(&b, func(error) {}, true)
}

const spoolPrefix = "spool/"

// spoolKey orders a peer's kept records by token, which grows with every
// record and across restarts (persist.Store.NextID).
func spoolKey(peer string, token uint64) string {
	return spoolPrefix + peer + "/" + strconv.FormatUint(token|1<<63, 16)
}

// spoolValue is a kept record: its identity on the link (so that a peer
// that had it drops the copy sent after a restart), its kind and body.
func spoolValue(pos interlink.Position, kind byte, body []byte) []byte {
	b := make([]byte, 0, 18+len(body))
	b = binary.BigEndian.AppendUint64(b, pos.Epoch)
	b = binary.BigEndian.AppendUint64(b, pos.Seq)
	b = append(b, pos.Lane, kind)
	return append(b, body...)
}

// restoreSpool reads a kept record back; ok is false for another meta
// value.
func restoreSpool(key string, val []byte) (sp spooled, ok bool) {
	rest, found := strings.CutPrefix(key, spoolPrefix)
	i := strings.LastIndexByte(rest, '/')
	if !found || i <= 0 || len(val) < 18 {
		return sp, false
	}
	t, err := strconv.ParseUint(rest[i+1:], 16, 64)
	if err != nil || t>>63 == 0 {
		return sp, false
	}
	pos := interlink.Position{Epoch: binary.BigEndian.Uint64(val), Seq: binary.BigEndian.Uint64(val[8:]), Lane: val[16]}
	return spooled{peer: rest[:i], token: t &^ (1 << 63), pos: pos, kind: val[17], body: val[18:]}, true
}

// spooled is a record kept for a peer, read back at start.
type spooled struct {
	peer  string
	token uint64
	pos   interlink.Position
	kind  byte
	body  []byte
}
