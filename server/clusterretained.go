package server

import "encoding/binary"

// appendRetained encodes a retained message (or a clearing: empty
// payload) with its stamp.
func appendRetained(dst []byte, m *message, now int64) []byte {
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, uint64(m.stamp))
	return appendMessage(dst, m, now)
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
	if !cl.s.retained.apply(m) {
		return
	}
	if cl.s.store == nil {
		return
	}
	if len(m.payload) == 0 {
		ob.batch.DeleteRetained(m.topic)
	} else {
		ob.batch.PutRetained(m.record())
	}
}

// replicateRetained sends a retained message set (or cleared) here to
// every peer.
func (cl *cluster) replicateRetained(m *message) {
	b := appendRetained(nil, m, cl.s.now())
	cl.broadcast(recRetained, b)
}
