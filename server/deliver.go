package server

import (
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/persist"
	"github.com/gannetmq/gannet/trie"
)

// outbox collects the bytes that one unit of work (one OnTraffic call, one
// timer) sends to clients, so that each client is written once, with one
// writev, however many messages it got. Clients on the outbox's own event
// loop get their bytes appended directly; clients on other loops are
// reached with one Execute per loop carrying everything for that loop.
//
// An outbox belongs to one goroutine at a time.
type outbox struct {
	srv    *Server
	home   *loop     // the event loop running this work; nil off-loop
	local  []*client // home-loop clients with pending bytes
	remote map[*loop]*xfer

	// scratch for routing one message
	enc     fanout.Encoder
	tmpl    codec.Publish
	matches []match
	index   map[*session]int
	parts   [][]byte

	// transit counts, per client of another loop, the deliveries in its
	// inflight window this outbox holds until flush (client.flow counts
	// every goroutine's); nil until the first.
	transit map[*client]int32

	// a QoS 0 message being routed that no one keeps (borrow)
	scratch      message
	scratchProps codec.Properties

	// src is, while the outbox takes a peer's reliable record, where that
	// record is in the peer's stream (origin.go); zero otherwise.
	src interlink.PeerPosition

	// seen is, while the outbox takes a peer's batch, the origins
	// sessions remembered from it (origin.go); nil otherwise.
	seen []seenAt
	// dropped: while the outbox takes a peer's batch, a session dropped
	// one of its records as given already (Receive stores the batch's
	// position then).
	dropped bool
	// keep has the next commit kept when the store refuses it
	// (storeGate.commitKept): a peer's batch that clients were given.
	keep bool

	// cluster forwarding scratch (cluster.go); skip is the clients the
	// message being forwarded names (away.go)
	fw      forward
	skip    []string
	targets []target
	rgroups []rgroup
	fwmsg   []byte
	fwbuf   []byte
	// room taken in peers' queues for the message being routed, and
	// whether its routes are matched already (clusterreserve.go)
	resv    []reservation
	matched bool

	// store writes of this unit of work, and the acknowledgements that wait
	// for them (durable.go); created lists the queued messages whose
	// entries batch creates (track).
	batch   persist.Batch
	created []createdEntry
	held    []heldAck
	// forwarded records whose peers' acknowledgements the held ones wait
	// for too (peerack.go)
	peerWaits []*peerWait
	// after runs once this unit of work's writes are durable (at once
	// without a store), or with the error that kept them from the disk:
	// peers' batches are acknowledged from it, or asked for again.
	after func(error)
	// lazyOps, when batch still holds exactly that many writes at the
	// commit, and nothing waits for them, says they are a new session's
	// record that needs no fsync of its own (finishConnect).
	lazyOps int

	// Latency samples (latency.go): when the PUBLISH being handled was
	// taken up, if it is timed (monotime; 0: not timed), the broker clock
	// tick of the last one timed, and the subscriber of the last live
	// delivery of the message being routed.
	sampleAt   int64
	sampleTick int64
	last       *client
}

// match is one receiver of a message and its merged options.
type match struct {
	s *session
	m fanout.Merged
	g *trie.Group[*session, fanout.Options] // the shared group matched; nil: a plain subscription
}

// xfer carries bytes for clients of one event loop from another goroutine.
// It runs on the target loop.
type xfer struct {
	items []xitem
	parts [][]byte
	// sampleCl's bytes carry a timed publish taken up at sampleAt
	// (latency.go); nil: none.
	sampleCl *client
	sampleAt int64
}

type xitem struct {
	cl *client
	n  int // number of parts
	// transit: a delivery in cl's inflight window, counted in cl.flow
	// until it arrives
	transit bool
}

var xferPool = sync.Pool{New: func() any { return new(xfer) }}

func newOutbox(srv *Server, home *loop) *outbox {
	return &outbox{srv: srv, home: home, remote: make(map[*loop]*xfer), index: make(map[*session]int)}
}

// add queues one whole packet for cl.
func (ob *outbox) add(cl *client, pkt []byte) {
	ob.parts = append(ob.parts[:0], pkt)
	ob.addSlices(cl, ob.parts, false)
}

