package server

import (
	"encoding/binary"
	"time"

	"github.com/gannetmq/gannet/persist"
)

// appendRetained encodes a retained message (or a clearing: empty
// payload) with its stamp.
func appendRetained(dst []byte, m *message, now int64) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, uint64(m.stamp))
	return appendMessage(dst, m, now, false) // the stamp follows
}

func decodeRetained(b []byte, now int64) (*message, error) {
	r := &wireReader{b: b}
	if v := r.byte1("version"); r.err == nil && v != wireVersion {
		return nil, errWire
	}
	stamp := r.uvarint("stamp")
	var rm message
	readMessage(r, now, &rm)
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return nil, r.err
	}
	m := rm.own()
	m.stamp = int64(stamp)
	m.retain = true
	return m, nil
}

// applyRetained takes a peer's retained message unless this node has a
// newer version of the topic.
func (cl *cluster) applyRetained(ob *outbox, m *message) {
	cl.s.observe(m.stamp)
	if cl.s.retained.apply(m) {
		cl.s.storeRetained(ob, m)
	}
}

// replicateRetained sends a retained message set (or cleared) here to
// every peer.
func (cl *cluster) replicateRetained(m *message) {
	b := appendRetained(nil, m, cl.s.now())
	cl.broadcast(recRetained, b)
}

// tombLife is how long the clearing of a retained message (a tombstone)
// is kept, in memory and in the store: as long as a peer can be away and
// still be taken back with nothing lost, --cluster-forget-after for its
// routes and --max-session-expiry more for what was queued for it
// (cluster.go: KeepQueued). A peer away longer may bring back a message
// cleared meanwhile. With --cluster-forget-after 0 a failed peer's routes
// are kept for ever, but clearings still go after --max-session-expiry:
// kept for ever, one per topic ever cleared, they would grow without
// bound.
func (s *Server) tombLife() time.Duration {
	return s.cfg.Cluster.ForgetAfter + s.cfg.MaxSessionExpiry
}

// forgetClearings forgets the clearings older than tombLife, in memory and
// in the store.
func (s *Server) forgetClearings(now time.Time) {
	before := now.UnixNano() - int64(s.tombLife())
	if s.store == nil {
		s.retained.forgetTombs(before, nil, nil)
		return
	}
	var b persist.Batch
	s.retained.forgetTombs(before, &b, func(b *persist.Batch) {
		// Not waiting: the retained store's lock is held.
		s.store.commit(b, func(error) {}, false)
	})
}
