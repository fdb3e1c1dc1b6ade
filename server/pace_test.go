package server

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
)

// stalledPeer is a cluster member that subscribes to "load/#" and reads
// nothing from its links until block is closed.
type stalledPeer struct {
	node  *interlink.Node
	clean bool // its route says no persistent session holds it
	block chan struct{}
	want  int
	all   chan struct{} // closed when want forwarded messages arrived

	mu  sync.Mutex
	got int
}

func (p *stalledPeer) PeerUp(peer string) {
	_ = p.node.Send(peer, 0, recRouteAdd, appendRouteDelta(nil, 1, routeEntry{"load/#", !p.clean}), true)
}
func (p *stalledPeer) PeerForget(string)        {}
func (p *stalledPeer) Settled(string, []uint64) {}
func (p *stalledPeer) Receive(_ string, _ interlink.Position, recs []interlink.Record, done func(error)) {
	<-p.block
	p.mu.Lock()
	for _, r := range recs {
		if r.Kind == recForward {
			p.got++
			if p.got == p.want {
				close(p.all)
			}
		}
	}
	p.mu.Unlock()
	done(nil)
}

// startStalledPeer joins p to s's cluster as node "p" and waits for its
// route. It returns what lets p read again; the test's end does it too,
// before the node stops.
func startStalledPeer(t *testing.T, s *Server, p *stalledPeer) (release func()) {
	t.Helper()
	startPeerNode(t, s, "p", p, func(n *interlink.Node) { p.node = n })
	var once sync.Once
	release = func() { once.Do(func() { close(p.block) }) }
	t.Cleanup(release)
	waitRoutes(t, s, 1)
	// p's route came on p's lanes; s's own lanes to p may still be
	// dialing, and a record for an unlinked peer goes another way.
	waitFor(t, "s's lanes to p", func() bool { return s.cl.node.Linked("p") })
	return release
}

// startPeerNode starts an interlink node named name, with h as its
// broker, that joins s's cluster; set is given the node before it
// starts (h's callbacks may use it from then on). It stops when the test
// ends.
func startPeerNode(t *testing.T, s *Server, name string, h interlink.Handler, set func(*interlink.Node)) {
	t.Helper()
	ic := interlink.DefaultConfig()
	ic.NodeName, ic.Listen, ic.GossipListen = name, "127.0.0.1:0", "127.0.0.1:0"
	ic.Secret = s.cfg.Cluster.Secret
	ic.Join = []string{"gossip=" + s.cl.node.Members()[0].Gossip}
	node, err := interlink.New(ic, h)
	if err != nil {
		t.Fatal(err)
	}
	set(node)
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Stop)
}

// While a peer reads nothing, a QoS 0 publisher's input is held back
// instead of being read into a full lane and dropped: once the peer reads
// again, every message reaches it.
func TestHeldInputLosesNoQoS0(t *testing.T) {
	const total, burst, size = 5000, 40, 4096 // 20 MB: more than the sockets between the nodes hold
	s := startCluster(t, 1, func(_ int, c *Config) {
		c.Cluster.BatchBytes = 4096 // a lane is behind past 8 KiB and full at 32 KiB
		c.Cluster.BatchDelay = 0
		c.Cluster.Backpressure = time.Minute
	})[0]
	p := &stalledPeer{block: make(chan struct{}), want: total, all: make(chan struct{})}
	release := startStalledPeer(t, s, p)

	go func() {
		deadline := time.Now().Add(30 * time.Second)
		for s.stats.heldBack.Get() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		release()
	}()
	pub := dialRaw(t, s, codec.V311)
	pub.connect("flood", nil)
	var buf []byte
	payload := bytes.Repeat([]byte{'x'}, size)
	for i := 0; i < total; i += burst {
		buf = buf[:0]
		for range burst {
			buf = (&codec.Publish{Topic: []byte("load/1"), Payload: payload}).Append(buf, codec.V311)
		}
		pub.write(buf)
		pub.ping() // answered only once the input was read
	}
	select {
	case <-p.all:
	case <-time.After(30 * time.Second):
		p.mu.Lock()
		defer p.mu.Unlock()
		var m bytes.Buffer
		s.stats.set.WritePrometheus(&m)
		t.Fatalf("the peer got %d of %d messages; held %d\n%s", p.got, total, s.stats.heldBack.Get(), m.String())
	}
	if s.stats.heldBack.Get() == 0 {
		t.Fatal("the publisher's input was never held back")
	}
	var m bytes.Buffer
	s.stats.set.WritePrometheus(&m)
	for _, line := range strings.Split(m.String(), "\n") {
		if strings.HasPrefix(line, "gannet_interlink_dropped_total") && !strings.HasSuffix(line, " 0") {
			t.Fatalf("dropped: %s", line)
		}
	}
}