// addParts queues a shared frame for cl with its packet id and topic
// alias bytes. A frame with a packet id is in cl's inflight window: sent
// towards another loop, it counts as in transit (client.flow) until it
// arrives, and neither the client's loop nor another goroutine lets out
// the session's queue or delivers into the window meanwhile
// (othersInTransit), which would pass it.
// REQUIRES: cl's session.mu held when id is not nil.
func (ob *outbox) addParts(cl *client, fr fanout.Frame, id, alias []byte) {
	ob.parts = fr.Parts(ob.parts[:0], id, alias)
	ob.addSlices(cl, ob.parts, id != nil)
}

// addSlices queues parts for cl; windowed: they are a delivery in cl's
// inflight window, counted in transit when they go to another loop.
func (ob *outbox) addSlices(cl *client, parts [][]byte, windowed bool) {
	if cl.loop == ob.home {
		cl.loop.takeFirst(ob)
		cl.pend = append(cl.pend, parts...)
		if !cl.dirty {
			cl.dirty = true
			ob.local = append(ob.local, cl)
		}
		return
	}
	x := ob.remote[cl.loop]
	if x == nil {
		x = xferPool.Get().(*xfer)
		ob.remote[cl.loop] = x
	}
	x.items = append(x.items, xitem{cl: cl, n: len(parts), transit: windowed})
	if windowed {
		cl.flow.Add(flowTransit)
		if ob.transit == nil {
			ob.transit = make(map[*client]int32)
		}
		ob.transit[cl]++
	}
	x.parts = append(x.parts, parts...)
}

// othersInTransit reports whether deliveries in cl's inflight window that
// other goroutines made are on their way to cl's loop. Whatever this
// outbox gives cl meanwhile, straight into the window or out of the
// session's queue, would pass them: it waits in the queue instead
// (session.mustQueueLocked, pumpLocked). This outbox's own deliveries do
// not hold it back: its bytes for cl go in the order it made them.
// REQUIRES: cl's session.mu held.
func (ob *outbox) othersInTransit(cl *client) bool {
	f := cl.flow.Load()
	if f < flowTransit {
		return false
	}
	return cl.loop == ob.home || f/flowTransit > ob.transit[cl]
}

// awaitTransit has cl's loop let out its session's queue once the
// deliveries in transit have arrived (xfer.run). Off cl's loop they may
// have arrived since othersInTransit looked, without a pump asked for:
// then it asks for one itself.
// REQUIRES: cl's session.mu held.
func (ob *outbox) awaitTransit(cl *client) {
	if old := cl.flow.Or(flowPump); old < flowTransit && cl.loop != ob.home {
		cl.flow.And(^flowPump)
		cl.pumpArrived()
	}
}

// flush commits the store writes collected, then writes everything
// collected: to other loops' clients through their inbox (coalesce.go), to
// home-loop clients directly. The commit goes first so that an
// acknowledgement from a receiver, which can only follow these bytes, is
// committed after the entry it removes. Other loops come before home so
// that a publisher's answer (PUBACK, PINGRESP) is written only once its
// message is with every loop that delivers it: a shutdown or takeover
// that follows the answer finds the message there.
func (ob *outbox) flush() {
	ob.commit()
	ob.sampleAt = 0
	now := monotime()
	for l, x := range ob.remote {
		delete(ob.remote, l)
		l.post(x, now)
	}
	clear(ob.transit)
	for i, cl := range ob.local {
		cl.push(now)
		ob.local[i] = nil
	}
	ob.local = ob.local[:0]
}

