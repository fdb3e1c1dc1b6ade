package server

import (
	"bytes"
	"sync"
	"time"

	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/persist"
)

// With a store, a reliable record for a peer is kept on this node's disk
// until the peer acknowledges it (cluster.send, clusterspool.go), so that
// what was acknowledged to a publisher survives this node's crash. For a
// message forwarded to a peer that is linked, the peer's acknowledgement
// stands in for that write: a peer acknowledges a record only once its
// effects are as durable there as they need to be (written to its store
// when a persistent session took the message; at once when only clean
// sessions did, whose state a crash of that node loses anyway). So the
// acknowledgement to the publisher waits for the peer instead of for this
// node's disk. The record is written here as before, and the publisher's
// acknowledgement waits for that write, when the peer has not answered
// within peerAckWait (a slow link, or a peer whose disk is slow), and at
// once while the links are behind (interlink's Behind), when an answer
// would be slow to come.
//
// A peer whose routes say that no persistent session holds the filters
// the message matched (cluster.announce, the durable flag of each route)
// is not waited for at all: the record stays in memory until the peer
// has it (sendForward), as a clean session's queue on this node would.
//
// What is promised: a PUBACKed (or PUBRECed) QoS 1/2 message reaches
// every persistent session that matched it, on any node, across a crash
// of any node, at least once (QoS 1) or exactly once (QoS 2); a clean
// session gets it unless its own node, or the node it was published on,
// fails before it is delivered. A message for clean sessions on other
// nodes costs no disk write and no wait on either node. (A persistent
// session subscribing on a peer as the message is published, before its
// route's flag has arrived here, is treated as clean for that message.)

// peerAckWait is how long a forwarded record waits for the peer's
// acknowledgement before this node writes it to its own store.
const peerAckWait = 100 * time.Millisecond

// peerWait is a forwarded record whose peer's acknowledgement stands in
// for this node's store (until peerAckWait).
type peerWait struct {
	peer  string
	token uint64
	pos   interlink.Position
	body  []byte
	gate  *ackGate // nil until the unit of work that sent it commits

	settled  bool // the peer acknowledged it
	spooling bool // being written to the store after peerAckWait
}

// peerWaits are the records waiting for their peers, by token.
type peerWaits struct {
	sync.Mutex
	m map[uint64]*peerWait
}

// ackGate holds acknowledgements until left events happened: the unit of
// work's commit and each of its records' peers (or their writes here).
type ackGate struct {
	mu   sync.Mutex
	left int
	err  error
	fire func(error)
}

func (g *ackGate) done(err error) {
	g.mu.Lock()
	if err != nil && g.err == nil {
		g.err = err
	}
	g.left--
	fire := g.left == 0
	err = g.err
	g.mu.Unlock()
	if fire {
		g.fire(err)
	}
}

// standIn queues a forwarded record whose peer's acknowledgement will
// stand in for this node's store, and reports false when the record must
// be written here as before (the peer is not linked). Called by
// cluster.send with the record queued under token.
func (cl *cluster) standIn(ob *outbox, peer string, token uint64, pos interlink.Position, kind byte, body []byte) bool {
	if kind != recForward || !cl.node.Linked(peer) || cl.node.Behind() {
		return false
	}
	w := &peerWait{peer: peer, token: token, pos: pos, body: bytes.Clone(body)}
	cl.waits.Lock()
	if cl.waits.m == nil {
		cl.waits.m = make(map[uint64]*peerWait)
	}
	cl.waits.m[token] = w
	cl.waits.Unlock()
	ob.peerWaits = append(ob.peerWaits, w)
	return true
}

// gate makes the records ob sent this unit of work hold fire, which is
// called once they are acknowledged or written here, and once done has
// been called too (the unit of work's commit). It returns done.
func (cl *cluster) gate(ob *outbox, fire func(error)) (done func(error)) {
	ws := ob.peerWaits
	ob.peerWaits = nil
	g := &ackGate{left: 1 + len(ws), fire: fire}
	settled := 0
	cl.waits.Lock()
	for _, w := range ws {
		if w.settled {
			settled++
			delete(cl.waits.m, w.token)
		} else {
			w.gate = g
		}
	}
	cl.waits.Unlock()
	for range settled {
		g.done(nil)
	}
	if settled < len(ws) {
		time.AfterFunc(peerAckWait, func() { cl.spoolLate(ws) })
	}
	return g.done
}

// settle takes a peer's acknowledgement of tokens and reports those whose
// records are written in the store (to be deleted there).
func (cl *cluster) settle(tokens []uint64) (stored []uint64) {
	var fire []*ackGate
	cl.waits.Lock()
	for _, t := range tokens {
		w := cl.waits.m[t]
		switch {
		case w == nil:
			stored = append(stored, t)
		case w.spooling:
			w.settled = true // spoolLate deletes it once written
		case w.gate == nil:
			w.settled = true // gate counts it
		default:
			delete(cl.waits.m, t)
			fire = append(fire, w.gate)
		}
	}
	cl.waits.Unlock()
	for _, g := range fire {
		g.done(nil)
	}
	return stored
}

// spoolLate writes to the store the records of ws that their peers have
// not acknowledged yet, and counts them done once written.
func (cl *cluster) spoolLate(ws []*peerWait) {
	var b persist.Batch
	var late []*peerWait
	cl.waits.Lock()
	for _, w := range ws {
		if cl.waits.m[w.token] == w && !w.settled {
			w.spooling = true
			late = append(late, w)
			b.CreateMeta(spoolKey(w.peer, w.token), spoolValue(w.pos, recForward, w.body))
		}
	}
	cl.waits.Unlock()
	if len(late) == 0 {
		return
	}
	cl.s.stats.peerAckLate.Add(len(late))
	cl.s.store.commit(&b, func(err error) {
		var del persist.Batch
		cl.waits.Lock()
		for _, w := range late {
			delete(cl.waits.m, w.token)
			if w.settled && err == nil {
				del.DeleteMeta(spoolKey(w.peer, w.token))
			}
		}
		cl.waits.Unlock()
		if del.Len() > 0 {
			cl.s.store.commit(&del, func(error) {}, false)
		}
		for _, w := range late {
			w.gate.done(err)
		}
	}, false)
}
