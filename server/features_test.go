package server

import (
	"sync"
	"testing"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
)

// oldPeer is a node of a version that reads no features: it says nothing
// of them, and keeps the forwards it gets.
type oldPeer struct {
	node *interlink.Node
	mu   sync.Mutex
	got  [][]byte
}

func (p *oldPeer) PeerUp(peer string) {
	_ = p.node.Send(peer, 0, recRouteAdd, appendRouteDelta(nil, 1, routeEntry{"f/#", true}), true)
}
func (p *oldPeer) PeerForget(string)        {}
func (p *oldPeer) Settled(string, []uint64) {}
func (p *oldPeer) Receive(_ string, _ interlink.Position, recs []interlink.Record, done func(error)) {
	p.mu.Lock()
	for _, r := range recs {
		if r.Kind == recForward {
			p.got = append(p.got, append([]byte(nil), r.Body...))
		}
	}
	p.mu.Unlock()
	done(nil)
}

// Nodes tell each other what they read when their links come up, and a
// node sends a peer that said nothing (an older version, during a rolling
// upgrade) only what that version decodes: no routing time in a forward.
func TestPeersSayWhatTheyRead(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	waitFor(t, "each node to know what the other reads", func() bool {
		return n1.cl.feats.has("n2", featRouted) && n2.cl.feats.has("n1", featRouted)
	})

	p := &oldPeer{}
	startPeerNode(t, n1, "old", p, func(n *interlink.Node) { p.node = n })
	waitRoutes(t, n1, 1)
	waitFor(t, "n1's lanes to the old peer", func() bool { return n1.cl.node.Linked("old") })
	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("f/1", "m", 1, false)
	waitFor(t, "the forward to reach the old peer", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.got) == 1
	})
	if n1.cl.feats.has("old", featRouted) {
		t.Fatal("n1 takes the old peer to read routing times")
	}
	var f forward
	var m message
	if err := decodeForward(p.got[0], 0, &f, &m); err != nil || string(m.payload) != "m" || m.stamp != 0 {
		t.Fatalf("forward to the old peer: payload %q, stamp %d, %v", m.payload, m.stamp, err)
	}
	if bits := p.got[0][3]; bits&32 != 0 { // version, flags, no groups, then the message's bits
		t.Fatalf("message flags %#x carry a routing time", bits)
	}
}
