package interlink

import (
	"net"
	"slices"
	"sort"
	"sync"
	"time"
)

// streamKey names one sender's lane in one of its runs.
type streamKey struct {
	node  string
	epoch uint64
	lane  uint8
}

// seqRange is the reliable records lo..hi of a stream, both included.
type seqRange struct{ lo, hi uint64 }

// spanState is what became of a span's records.
type spanState uint8

const (
	spanPending spanState = iota // handed to the broker, not yet done
	spanStored                   // done: their effects are safe
	spanFailed                   // the broker could not store them: wanted again
)

// span is records of a stream handed to the broker together (a batch, or
// the part of one that was new), and what became of them.
type span struct {
	seqRange
	state spanState
}

// stream is the receiving state of one streamKey: what was accepted (for
// deduplication of replays) and what is done (for acknowledgement). It
// outlives connections, so that a replay on a new connection is
// recognised.
//
// Everything up to done is stored and acknowledged. The records after it,
// up to last, were accepted, and spans tiles them in order: each record in
// done+1..last is in exactly one span. A replayed record in a pending or
// stored span is dropped (the broker has it); one in a failed span is
// accepted again, since the broker could not store its effects, and so is
// one past last. done only moves over stored spans, so a failed span
// holds the acknowledgements of everything after it, stored or not, until
// the sender's replay has filled it and the broker has stored it.
type stream struct {
	in *inLane

	mu    sync.Mutex
	last  uint64 // last reliable seq accepted
	done  uint64 // last reliable seq of the stored prefix
	spans []span
	// marked is the highest position handed to the broker to store
	// (Position.Seq) since the last one taken back (Node.takeBack).
	marked uint64
	// seen is the highest reliable seq received, taken or not (Heard).
	seen uint64
}

// wantLocked reports whether the reliable record seq is to be handed to
// the broker: it is past what was accepted, or in a failed span. Calls
// for one batch come in increasing seq, and *at remembers where the last
// one was found in spans.
// REQUIRES: st.mu held.
func (st *stream) wantLocked(seq uint64, at *int) bool {
	if seq > st.last {
		return true
	}
	if seq <= st.done {
		return false
	}
	for *at < len(st.spans) && st.spans[*at].hi < seq {
		*at++
	}
	return *at < len(st.spans) && st.spans[*at].state == spanFailed
}

// failedLocked counts the records in failed spans.
// REQUIRES: st.mu held.
func (st *stream) failedLocked() uint64 {
	var n uint64
	for _, sp := range st.spans {
		if sp.state == spanFailed {
			n += sp.hi - sp.lo + 1
		}
	}
	return n
}

// takeLocked records that the ranges kept of a batch (in increasing
// order, each past last or inside failed spans, as wantLocked chose them)
// are handed to the broker, and returns the spans that now stand for
// them, pending, for settleLocked.
// REQUIRES: st.mu held.
func (st *stream) takeLocked(kept []seqRange) []seqRange {
	var taken, refill []seqRange
	var fresh seqRange
	for _, r := range kept {
		if r.lo <= st.last {
			refill = append(refill, seqRange{r.lo, min(r.hi, st.last)})
		}
		if r.hi > st.last {
			fresh = seqRange{max(r.lo, st.last+1), r.hi}
		}
	}
	if len(refill) > 0 {
		// Carve the refilled records out of their failed spans.
		out := make([]span, 0, len(st.spans)+2*len(refill))
		j := 0
		for _, sp := range st.spans {
			lo := sp.lo
			for j < len(refill) && refill[j].lo <= sp.hi {
				p := &refill[j]
				a, b := max(p.lo, lo), min(p.hi, sp.hi)
				if a > lo {
					out = append(out, span{seqRange{lo, a - 1}, sp.state})
				}
				out = append(out, span{seqRange{a, b}, spanPending})
				taken = append(taken, seqRange{a, b})
				lo = b + 1
				if p.hi > sp.hi {
					p.lo = sp.hi + 1 // it goes on in the next span
					break
				}
				j++
			}
			if lo <= sp.hi {
				out = append(out, span{seqRange{lo, sp.hi}, sp.state})
			}
		}
		st.spans = out
	}
	if fresh.hi != 0 {
		st.spans = append(st.spans, span{fresh, spanPending})
		taken = append(taken, fresh)
		st.last = fresh.hi
	}
	return taken
}

// markLocked is how far the stream is accepted, for the broker to store
// with a batch's effects (Position.Seq): everything before the first
// failed span, all that was accepted when there is none. A failed span's
// records must be accepted again after a restart, so a mark never
// reaches over one that is known. 0 means nothing to store.
// REQUIRES: st.mu held.
func (st *stream) markLocked() uint64 {
	for _, sp := range st.spans {
		if sp.state == spanFailed {
			return sp.lo - 1
		}
	}
	return st.last
}

// settleLocked records the broker's outcome for the spans taken for one
// batch, and moves done over the stored prefix.
// REQUIRES: st.mu held.
func (st *stream) settleLocked(taken []seqRange, stored bool) {
	state := spanFailed
	if stored {
		state = spanStored
	}
	for _, r := range taken {
		i := sort.Search(len(st.spans), func(i int) bool { return st.spans[i].hi >= r.hi })
		if i < len(st.spans) && st.spans[i].hi == r.hi && st.spans[i].state == spanPending {
			st.spans[i].state = state
		}
	}
	k := 0
	for k < len(st.spans) && st.spans[k].state == spanStored {
		st.done = st.spans[k].hi
		k++
	}
	st.spans = slices.Delete(st.spans, 0, k)
}

