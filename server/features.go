package server

import (
	"encoding/binary"
	"maps"
	"sync"
	"sync/atomic"
)

// What a peer's version of the broker understands beyond the records
// every version reads. During a rolling upgrade nodes of two versions
// share the cluster, and a body an older node cannot decode is dropped
// there: a forward would be lost. So a node says what it reads (recHello)
// when a link comes up, and sends a peer nothing newer until the peer has
// said it reads it.
//
//	hello: version | features uvarint | ask u8
//
// ask: the sender forgot what this node reads (its link came up) and asks
// for a hello back. A peer that sends no hello reads none of the features.
const (
	// featRouted: a forwarded, sent-on or moved message may carry when it
	// was routed (appendMessage), and a forward may name the clients to
	// skip (appendForward); away.go.
	featRouted uint64 = 1 << iota

	ourFeatures = featRouted
)

// peerFeatures is what each peer said it reads, copied on write: read for
// every forwarded message.
type peerFeatures struct {
	mu sync.Mutex
	m  atomic.Pointer[map[string]uint64]
}

func (f *peerFeatures) set(peer string, bits uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := map[string]uint64{}
	if cur := f.m.Load(); cur != nil {
		next = maps.Clone(*cur)
	}
	next[peer] = bits
	f.m.Store(&next)
}

func (f *peerFeatures) has(peer string, bit uint64) bool {
	m := f.m.Load()
	return m != nil && (*m)[peer]&bit != 0
}

func appendHello(dst []byte, features uint64, ask bool) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, features)
	if ask {
		return append(dst, 1)
	}
	return append(dst, 0)
}

func decodeHello(b []byte) (features uint64, ask bool, err error) {
	r := &wireReader{b: b}
	r.version()
	features = r.uvarint("features")
	a := r.byte1("ask")
	if r.err == nil && (a > 1 || len(r.b) != 0) {
		r.fail("hello")
	}
	return features, a == 1, r.err
}

// hello forgets what peer reads and asks it to say again; until it has,
// nothing newer goes to it. Called when the link to it comes up: it may
// have restarted on another version.
func (cl *cluster) hello(peer string) {
	cl.feats.set(peer, 0)
	_ = cl.node.Send(peer, 0, recHello, appendHello(nil, ourFeatures, true), true)
}

// helloFrom takes what peer reads, and answers a hello that asks.
func (cl *cluster) helloFrom(peer string, body []byte) error {
	bits, ask, err := decodeHello(body)
	if err != nil {
		return err
	}
	cl.feats.set(peer, bits)
	if ask {
		_ = cl.node.Send(peer, 0, recHello, appendHello(nil, ourFeatures, false), true)
	}
	return nil
}
