package persist

import (
	"bytes"
	"encoding/binary"
)

// Key prefixes. Do not reorder or reuse: they are on disk.
const (
	prefixSys      = 0x00
	prefixBody     = 'b'
	prefixMeta     = 'm'
	prefixRetained = 'r'
	prefixSession  = 's'

	subSession = 0x00
	subEntry   = 0x01
	subInbound = 0x02
	subWill    = 0x03
	subEnd     = 0xFF
)

var (
	keyFormat = []byte("\x00format")
	keyIDRun  = []byte("\x00idrun")
)

// appendClient appends 's', the client id's length and the id.
func appendClient(dst []byte, clientID string) []byte {
	dst = append(dst, prefixSession)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(clientID)))
	return append(dst, clientID...)
}

func bodyKey(dst []byte, id uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, prefixBody), id)
}

// opKind is one kind of write in a Batch.
type opKind uint8

const (
	opSet    opKind = iota
	opCreate        // a set of a key that has never been written
	opDelete
	opDeleteRange
)

// op is one write; key and val (the range end for opDeleteRange) are
// offsets into Batch.buf.
type op struct {
	kind           opKind
	k0, k1, v0, v1 int
}

// Batch collects writes on one goroutine; it is not safe for concurrent
// use. The zero value is ready. Each call encodes its arguments into the
// batch's own buffer, so callers may reuse their slices at once.
type Batch struct {
	buf []byte
	ops []op
}

// Len returns the number of writes in the batch.
func (b *Batch) Len() int { return len(b.ops) }

// Reset empties the batch, keeping its memory.
func (b *Batch) Reset() {
	b.buf = b.buf[:0]
	b.ops = b.ops[:0]
}

// set records a set whose key and value the caller appends through key and
// val.
func (b *Batch) set(kind opKind, key func([]byte) []byte, val func([]byte) []byte) {
	k0 := len(b.buf)
	b.buf = key(b.buf)
	k1 := len(b.buf)
	b.buf = val(b.buf)
	b.ops = append(b.ops, op{kind: kind, k0: k0, k1: k1, v0: k1, v1: len(b.buf)})
}

func (b *Batch) del(key func([]byte) []byte) {
	k0 := len(b.buf)
	b.buf = key(b.buf)
	b.ops = append(b.ops, op{kind: opDelete, k0: k0, k1: len(b.buf)})
}

func (b *Batch) delRange(start, end func([]byte) []byte) {
	k0 := len(b.buf)
	b.buf = start(b.buf)
	k1 := len(b.buf)
	b.buf = end(b.buf)
	b.ops = append(b.ops, op{kind: opDeleteRange, k0: k0, k1: k1, v0: k1, v1: len(b.buf)})
}

// PutSession writes a session's record.
func (b *Batch) PutSession(s *Session) {
	b.set(opSet, func(d []byte) []byte { return append(appendClient(d, s.ClientID), subSession) },
		func(d []byte) []byte { return appendSession(d, s) })
}

// OnlySession reports whether b holds writes of clientID's session record
// and nothing else (Store.CommitLazy's condition for a new session).
func (b *Batch) OnlySession(clientID string) bool {
	if len(b.ops) == 0 {
		return false
	}
	var kb [64]byte
	k := append(appendClient(kb[:0], clientID), subSession)
	for _, o := range b.ops {
		if o.kind != opSet || !bytes.Equal(b.buf[o.k0:o.k1], k) {
			return false
		}
	}
	return true
}

// DeleteSession deletes a session with everything under it: entries,
// inbound ids and will.
func (b *Batch) DeleteSession(clientID string) {
	b.delRange(func(d []byte) []byte { return appendClient(d, clientID) },
		func(d []byte) []byte { return append(appendClient(d, clientID), subEnd) })
}

// PutBody writes a new message body; m.ID must be a fresh NextID.
func (b *Batch) PutBody(m *Message) {
	b.set(opCreate, func(d []byte) []byte { return bodyKey(d, m.ID) },
		func(d []byte) []byte { return appendMessage(d, m) })
}