// restoreLocked takes everything up to seq as accepted and stored.
// REQUIRES: st.mu held.
func (st *stream) restoreLocked(seq uint64) {
	st.last = max(st.last, seq)
	st.marked = max(st.marked, seq)
	if seq <= st.done {
		return
	}
	st.done = seq
	k := 0
	for k < len(st.spans) && st.spans[k].hi <= seq {
		k++
	}
	st.spans = slices.Delete(st.spans, 0, k)
	if len(st.spans) > 0 && st.spans[0].lo <= seq {
		st.spans[0].lo = seq + 1
	}
}

// inLane is the receiving side of one sender's lane, across its runs and
// connections: the channel that wakes its acker, the connections it
// arrives on, and the asking for failed spans again.
type inLane struct {
	n      *Node
	node   string
	lane   uint8
	notify chan struct{}
	// order is held from accepting a batch until it is handed to the
	// broker: when a connection of the lane is replaced while the old one
	// still delivers (a link cut and healed), batches accepted in order
	// are handed over in that order.
	order sync.Mutex

	mu struct {
		sync.Mutex
		conns    map[net.Conn]struct{} // TCP connections, handshake done
		tries    int                   // cuts since a batch was last stored
		cut      *time.Timer           // a cut waiting for its time
		failed   int                   // batches not stored since the last log line
		loggedAt time.Time
	}
}

func newInLane(n *Node, node string, lane uint8) *inLane {
	il := &inLane{n: n, node: node, lane: lane, notify: make(chan struct{}, 1)}
	il.mu.conns = make(map[net.Conn]struct{})
	return il
}

func (il *inLane) wake() {
	select {
	case il.notify <- struct{}{}:
	default:
	}
}

func (il *inLane) add(c net.Conn) {
	il.mu.Lock()
	il.mu.conns[c] = struct{}{}
	il.mu.Unlock()
}

func (il *inLane) remove(c net.Conn) {
	il.mu.Lock()
	delete(il.mu.conns, c)
	il.mu.Unlock()
}

// Retrying a failed span asks the sender for everything it has not had
// acknowledged, and the broker probably fails it again while its disk
// stays full: the first retry comes at once, the next ones after a delay
// that doubles up to a limit.
const (
	retryFirst = 50 * time.Millisecond
	retryMax   = 2 * time.Second
)

// retry has the sender send again what it has not had acknowledged, failed
// spans included: it closes the lane's connections (the sender replays on
// its next one, doc.go). It reports whether a log line is due, with the
// failures it covers.
func (il *inLane) retry() (logNow bool, failed int) {
	il.mu.Lock()
	defer il.mu.Unlock()
	il.mu.failed++
	if time.Since(il.mu.loggedAt) >= 10*time.Second {
		logNow, failed = true, il.mu.failed
		il.mu.failed, il.mu.loggedAt = 0, time.Now()
	}
	if il.mu.cut != nil {
		return // the cut to come asks for this span too
	}
	var delay time.Duration
	if il.mu.tries > 0 {
		delay = min(retryFirst<<(il.mu.tries-1), retryMax)
	}
	il.mu.tries = min(il.mu.tries+1, 16)
	il.mu.cut = time.AfterFunc(delay, il.cutNow)
	return logNow, failed
}

// cutNow takes back the positions stored past failed spans, then closes
// every connection of the lane. Each that is open now closes: whatever
// it dropped as a duplicate while a span was pending is sent again on the
// next one, and the span is failed by then.
func (il *inLane) cutNow() {
	il.mu.Lock()
	il.mu.cut = nil
	if il.n.stopping() {
		il.mu.Unlock()
		return // Stop closes the connections; the broker is going too
	}
	conns := make([]net.Conn, 0, len(il.mu.conns))
	for c := range il.mu.conns {
		conns = append(conns, c)
	}
	il.mu.Unlock()
	il.n.takeBack(il)
	for _, c := range conns {
		c.Close()
	}
}

// replayHeld has the sender send again the records dropped behind a
// failed span (accept1), when no cut waits already: the sender writes
// them only on a new connection.
func (il *inLane) replayHeld() {
	il.mu.Lock()
	defer il.mu.Unlock()
	if il.mu.cut == nil {
		il.mu.cut = time.AfterFunc(min(retryFirst<<max(il.mu.tries-1, 0), retryMax), il.cutNow)
	}
}

// stored resets the delay of retries: the broker stores again. A retry
// waiting out its delay goes at once: the failed spans can be stored now,
// and the positions stored past them are taken back sooner.
func (il *inLane) stored() {
	il.mu.Lock()
	il.mu.tries = 0
	if il.mu.cut != nil && il.mu.cut.Stop() {
		il.mu.cut = time.AfterFunc(0, il.cutNow)
	}
	il.mu.Unlock()
}

// stop drops a cut still waiting (Node.Stop closes the connections).
func (il *inLane) stop() {
	il.mu.Lock()
	if il.mu.cut != nil {
		il.mu.cut.Stop()
		il.mu.cut = nil
	}
	il.mu.Unlock()
}