// run delivers the bytes on the target loop. Their clients are written
// now, or, with ob (a unit of work under way on the loop), when ob is
// flushed: written in the middle of it, a client would have its reserved
// slots and the acknowledgements encoded into its arena (queueAck) written
// or reset before they were filled.
func (x *xfer) run(now int64, ob *outbox) {
	var dirty []*client
	p := 0
	for _, it := range x.items {
		cl := it.cl
		if it.transit {
			if f := cl.flow.Add(-flowTransit); f < flowTransit && f&flowPump != 0 {
				cl.flow.And(^flowPump)
				cl.pumpArrived()
			}
		}
		if !cl.closed {
			cl.pend = append(cl.pend, x.parts[p:p+it.n]...)
			if !cl.dirty {
				cl.dirty = true
				dirty = append(dirty, cl)
			}
		}
		p += it.n
	}
	x.sampleArrived()
	for _, cl := range dirty {
		if ob != nil {
			ob.local = append(ob.local, cl)
		} else {
			cl.push(now)
		}
	}
	x.release()
}

// merge appends y's bytes to x.
func (x *xfer) merge(y *xfer) {
	x.items = append(x.items, y.items...)
	x.parts = append(x.parts, y.parts...)
	x.mergeSample(y)
}

func (x *xfer) release() {
	clear(x.items)
	clear(x.parts)
	x.items, x.parts = x.items[:0], x.parts[:0]
	x.sampleCl = nil
	xferPool.Put(x)
}

var hashSeed = maphash.MakeSeed()

// route delivers m to every local subscriber whose filter matches its
// topic and, in a cluster, forwards it once to each peer with matching
// subscribers. It returns the number of receivers (a peer counts as one)
// and false when a QoS 1/2 message could not be queued for a peer.
func (s *Server) route(ob *outbox, m *message) (int, bool) {
	return s.routeFrom(ob, m, nil)
}

// routeFrom is route for a message published here (fw nil) or forwarded by
// a peer (fw set): a forwarded message goes to local plain subscriptions
// if fw.plain and to one local member of each shared group in fw.groups,
// and never on to other peers.
func (s *Server) routeFrom(ob *outbox, m *message, fw *forward) (int, bool) {
	ob.matches = ob.matches[:0]
	clustered := s.cl != nil && fw == nil
	if clustered {
		s.cl.origins.stamp(m)
		if m.qos > 0 && m.stamp == 0 {
			m.stamp = s.now() // when it was routed, for its forwards (away.go)
		}
	}
	if clustered && !ob.matched {
		s.cl.matchRoutes(ob, m)
	}
	ob.matched = false
	s.subs.Match(m.topic, func(ss *session, o fanout.Options) {
		switch {
		case fw == nil:
			ob.collect(ss, o, m, nil)
		case fw.plain && slices.Contains(fw.skip, ss.id):
			ob.droppedGiven() // the client's live session is the sender's (away.go)
		case fw.plain:
			ob.collect(ss, o, m, nil)
		}
	}, func(g *trie.Group[*session, fanout.Options]) {
		switch {
		case fw != nil:
			if !fw.wants(g) {
				return
			}
		case clustered:
			if !ob.sharedLocal(g) {
				return // a peer's member takes it
			}
		}
		if ss, o, ok := s.pickShared(g, m, nil); ok {
			ob.collect(ss, o, m, g)
		}
	})
	remote, ok := 0, true
	if clustered {
		ob.skip = s.cl.away.skips(ob.skip[:0], ob.matches, m)
		remote, ok = s.cl.forward(ob, m)
		s.cl.releaseUnused(ob) // before a delivery below can send to a peer (redirect)
	}
	if len(ob.matches) > 1 {
		ob.merge()
	}
	if len(ob.matches) == 0 {
		return remote, ok
	}
	now := s.now()
	m.template(&ob.tmpl, now)
	ob.enc.Reset(&ob.tmpl)
	for i := range ob.matches {
		mt := &ob.matches[i]
		qos, retain := mt.m.Deliver(m.qos, m.retain, false)
		mt.s.deliver(ob, m, qos, retain, mt.m.SubIDs, now, mt.g)
	}
	n := len(ob.matches)
	clear(ob.matches)
	return n + remote, ok
}

// collect records one matching subscription. A no-local subscription by the
// publisher itself does not count [MQTT-3.8.3-3], nor one whose subscriber
// may not read the topic (auth.go).
func (ob *outbox) collect(ss *session, o fanout.Options, m *message, g *trie.Group[*session, fanout.Options]) {
	if o.NoLocal && ss.id == m.from {
		return
	}
	if !ss.mayRead(o, m.topic) {
		return
	}
	var mg fanout.Merged
	mg.Add(o)
	ob.matches = append(ob.matches, match{s: ss, m: mg, g: g})
}

