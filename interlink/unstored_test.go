package interlink

import (
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// heldBatch is one Receive call whose outcome the test decides.
type heldBatch struct {
	vals []uint64 // the records' numbers (body())
	pos  Position
	done func(error)
}

// storeRecv is a Handler standing in for a broker whose store writes the
// test makes succeed or fail: every batch waits until the test settles it,
// in the order the batches came, as a store's commits complete.
type storeRecv struct {
	mu      sync.Mutex
	batches []heldBatch
	times   map[uint64]int // how often each record was handed over
	up      chan string
	added   chan struct{}
}

func newStoreRecv() *storeRecv {
	return &storeRecv{times: make(map[uint64]int), up: make(chan string, 64), added: make(chan struct{}, 1)}
}

func (r *storeRecv) PeerUp(peer string)                   { r.up <- peer }
func (r *storeRecv) PeerForget(peer string)               {}
func (r *storeRecv) Settled(peer string, tokens []uint64) {}
func (r *storeRecv) Receive(peer string, pos Position, recs []Record, done func(error)) {
	b := heldBatch{pos: pos, done: done}
	for _, rc := range recs {
		v, _ := binary.Uvarint(rc.Body)
		b.vals = append(b.vals, v)
	}
	r.mu.Lock()
	r.batches = append(r.batches, b)
	for _, v := range b.vals {
		r.times[v]++
	}
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
}

// handed reports how often record v was handed over.
func (r *storeRecv) handed(v uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.times[v]
}

// waitHanded waits until every record in [from, to) was handed over at
// least n times.
func (r *storeRecv) waitHanded(t *testing.T, from, to uint64, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := true
		for v := from; v < to && ok; v++ {
			ok = r.times[v] >= n
		}
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.added:
		case <-deadline:
			t.Fatalf("records %d..%d not all handed over %d times in 10s", from, to-1, n)
		}
	}
}

// settle completes the batches not settled yet, in order: those that hold
// a record in fail with an error, the others with success. It returns
// the settled batches.
func (r *storeRecv) settle(fail func(v uint64) bool, settled *int) []heldBatch {
	r.mu.Lock()
	bs := r.batches[*settled:]
	*settled = len(r.batches)
	r.mu.Unlock()
	for _, b := range bs {
		var err error
		for _, v := range b.vals {
			if fail(v) {
				err = errTestDiskFull
			}
		}
		b.done(err)
	}
	return bs
}

var errTestDiskFull = errors.New("test: disk full")

// startStorePair starts node a and node b, one lane each, b's broker a
// storeRecv, and waits until a's lane to b is up.
func startStorePair(t *testing.T) (a, b *Node, rb *storeRecv) {
	t.Helper()
	ca, cb := testConfig("a"), testConfig("b")
	ca.Lanes, cb.Lanes = 1, 1
	ra := newRecorder()
	rb = newStoreRecv()
	a = startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b = startNode(t, cb, rb)
	waitUp(t, ra, "b")
	select {
	case <-rb.up:
	case <-time.After(10 * time.Second):
		t.Fatal("no link from b to a")
	}
	waitFor(t, func() bool { return a.Members()[1].LanesUp == 1 })
	return a, b, rb
}

