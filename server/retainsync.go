package server

import (
	"bytes"
	"encoding/binary"
	"strings"
	"sync"
)

// Retained messages converge between nodes whatever the control lane
// drops. A retained message set or cleared on one node goes to every peer
// as one unreliable record (replicateRetained), and the newest stamp wins
// where versions meet (retainStore.apply), so any two nodes that have
// exchanged every version agree. When a record is lost, a digest finds it:
//
//   - every other route digest (retainDigestEvery), a node hashes each
//     retained message and clearing it holds (topic and stamp; $SYS/ topics,
//     each node's own, left out) into one of retainBuckets buckets by
//     topic, XORs the hashes of each bucket, and sends the bucket digests
//     to every linked peer (recRetainDigest);
//   - a node that gets a peer's digests compares them with its own: a
//     bucket that differs, in two digests running from the peer with
//     neither side's bucket changing in between, holds a version one side
//     lacks, so this node sends the peer its messages and clearings of
//     that bucket. The peer does the same on its side with this node's
//     digests, and the newest stamps win on both.
//
// Waiting for two unchanged rounds keeps versions still on their way from
// being sent twice; a bucket that changes all the time converges in the
// first pause.

// retainBuckets is the number of buckets a retained digest has: a bucket
// that differs costs sending 1/retainBuckets of the retained messages.
const retainBuckets = 256

// retainDigestEvery is how many route digests go by between two retained
// digests: hashing every retained message costs more.
const retainDigestEvery = 2

type retainDigest [retainBuckets]uint64

// retainSync is a node's state of the retained digests.
type retainSync struct {
	mu    sync.Mutex
	ticks int
	mine  retainDigest // this node's, as of the last digest sent
	peers map[string]*peerRetain
}

// peerRetain is what a peer's last digest said.
type peerRetain struct {
	last retainDigest
	// mine is this node's digest when last arrived, by which a bucket
	// that did not change on this side is told.
	mine retainDigest
	seen bool // last holds a digest
}

// retainBucket is the bucket of a topic and its share of the bucket's
// digest with stamp.
func retainBucket(topic []byte, stamp int64) (int, uint64) {
	h := routeHash(string(topic))
	v := h ^ uint64(stamp)*0x9e3779b97f4a7c15
	v ^= v >> 29
	v *= 0xbf58476d1ce4e5b9
	v ^= v >> 32
	return int(h % retainBuckets), v
}

// digestRetained computes this node's retained digest now.
func (cl *cluster) digestRetained() retainDigest {
	var d retainDigest
	msgs, tombs := cl.s.retained.snapshot()
	for _, m := range msgs {
		if !bytes.HasPrefix(m.topic, []byte("$SYS/")) {
			b, v := retainBucket(m.topic, m.stamp)
			d[b] ^= v
		}
	}
	for t, stamp := range tombs {
		if !strings.HasPrefix(t, "$SYS/") {
			b, v := retainBucket([]byte(t), stamp)
			d[b] ^= v
		}
	}
	return d
}

// sendRetainDigests sends every linked peer this node's retained digest,
// every retainDigestEvery calls (or at once when force is set).
func (cl *cluster) sendRetainDigests(force bool) {
	rs := &cl.retainSync
	rs.mu.Lock()
	rs.ticks++
	if !force && rs.ticks%retainDigestEvery != 0 {
		rs.mu.Unlock()
		return
	}
	rs.mu.Unlock()
	d := cl.digestRetained()
	rs.mu.Lock()
	rs.mine = d
	rs.mu.Unlock()
	b := appendRetainDigest(nil, &d)
	for _, p := range cl.node.Peers() {
		if cl.node.Linked(p) {
			cl.control(p, recRetainDigest, b)
		}
	}
}

// retainDigestFrom compares a peer's retained digest with this node's and
// sends the peer the buckets it lacks.
func (cl *cluster) retainDigestFrom(peer string, body []byte) error {
	var theirs retainDigest
	if err := decodeRetainDigest(body, &theirs); err != nil {
		return err
	}
	rs := &cl.retainSync
	rs.mu.Lock()
	if rs.peers == nil {
		rs.peers = make(map[string]*peerRetain)
	}
	pr := rs.peers[peer]
	if pr == nil {
		pr = &peerRetain{}
		rs.peers[peer] = pr
	}
	var send []int
	for i := range theirs {
		if theirs[i] != rs.mine[i] && pr.seen && theirs[i] == pr.last[i] && rs.mine[i] == pr.mine[i] {
			send = append(send, i)
		}
	}
	pr.last, pr.mine, pr.seen = theirs, rs.mine, true
	rs.mu.Unlock()
	if len(send) > 0 {
		cl.sendRetainBuckets(peer, send)
	}
	return nil
}

// sendRetainBuckets sends peer this node's retained messages and
// clearings of the given buckets.
func (cl *cluster) sendRetainBuckets(peer string, buckets []int) {
	want := make(map[int]bool, len(buckets))
	for _, b := range buckets {
		want[b] = true
	}
	cl.s.stats.retainResyncs.Add(len(buckets))
	cl.sendRetained(peer, func(topic []byte, stamp int64) bool {
		k, _ := retainBucket(topic, stamp)
		return want[k]
	})
}

// sendRetained sends peer this node's retained messages and clearings,
// those want takes (nil: all), but for $SYS/ topics, each node's own.
func (cl *cluster) sendRetained(peer string, want func(topic []byte, stamp int64) bool) {
	msgs, tombs := cl.s.retained.snapshot()
	now := cl.s.now()
	var b []byte
	send := func(m *message) {
		if !bytes.HasPrefix(m.topic, []byte("$SYS/")) && (want == nil || want(m.topic, m.stamp)) {
			b = appendRetained(b[:0], m, now)
			cl.control(peer, recRetained, b)
		}
	}
	for _, m := range msgs {
		send(m)
	}
	for t, stamp := range tombs {
		send(&message{topic: []byte(t), stamp: stamp, retain: true})
	}
}

// forgetRetainPeer drops what a peer gone for good last said.
func (cl *cluster) forgetRetainPeer(peer string) {
	cl.retainSync.mu.Lock()
	delete(cl.retainSync.peers, peer)
	cl.retainSync.mu.Unlock()
}

func appendRetainDigest(dst []byte, d *retainDigest) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, retainBuckets)
	for _, v := range d {
		dst = binary.BigEndian.AppendUint64(dst, v)
	}
	return dst
}

func decodeRetainDigest(b []byte, d *retainDigest) error {
	r := &wireReader{b: b}
	r.version()
	if n := r.uvarint("buckets"); r.err == nil && n != retainBuckets {
		r.fail("bucket count")
	}
	for i := range d {
		d[i] = r.u64("bucket digest")
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return r.err
}