// merge folds several subscriptions of one session into one delivery
// [MQTT-3.3.4-2].
func (ob *outbox) merge() {
	out := ob.matches[:0]
	for _, mt := range ob.matches {
		if i, ok := ob.index[mt.s]; ok {
			out[i].m.QoS = max(out[i].m.QoS, mt.m.QoS)
			out[i].m.RetainAsPublished = out[i].m.RetainAsPublished || mt.m.RetainAsPublished
			for _, id := range mt.m.SubIDs {
				out[i].m.Add(fanout.Options{SubID: id})
			}
			if out[i].g == nil {
				out[i].g = mt.g
			}
			continue
		}
		ob.index[mt.s] = len(out)
		out = append(out, mt)
	}
	clear(ob.matches[len(out):])
	ob.matches = out
	clear(ob.index)
}

// pickShared chooses one member of a shared group other than not,
// preferring members that are connected [MQTT-4.8.2-5].
func (s *Server) pickShared(g *trie.Group[*session, fanout.Options], m *message, not *session) (*session, fanout.Options, bool) {
	n := g.Len()
	if n == 0 {
		return nil, fanout.Options{}, false
	}
	var start int
	switch s.cfg.SharedPolicy {
	case SharedRandom:
		start = rand.IntN(n)
	case SharedHash:
		start = int(maphash.String(hashSeed, m.from) % uint64(n))
	default:
		start = int(g.Next() % uint64(n))
	}
	for i := 0; i < n; i++ {
		ss, o := g.At((start + i) % n)
		if ss != not && ss.online() {
			return ss, o, true
		}
	}
	for i := 0; i < n; i++ {
		if ss, o := g.At((start + i) % n); ss != not {
			return ss, o, true
		}
	}
	return nil, fanout.Options{}, false
}

func (ss *session) online() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.mu.cl != nil
}

// deliver hands m to the session at the given QoS: written now when the
// client is connected and has room, queued when QoS > 0 and it has not,
// dropped (and counted) otherwise.
// A message that came through the shared group share remembers it.
func (ss *session) deliver(ob *outbox, m *message, qos byte, retain bool, subIDs []uint32, now int64,
	share *trie.Group[*session, fanout.Options]) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.mu.ended {
		ss.sendOnLocked(ob, m, qos, retain, subIDs, now, 0)
		return
	}
	if share == nil && ob.src.Seq != 0 && ss.routedBeforeLocked(ob, m, now) {
		ob.droppedGiven() // given on the node it moved from
		return
	}
	if !ss.firstLocked(ob, m, now) {
		return
	}
	cl := ss.mu.cl
	if qos == 0 {
		if cl == nil {
			return
		}
		if cl.slow() {
			ss.srv.stats.droppedSlow.Add(1)
			return
		}
		fr, alias, ok := cl.frame(ob, m, 0, retain, subIDs)
		if ok {
			ob.addParts(cl, fr, nil, alias)
			ob.last = cl
			ss.srv.stats.sentMessage()
		}
		return
	}
	if ss.mustQueueLocked(ob) {
		om := ss.newOutMsgLocked(m, qos, retain, subIDs)
		om.share = share
		ss.enqueueLocked(ob, om)
		return
	}
	fr, alias, ok := cl.frame(ob, m, qos, retain, subIDs)
	if !ok {
		return // too large for this client: discarded as if delivered [MQTT-3.1.2-25]
	}
	om := ss.newOutMsgLocked(m, qos, retain, subIDs)
	om.share = share
	om.pid = ss.allocIDLocked()
	om.idb[0], om.idb[1] = byte(om.pid>>8), byte(om.pid)
	ss.setInflightLocked(om)
	ss.storeEntryLocked(ob, om)
	ob.addParts(cl, fr, om.idb[:], alias)
	ob.last = cl
	ss.srv.stats.sentMessage()
}
