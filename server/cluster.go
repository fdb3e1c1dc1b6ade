package server

import (
	"cmp"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
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
	// routes maps filters to the peers that announced them, and whether a
	// persistent session there holds the filter.
	routes *trie.Trie[string, bool]

	// ann counts local subscriptions per filter; announcements are made
	// under its lock so that an add and a delete of one filter reach
	// peers in the order they happened, numbered by seq (clusterroutes.go).
	ann struct {
		sync.Mutex
		local   map[string]int
		durable map[string]int // of local, those of persistent sessions
		seq     uint64
		digest  uint64 // XOR of routeEntryHash over local's routes
	}
	// peerRoutes is what each peer announced, to replace it on a resync.
	peerRoutes struct {
		sync.Mutex
		m map[string]*peerRouteSet
	}
	retainSync retainSync   // retainsync.go
	origins    *origins     // identities of the messages published here (origin.go)
	waits      peerWaits    // forwarded records the peers' acknowledgements stand in for (peerack.go)
	away       awaySet      // sessions made while a peer that may hold them was away (away.go)
	feats      peerFeatures // what each peer reads (features.go)
	// drop, when a test sets it, is the kind of the next broadcast record
	// to lose, as a full control lane would.
	drop atomic.Int32
	reqs struct {
		sync.Mutex
		next uint64
		m    map[uint64]*takeoverReq
		// byClient is the request of each client id whose moved session
		// is not installed yet, for deliveries sent on early (early).
		byClient map[string]*takeoverReq
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
	cl := &cluster{s: s, routes: trie.New[string, bool](), held: newHeld(), origins: newOrigins()}
	cl.ann.local = make(map[string]int)
	cl.ann.durable = make(map[string]int)
	cl.peerRoutes.m = make(map[string]*peerRouteSet)
	cl.reqs.m = make(map[uint64]*takeoverReq)
	cl.reqs.byClient = make(map[string]*takeoverReq)
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
	s.subs.Walk(func(filter string, sess *session, _ fanout.Options) bool {
		cl.ann.local[filter]++
		if sess.routeDurable() {
			cl.ann.durable[filter]++
		}
		return true
	})
	for f := range cl.ann.local {
		cl.ann.digest ^= routeEntryHash(f, cl.ann.durable[f] > 0)
	}
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

// broadcast sends an unreliable control record to every linked peer.
func (cl *cluster) broadcast(kind byte, body []byte) {
	if cl.dropped(kind) {
		return
	}
	for _, p := range cl.node.Peers() {
		_ = cl.node.Send(p, 0, kind, body, false)
	}
}

// control sends peer an unreliable control record.
func (cl *cluster) control(peer string, kind byte, body []byte) {
	if !cl.dropped(kind) {
		_ = cl.node.Send(peer, 0, kind, body, false)
	}
}

// dropped reports whether a test asked to lose this record (drop).
func (cl *cluster) dropped(kind byte) bool {
	k := cl.drop.Load()
	return k == int32(kind) && cl.drop.CompareAndSwap(k, 0)
}

// PeerUp sends a peer everything it must know of this node: the whole
// route set (which replaces what it had), every retained message and
// clearing, the bans and lifted bans, the clients connected here, and
// the sessions restored here that the peer may own now.
func (cl *cluster) PeerUp(peer string) {
	cl.hello(peer)      // features.go
	cl.sendBans(peer)   // bans.go
	cl.sendRoutes(peer) // clusterroutes.go

	cl.sendRetained(peer, nil) // retainsync.go
	var b []byte

	// The sessions are listed under Server.sessions and looked at after:
	// that lock is never held while taking another (doc.go), and holding
	// it through a million sessions would stall every CONNECT meanwhile.
	for _, sess := range cl.s.sessionList() {
		sess.mu.Lock()
		on, since := sess.mu.cl != nil, sess.mu.since
		sess.mu.Unlock()
		if on {
			_ = cl.node.Send(peer, 0, recConnected, appendConnected(b[:0], sess.id, since), false)
		}
	}
	cl.sendClaims(peer) // stale.go
}

// PeerForget drops the routes of a peer gone for good, and what its
// last retained digests said.
func (cl *cluster) PeerForget(peer string) {
	cl.dropRoutes(peer)
	cl.forgetRetainPeer(peer)
}

// testBeforeReceive, when a test sets it, runs before each batch of a
// peer's records is taken.
var testBeforeReceive atomic.Pointer[func(peer string, recs []interlink.Record)]

// Receive applies one batch from a peer; done is called once its effects
// are as durable as this node's own publishes, or with the error that kept
// them from the disk (the peer sends the reliable records again). While
// the store refuses writes, the reliable records are refused up front, as
// a publisher's QoS 1/2 are, rather than delivered once now and again
// when the peer resends them.
func (cl *cluster) Receive(peer string, pos interlink.Position, recs []interlink.Record, done func(error)) {
	if f := testBeforeReceive.Load(); f != nil {
		(*f)(peer, recs)
	}
	s := cl.s
	ob := cl.obs.Get().(*outbox)
	refused := s.storeUnhealthy()
	now := s.now()
	resync := false
	if s.store != nil {
		ob.seen = []seenAt{} // not nil: noted (firstLocked)
	}
	for _, r := range recs {
		if refused != nil && r.Reliable {
			continue
		}
		var err error
		var ask bool // the peer's whole route set is wanted
		switch r.Kind {
		case recForward:
			m := &ob.scratch
			if err = decodeForward(r.Body, now, &ob.fw, m); err == nil {
				if m.qos > 0 {
					m = m.own() // queues and inflight windows keep it
				}
				s.stats.forwardedIn.Add(1)
				ob.src = interlink.PeerPosition{Peer: peer, Position: interlink.Position{Epoch: pos.Epoch, Lane: pos.Lane, Seq: r.Seq}}
				s.routeFrom(ob, m, &ob.fw)
				ob.src = interlink.PeerPosition{}
			}
		case recRouteAdd, recRouteDel:
			ask, err = cl.routeDelta(peer, r.Kind == recRouteAdd, r.Body)
		case recRoutesAll:
			ask, err = cl.routeSetChunk(peer, r.Body)
		case recRouteDigest:
			ask, err = cl.routeDigestFrom(peer, r.Body)
		case recRouteResync:
			cl.sendRoutes(peer)
		case recClaims:
			err = cl.claimed(peer, r.Body)
		case recOwned:
			err = cl.owned(ob, peer, r.Body)
		case recStale:
			err = cl.staleArrived(ob, r.Body, now)
		case recHello:
			err = cl.helloFrom(peer, r.Body)
		case recRetainDigest:
			err = cl.retainDigestFrom(peer, r.Body)
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
			err = cl.connectedElsewhere(ob, peer, r.Body)
		case recRedirect:
			err = cl.redirected(ob, r.Body, now)
		case recBan:
			err = cl.receiveBan(peer, r.Body)
		case recAdminReq:
			err = cl.adminRequest(peer, r.Body)
		case recAdminAns:
			err = cl.adminAnswer(peer, r.Body)
		default:
			err = errors.New("unknown record kind")
		}
		resync = resync || ask
		if err != nil {
			s.log.Warn("dropping a bad record from a peer", "peer", peer, "kind", r.Kind, "err", err)
		}
	}
	if resync {
		cl.askRoutes(peer)
	}
	if s.store != nil && refused == nil && (len(recs) == 0 || pos.Seq > 0 && (ob.batch.Len() > 0 || ob.dropped)) {
		// Written with what the records did, so that after a crash the
		// peer's replay of them is dropped rather than delivered twice.
		// Records that wrote nothing need no position when they went to
		// clean sessions only: after a crash there is nothing they could
		// be delivered to twice, and the peer's acknowledgement then
		// costs no disk write (peerack.go). Records a session dropped as
		// given already (ob.dropped) wrote nothing either, but after a
		// crash the session no longer remembers what it was given, and
		// would take the replay. Without records, the link takes back a
		// position stored past records that could not be stored.
		ob.batch.PutMeta(markKey(peer, pos), markValue(pos))
	}
	ob.dropped = false
	if seen := ob.seen; len(seen) > 0 {
		// Not stored, the batch comes again: what it gave is not seen.
		inner := done
		done = func(err error) {
			if err != nil {
				forgetSeen(seen)
			}
			inner(err)
		}
	}
	ob.seen = nil
	if refused != nil {
		done(refused)
	} else {
		// Its effects are out (clients got the messages): refused by a
		// disk that fills now, it is written once the disk takes writes
		// rather than sent again by the peer and delivered twice.
		ob.after, ob.keep = done, true
	}
	ob.flush()
	cl.obs.Put(ob)
}

// send queues a record for peer. A reliable one goes into the room ob
// holds in peer's queue, if any (reserveFor, on lane), and is also written
// to the store in ob's batch (when there is a store), so that what this
// node acknowledged to a publisher survives its own crash; it is deleted
// when the peer acknowledges it (Settled) and sent again after a restart.
func (cl *cluster) send(ob *outbox, peer string, lane int, kind byte, body []byte, reliable bool) error {
	if !reliable {
		return cl.node.Send(peer, lane, kind, body, false)
	}
	g := cl.s.store
	if g == nil {
		return cl.sendKept(ob, peer, lane, kind, body)
	}
	r, held := ob.takeReservation(peer)
	token := g.st.NextID()
	var pos interlink.Position
	var err error
	if held {
		pos, err = cl.node.SendReserved(r, kind, body, token)
	} else {
		pos, err = cl.node.SendTracked(peer, lane, kind, body, token)
	}
	if err == nil && !cl.standIn(ob, peer, token, pos, kind, body) {
		ob.batch.CreateMeta(spoolKey(peer, token), spoolValue(pos, kind, body))
	}
	return err
}

// sendKept queues a reliable record for peer that is kept in memory only,
// until the peer acknowledges it, in the room ob holds in peer's queue if
// any.
func (cl *cluster) sendKept(ob *outbox, peer string, lane int, kind byte, body []byte) error {
	if r, held := ob.takeReservation(peer); held {
		_, err := cl.node.SendReserved(r, kind, body, 0)
		return err
	}
	return cl.node.Send(peer, lane, kind, body, true)
}
