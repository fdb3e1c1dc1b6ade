package interlink

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// recorder is a Handler that keeps what it receives.
type recorder struct {
	mu    sync.Mutex
	got   map[string][]Record // by peer
	up    chan string
	added chan struct{}
	hold  bool // keep done callbacks instead of calling them
	dones []func(error)
	// block, when set, stalls Receive until it is closed: the node stops
	// reading its links.
	block chan struct{}
	// forgot, when set, receives the peers PeerForget names.
	forgot chan string
}

func newRecorder() *recorder {
	return &recorder{got: make(map[string][]Record), up: make(chan string, 64), added: make(chan struct{}, 1)}
}

func (r *recorder) PeerUp(peer string) { r.up <- peer }
func (r *recorder) PeerForget(peer string) {
	if r.forgot != nil {
		r.forgot <- peer
	}
}
func (r *recorder) Settled(peer string, tokens []uint64) {}
func (r *recorder) Receive(peer string, _ Position, recs []Record, done func(error)) {
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	for _, rc := range recs {
		rc.Body = bytes.Clone(rc.Body)
		r.got[peer] = append(r.got[peer], rc)
	}
	hold := r.hold
	if hold {
		r.dones = append(r.dones, done)
	}
	r.mu.Unlock()
	if !hold {
		done(nil)
	}
	select {
	case r.added <- struct{}{}:
	default:
	}
}

func (r *recorder) count(peer string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[peer])
}

// waitCount waits until peer's records reach n.
func (r *recorder) waitCount(t *testing.T, peer string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for r.count(peer) < n {
		select {
		case <-r.added:
		case <-deadline:
			t.Fatalf("got %d records from %s, want %d", r.count(peer), peer, n)
		}
	}
}

const testSecret = "interlink test secret"

func testConfig(name string) Config {
	c := DefaultConfig()
	c.NodeName = name
	c.Listen = "127.0.0.1:0"
	c.GossipListen = "127.0.0.1:0"
	c.Secret = testSecret
	c.FailureTimeout = 500 * time.Millisecond
	c.Logger = slog.New(slog.DiscardHandler)
	c.Metrics = metrics.NewSet()
	return c
}