// A batch whose effects could not be stored is not acknowledged, nor is
// anything after it, however well the later batches were stored: the
// sender keeps its records and sends them again until they are stored,
// and the records after it that were stored are not handed over twice.
func TestUnstoredBatchIsSentAgain(t *testing.T) {
	a, b, rb := startStorePair(t)

	const g = 50 // records per group
	send := func(group int) {
		t.Helper()
		for i := group * g; i < (group+1)*g; i++ {
			if err := a.Send("b", 0, 3, body(i), true); err != nil {
				t.Fatal(err)
			}
		}
		// A group is handed over before the next is sent, so no batch
		// holds records of two groups.
		rb.waitHanded(t, uint64(group*g), uint64((group+1)*g), 1)
	}
	queued := func() int { return a.Members()[1].Queued }
	none := func(uint64) bool { return false }
	settled := 0

	// Group 0 is stored and acknowledged.
	send(0)
	rb.settle(none, &settled)
	waitFor(t, func() bool { return queued() == 0 })

	// Group 1's batches fail to be stored, group 2's (received after
	// them) are stored.
	send(1)
	send(2)
	inGroup1 := func(v uint64) bool { return v >= g && v < 2*g }
	rb.settle(inGroup1, &settled)

	// b must ask for group 1 again, and acknowledge nothing past it
	// meanwhile: a still holds groups 1 and 2.
	waitFor(t, func() bool { return queued() != 2*g || redelivered(rb, g, 2*g, 2) })
	if q := queued(); q != 2*g {
		t.Fatalf("a holds %d records after b failed to store group 1, want %d: b acknowledged records it never stored", q, 2*g)
	}
	rb.waitHanded(t, g, 2*g, 2)
	// Group 2's batches carried a position past group 1 for b to store;
	// before asking for group 1 again b took it back to group 0's end.
	if tb := rb.takenBack(); !slices.Equal(tb, []uint64{g}) {
		t.Fatalf("positions taken back %v, want [%d]", tb, g)
	}

	// The store fails the second attempt too; the third is stored.
	rb.settle(inGroup1, &settled)
	rb.waitHanded(t, g, 2*g, 3)
	if q := queued(); q != 2*g {
		t.Fatalf("a holds %d records after b failed to store group 1 twice, want %d", q, 2*g)
	}
	if tb := rb.takenBack(); !slices.Equal(tb, []uint64{g, g}) {
		t.Fatalf("positions taken back %v, want [%d %d]", tb, g, g)
	}
	refills := rb.settle(none, &settled)
	for _, bt := range refills {
		for _, v := range bt.vals {
			if !inGroup1(v) {
				t.Fatalf("record %d handed over again with group 1: it was stored", v)
			}
		}
		// What b may store as accepted with this batch reaches past
		// group 2, which was stored: a restart must not take it again.
		if len(bt.vals) > 0 && bt.pos.Seq != 3*g {
			t.Fatalf("the batch that stores group 1 again says %d records accepted, want %d", bt.pos.Seq, 3*g)
		}
	}
	waitFor(t, func() bool { return queued() == 0 })

	// The stream goes on.
	send(3)
	rb.settle(none, &settled)
	waitFor(t, func() bool { return queued() == 0 })
	for v := range uint64(4 * g) {
		want := 1
		if inGroup1(v) {
			want = 3
		}
		if got := rb.handed(v); got != want {
			t.Fatalf("record %d handed over %d times, want %d", v, got, want)
		}
	}
	if d := b.statsPeer("a").duplicates.Get(); d < g {
		t.Fatalf("b dropped %d replayed records, want at least group 2's %d", d, g)
	}
}

// takenBack lists the positions handed over without records (stream
// positions taken back).
func (r *storeRecv) takenBack() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []uint64
	for _, b := range r.batches {
		if len(b.vals) == 0 {
			out = append(out, b.pos.Seq)
		}
	}
	return out
}

// redelivered reports whether every record in [from, to) was handed over
// at least n times.
func redelivered(r *storeRecv, from, to uint64, n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for v := from; v < to; v++ {
		if r.times[v] < n {
			return false
		}
	}
	return true
}

// Records that arrive while a failed batch waits to be sent again are
// not handed over before it: they come again after it, so that what the
// broker stores of a lane is in the order it was sent.
func TestRecordsWaitForAFailedBatch(t *testing.T) {
	a, _, rb := startStorePair(t)

	const g = 50
	sendGroup := func(group int) {
		t.Helper()
		for i := group * g; i < (group+1)*g; i++ {
			if err := a.Send("b", 0, 3, body(i), true); err != nil {
				t.Fatal(err)
			}
		}
	}
	inGroup1 := func(v uint64) bool { return v >= g && v < 2*g }
	none := func(uint64) bool { return false }
	settled := 0
	sendGroup(0)
	rb.waitHanded(t, 0, g, 1)
	rb.settle(none, &settled)
	// Group 1 fails twice: the second time b waits before asking for it
	// again, and group 2 is sent meanwhile.
	sendGroup(1)
	rb.waitHanded(t, g, 2*g, 1)
	rb.settle(inGroup1, &settled)
	rb.waitHanded(t, g, 2*g, 2)
	rb.settle(inGroup1, &settled)
	sendGroup(2)
	rb.waitHanded(t, g, 2*g, 3)
	rb.waitHanded(t, 2*g, 3*g, 1)
	rb.settle(none, &settled)
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 })

	// Where each record was first handed over, and group 1 the third
	// time (the attempt that was stored).
	rb.mu.Lock()
	defer rb.mu.Unlock()
	first := map[uint64]int{}
	seen := map[uint64]int{}
	stored1 := -1
	for i, bt := range rb.batches {
		for _, v := range bt.vals {
			if _, ok := first[v]; !ok {
				first[v] = i
			}
			if seen[v]++; inGroup1(v) && seen[v] == 3 && stored1 < i {
				stored1 = i
			}
		}
	}
	for v := uint64(2 * g); v < 3*g; v++ {
		if first[v] < stored1 {
			t.Fatalf("record %d handed over in batch %d, before group 1 was stored in batch %d", v, first[v], stored1)
		}
		if rb.times[v] != 1 {
			t.Fatalf("record %d handed over %d times", v, rb.times[v])
		}
	}
}