// DeleteBody deletes a message body.
func (b *Batch) DeleteBody(id uint64) {
	b.del(func(d []byte) []byte { return bodyKey(d, id) })
}

func entryKey(d []byte, clientID string, seq uint64) []byte {
	d = append(appendClient(d, clientID), subEntry)
	return binary.BigEndian.AppendUint64(d, seq)
}

// PutEntry rewrites one of a session's messages.
func (b *Batch) PutEntry(clientID string, e *Entry) {
	b.set(opSet, func(d []byte) []byte { return entryKey(d, clientID, e.Seq) },
		func(d []byte) []byte { return appendEntry(d, e) })
}

// CreateEntry writes one of a session's messages for the first time. A
// new entry deleted before it reached the disk never costs a write.
func (b *Batch) CreateEntry(clientID string, e *Entry) {
	b.set(opCreate, func(d []byte) []byte { return entryKey(d, clientID, e.Seq) },
		func(d []byte) []byte { return appendEntry(d, e) })
}

// DeleteEntry deletes one of a session's messages.
func (b *Batch) DeleteEntry(clientID string, seq uint64) {
	b.del(func(d []byte) []byte { return entryKey(d, clientID, seq) })
}

func inboundKey(d []byte, clientID string, pid uint16) []byte {
	d = append(appendClient(d, clientID), subInbound)
	return binary.BigEndian.AppendUint16(d, pid)
}

// PutInbound records an inbound QoS 2 packet id awaiting PUBREL.
func (b *Batch) PutInbound(clientID string, pid uint16) {
	b.set(opSet, func(d []byte) []byte { return inboundKey(d, clientID, pid) },
		func(d []byte) []byte { return append(d, recordVersion) })
}

// DeleteInbound forgets an inbound QoS 2 packet id.
func (b *Batch) DeleteInbound(clientID string, pid uint16) {
	b.del(func(d []byte) []byte { return inboundKey(d, clientID, pid) })
}

// PutRetained writes the retained message of m.Topic, with m.Stamp; it
// replaces the topic's message or clearing.
func (b *Batch) PutRetained(m *Message) {
	b.set(opSet, func(d []byte) []byte { return append(append(d, prefixRetained), m.Topic...) },
		func(d []byte) []byte { return appendRetained(d, m, 0) })
}

// ClearRetained records that the retained message of topic was cleared at
// stamp (a tombstone), replacing the message: a cluster peer's older copy
// must not bring it back, after a restart too.
func (b *Batch) ClearRetained(topic []byte, stamp int64) {
	b.set(opSet, func(d []byte) []byte { return append(append(d, prefixRetained), topic...) },
		func(d []byte) []byte { return appendRetained(d, nil, stamp) })
}

// DeleteRetained deletes the retained message or clearing of topic.
func (b *Batch) DeleteRetained(topic []byte) {
	b.del(func(d []byte) []byte { return append(append(d, prefixRetained), topic...) })
}

// PutWill writes a session's delayed will.
func (b *Batch) PutWill(clientID string, w *Will) {
	b.set(opSet, func(d []byte) []byte { return append(appendClient(d, clientID), subWill) },
		func(d []byte) []byte { return appendWill(d, w) })
}

// DeleteWill deletes a session's delayed will.
func (b *Batch) DeleteWill(clientID string) {
	b.del(func(d []byte) []byte { return append(appendClient(d, clientID), subWill) })
}

// PutMeta writes a small named value for another package.
func (b *Batch) PutMeta(key string, val []byte) {
	b.set(opSet, func(d []byte) []byte { return append(append(d, prefixMeta), key...) },
		func(d []byte) []byte { return append(d, val...) })
}

// CreateMeta writes a named value under a key never written before, so that
// the committer may drop the write when the key is deleted again within the
// same commit group.
func (b *Batch) CreateMeta(key string, val []byte) {
	b.set(opCreate, func(d []byte) []byte { return append(append(d, prefixMeta), key...) },
		func(d []byte) []byte { return append(d, val...) })
}

// DeleteMeta deletes a named value.
func (b *Batch) DeleteMeta(key string) {
	b.del(func(d []byte) []byte { return append(append(d, prefixMeta), key...) })
}