func startNode(t *testing.T, c Config, h Handler) *Node {
	t.Helper()
	n, err := New(c, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	return n
}

// pair starts two nodes, b joining a, and waits for a's control lane to b.
func pair(t *testing.T, ca, cb Config) (*Node, *recorder, *Node, *recorder) {
	t.Helper()
	ra, rb := newRecorder(), newRecorder()
	a := startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	waitUp(t, ra, "b")
	waitUp(t, rb, "a")
	waitFor(t, func() bool { return a.Members()[1].LanesUp == ca.Lanes && b.Members()[1].LanesUp == cb.Lanes })
	return a, ra, b, rb
}

func waitUp(t *testing.T, r *recorder, peer string) {
	t.Helper()
	select {
	case p := <-r.up:
		if p != peer {
			t.Fatalf("PeerUp(%q), want %q", p, peer)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no link to %s", peer)
	}
}

func body(i int) []byte {
	b := binary.AppendUvarint(nil, uint64(i))
	return append(b, strings.Repeat(`{"temp":21.5,"unit":"C"}`, 4)...)
}

func TestSendReliableAndUnreliable(t *testing.T) {
	for _, mode := range []string{"sealed", "insecure"} {
		for _, comp := range []Compression{CompressNone, CompressS2, CompressZstd} {
			t.Run(mode+"/"+comp.String(), func(t *testing.T) { testSend(t, comp, mode == "insecure") })
		}
	}
}

func testSend(t *testing.T, comp Compression, insecure bool) {
	ca, cb := testConfig("a"), testConfig("b")
	ca.Compression, cb.Compression = comp, comp
	if insecure {
		ca.Secret, ca.Insecure, cb.Secret, cb.Insecure = "", true, "", true
	}
	a, _, _, rb := pair(t, ca, cb)
	const n = 2000
	for i := range n {
		if err := a.Send("b", i%ca.Lanes, 9, body(i), i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	rb.waitCount(t, "a", n)
	seen := make(map[uint64]bool)
	rb.mu.Lock()
	for _, r := range rb.got["a"] {
		v, _ := binary.Uvarint(r.Body)
		if r.Kind != 9 || seen[v] || r.Reliable != (v%2 == 0) {
			t.Fatalf("record %d: kind %d reliable %v, seen before %v", v, r.Kind, r.Reliable, seen[v])
		}
		seen[v] = true
	}
	rb.mu.Unlock()
	// Every reliable record is acknowledged and leaves the queue.
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 })
	if comp != CompressNone {
		ps := a.stats.peer("b")
		if w, r := ps.wireSent.Get(), ps.rawSent.Get(); w >= r {
			t.Fatalf("wire bytes %d not below raw bytes %d with %s", w, r, comp)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReplayAfterLinkLossDeliversOnce(t *testing.T) {
	ca, cb := testConfig("a"), testConfig("b")
	ca.Lanes, cb.Lanes = 1, 1
	a, _, b, rb := pair(t, ca, cb)
	rb.mu.Lock()
	rb.hold = true // b never reports done: nothing is acknowledged
	rb.mu.Unlock()
	const n = 500
	for i := range n {
		if err := a.Send("b", 0, 3, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	rb.waitCount(t, "a", n)
	if q := a.Members()[1].Queued; q != n {
		t.Fatalf("queued %d before acknowledgement, want %d", q, n)
	}
	// Cut the link: a reconnects and replays all n; b drops them as
	// duplicates.
	a.mu.Lock()
	conn := a.peers["b"].lanes[0].mu.conn
	a.mu.Unlock()
	conn.Close()
	ps := b.statsPeer("a")
	waitFor(t, func() bool { return ps.duplicates.Get() == n })
	if got := rb.count("a"); got != n {
		t.Fatalf("b received %d records after the replay, want %d", got, n)
	}
	rb.mu.Lock()
	dones := rb.dones
	rb.hold = false
	rb.mu.Unlock()
	for _, d := range dones {
		d(nil)
	}
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 })
}

func (n *Node) statsPeer(name string) *peerStats { return n.stats.peer(name) }

func TestQueueBound(t *testing.T) {
	c := testConfig("a")
	c.QueueLimit = 10
	c.Lanes = 1
	a := startNode(t, c, newRecorder())
	a.memberUp("ghost", "127.0.0.1:1") // nothing listens there
	for i := range 10 {
		if err := a.Send("ghost", 0, 1, body(i), true); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if err := a.Send("ghost", 0, 1, body(10), true); err != ErrQueueFull {
		t.Fatalf("11th reliable record: %v, want ErrQueueFull", err)
	}
	if err := a.Send("ghost", 0, 1, body(11), false); err != ErrNotLinked {
		t.Fatalf("unreliable record to an unlinked peer: %v, want ErrNotLinked", err)
	}
	if err := a.Send("nobody", 0, 1, nil, true); err != ErrUnknownPeer {
		t.Fatalf("record to an unknown peer: %v", err)
	}
}

func TestBadFrameClosesLink(t *testing.T) {
	a := startNode(t, testConfig("a"), newRecorder())
	conn, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT not an interlink peer\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 64)); err == nil {
		// A REJECT may come first; the close follows.
		_, err = conn.Read(make([]byte, 64))
		if err == nil {
			t.Fatal("link stayed open after garbage")
		}
	}
	waitFor(t, func() bool { return a.stats.handshakeFailures.Get() >= 1 })
}

// A receiver that finished records while the link was down acknowledges
// them as soon as the lane reconnects, possibly before the sender has
// written them again; the sender must carry on after them, numbering what
// follows correctly.
func TestAckOnReconnectBeforeReplay(t *testing.T) {
	ca, cb := testConfig("a"), testConfig("b")
	ca.Lanes, cb.Lanes = 1, 1
	a, _, b, rb := pair(t, ca, cb)
	rb.mu.Lock()
	rb.hold = true
	rb.mu.Unlock()
	const n = 300
	for i := range n {
		if err := a.Send("b", 0, 3, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	rb.waitCount(t, "a", n)
	a.mu.Lock()
	conn := a.peers["b"].lanes[0].mu.conn
	a.mu.Unlock()
	conn.Close()
	rb.mu.Lock()
	dones := rb.dones
	rb.dones, rb.hold = nil, false
	rb.mu.Unlock()
	for _, d := range dones {
		d(nil) // done while the link is down: acknowledged on reconnect
	}
	for i := n; i < 2*n; i++ {
		if err := a.Send("b", 0, 3, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	rb.waitCount(t, "a", 2*n)
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 })
	rb.mu.Lock()
	defer rb.mu.Unlock()
	for i, r := range rb.got["a"] {
		if v, _ := binary.Uvarint(r.Body); v != uint64(i) {
			t.Fatalf("record %d is %d", i, v)
		}
	}
	if got := len(rb.got["a"]); got != 2*n {
		t.Fatalf("%d records, want %d", got, 2*n)
	}
	_ = b
}

// A reliable record arrives with its sequence number in the sender's
// stream of its lane, and SentTo tells the sender how far each lane's
// stream has got: the records it names have numbers at or below it, any
// sent after have higher ones.
func TestRecordSeqAndSentTo(t *testing.T) {
	ca, cb := testConfig("a"), testConfig("b")
	a, _, _, rb := pair(t, ca, cb)
	const lane = 1
	for i := range 3 {
		if err := a.Send("b", lane, 9, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Send("b", lane, 9, body(3), false); err != nil {
		t.Fatal(err)
	}
	epoch, seqs := a.SentTo("b")
	if len(seqs) != ca.Lanes || seqs[lane] != 3 || seqs[0] != 0 {
		t.Fatalf("SentTo: %v, want 3 on lane %d and 0 on lane 0 of %d", seqs, lane, ca.Lanes)
	}
	if err := a.Send("b", lane, 9, body(4), true); err != nil {
		t.Fatal(err)
	}
	rb.waitCount(t, "a", 5)
	rb.mu.Lock()
	defer rb.mu.Unlock()
	want := map[uint64]uint64{0: 1, 1: 2, 2: 3, 3: 0, 4: 4} // body -> Seq
	for _, r := range rb.got["a"] {
		v, _ := binary.Uvarint(r.Body)
		if r.Seq != want[v] {
			t.Fatalf("record %d: Seq %d, want %d", v, r.Seq, want[v])
		}
	}
	if e2, _ := a.SentTo("b"); e2 != epoch {
		t.Fatalf("epoch changed from %d to %d", epoch, e2)
	}
	if _, none := a.SentTo("nobody"); none != nil {
		t.Fatalf("SentTo an unknown peer: %v, want nil", none)
	}
}

// Heard lists a sender's stream while records received from it are not
// yet stored, with the last one received, and drops it once they are.
func TestHeardUntilStored(t *testing.T) {
	ca, cb := testConfig("a"), testConfig("b")
	a, _, b, rb := pair(t, ca, cb)
	rb.mu.Lock()
	rb.hold = true
	rb.mu.Unlock()
	for i := range 3 {
		if err := a.Send("b", 1, 9, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	rb.waitCount(t, "a", 3)
	epoch, _ := a.SentTo("b")
	hs := b.Heard(nil)
	if len(hs) != 1 || hs[0].Peer != "a" || hs[0].Epoch != epoch || hs[0].Lane != 1 || hs[0].Seq != 3 {
		t.Fatalf("Heard: %+v, want a's lane 1 up to 3", hs)
	}
	rb.mu.Lock()
	dones := rb.dones
	rb.dones, rb.hold = nil, false
	rb.mu.Unlock()
	for _, d := range dones {
		d(nil)
	}
	waitFor(t, func() bool { return len(b.Heard(nil)) == 0 })
}
