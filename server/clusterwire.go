package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// The bodies the broker sends to its peers inside interlink frames. The
// interlink carries them as opaque bytes; they are ours, so this file is
// their definition. Every body starts with a version byte.
//
// Forwarded message (recForward):
//
//	+---------+-------+------------------+--------------------+
//	| version | flags | groups           | message            |
//	| 1 byte  | 1     | uvarint n, n str | see appendMessage  |
//	+---------+-------+------------------+--------------------+
//	flags: bit 0 plain (deliver to plain subscriptions), others zero.
//	groups: the shared groups ("$share/<name>/<filter>") this node picked
//	the receiver for.
//
// Message:
//
//	+-------+----------+------+-------+----------+---------+
//	| bits  | expiry   | from | topic | props    | payload |
//	| 1     | uvarint? | str  | str   | (below)  | str     |
//	+-------+----------+------+-------+----------+---------+
//	bits: qos (bits 0-1), retain (2), has expiry (3). The expiry is the
//	milliseconds left when sent, so that peers' clocks need not agree.
//	props: uvarint presence mask (bit i = codec property i of the kept
//	set), then payload format (1 byte), content type, response topic,
//	correlation data (str each), user properties (uvarint n, n key/value
//	str pairs), each only when present.
//
// str is a uvarint length and that many bytes. Do not reorder: exchanged
// between nodes.

const wireVersion = 1

// Record kinds the broker sends its peers. Do not renumber: exchanged
// between nodes.
const (
	recForward   byte = 1 // a message to deliver here (reliable for QoS 1/2)
	recRouteAdd  byte = 2 // body: a filter the sender now has subscribers for
	recRouteDel  byte = 3 // body: a filter the sender no longer has
	recRoutesAll byte = 4 // the sender's whole route set, in chunks
	recRetained  byte = 5 // a retained message set or cleared, with its stamp
	recTakeover  byte = 6 // request: hand over a client's session
	recSession   byte = 7 // answer: the session, if the sender had it
	recConnected byte = 8 // a client connected at the sender, at a stamp
	recRedirect  byte = 9 // a delivery for a session that moved to the receiver
)

var errWire = errors.New("server: malformed peer body")

type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s", errWire, what)
	}
	r.b = nil
}

func (r *wireReader) byte1(what string) byte {
	if len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *wireReader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *wireReader) str(what string) []byte {
	n := r.uvarint(what)
	if n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func appendStr(dst, s []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// keptProps are the properties that travel with a message, in mask bit
// order.
var keptProps = [...]codec.PropID{codec.PropPayloadFormat, codec.PropContentType,
	codec.PropResponseTopic, codec.PropCorrelationData}

// appendMessage encodes m as it stands at now.
func appendMessage(dst []byte, m *message, now int64) []byte {
	bits := m.qos & 3
	if m.retain {
		bits |= 4
	}
	if m.expiresAt != 0 {
		bits |= 8
	}
	dst = append(dst, bits)
	if m.expiresAt != 0 {
		left := max(m.expiresAt-now, 0) / int64(time.Millisecond)
		dst = binary.AppendUvarint(dst, uint64(left))
	}
	dst = appendStr(dst, []byte(m.from))
	dst = appendStr(dst, m.topic)
	var mask uint64
	for i, id := range keptProps {
		if m.props.Has(id) {
			mask |= 1 << i
		}
	}
	if len(m.props.User) > 0 {
		mask |= 1 << len(keptProps)
	}
	dst = binary.AppendUvarint(dst, mask)
	if m.props.Has(codec.PropPayloadFormat) {
		dst = append(dst, m.props.PayloadFormat)
	}
	if m.props.Has(codec.PropContentType) {
		dst = appendStr(dst, m.props.ContentType)
	}
	if m.props.Has(codec.PropResponseTopic) {
		dst = appendStr(dst, m.props.ResponseTopic)
	}
	if m.props.Has(codec.PropCorrelationData) {
		dst = appendStr(dst, m.props.CorrelationData)
	}
	if len(m.props.User) > 0 {
		dst = binary.AppendUvarint(dst, uint64(len(m.props.User)))
		for _, u := range m.props.User {
			dst = appendStr(dst, u.Key)
			dst = appendStr(dst, u.Value)
		}
	}
	return appendStr(dst, m.payload)
}

// readMessage decodes a message. Its byte fields alias r's input.
func readMessage(r *wireReader, now int64) *message {
	bits := r.byte1("message flags")
	if bits&^0x0F != 0 || bits&3 == 3 {
		r.fail("message flags")
		return nil
	}
	m := &message{qos: bits & 3, retain: bits&4 != 0}
	if bits&8 != 0 {
		left := r.uvarint("expiry")
		if left > 1<<42 {
			r.fail("expiry")
			return nil
		}
		m.expiresAt = now + int64(left)*int64(time.Millisecond)
	}
	m.from = string(r.str("publisher"))
	m.topic = r.str("topic")
	mask := r.uvarint("property mask")
	if mask>>(len(keptProps)+1) != 0 {
		r.fail("property mask")
		return nil
	}
	if mask&1 != 0 {
		m.props.PayloadFormat = r.byte1("payload format")
		m.props.Set(codec.PropPayloadFormat)
	}
	if mask&2 != 0 {
		m.props.ContentType = r.str("content type")
		m.props.Set(codec.PropContentType)
	}
	if mask&4 != 0 {
		m.props.ResponseTopic = r.str("response topic")
		m.props.Set(codec.PropResponseTopic)
	}
	if mask&8 != 0 {
		m.props.CorrelationData = r.str("correlation data")
		m.props.Set(codec.PropCorrelationData)
	}
	if mask&16 != 0 {
		n := r.uvarint("user properties")
		if n == 0 || n > uint64(len(r.b)) {
			r.fail("user properties")
			return nil
		}
		m.props.User = make([]codec.UserProperty, n)
		for i := range m.props.User {
			m.props.User[i] = codec.UserProperty{Key: r.str("user property"), Value: r.str("user property")}
		}
	}
	m.payload = r.str("payload")
	if r.err != nil {
		return nil
	}
	if codec.ValidateTopicName(m.topic) != nil {
		r.fail("topic")
		return nil
	}
	return m
}

// forward is one message on its way to a peer, with what the peer is to
// deliver it to.
type forward struct {
	plain  bool
	groups []string
}

// appendForward encodes a forwarded message.
func appendForward(dst []byte, f *forward, msg []byte) []byte {
	var flags byte
	if f.plain {
		flags |= 1
	}
	dst = append(dst, wireVersion, flags)
	dst = binary.AppendUvarint(dst, uint64(len(f.groups)))
	for _, g := range f.groups {
		dst = appendStr(dst, []byte(g))
	}
	return append(dst, msg...)
}

// decodeForward decodes a forwarded message; the message's fields are
// copied out of b.
func decodeForward(b []byte, now int64) (*forward, *message, error) {
	r := &wireReader{b: b}
	if v := r.byte1("version"); r.err == nil && v != wireVersion {
		return nil, nil, fmt.Errorf("%w: version %d, this node speaks %d", errWire, v, wireVersion)
	}
	flags := r.byte1("flags")
	if flags&^1 != 0 {
		r.fail("flags")
	}
	f := &forward{plain: flags&1 != 0}
	n := r.uvarint("group count")
	if n > uint64(len(r.b)) {
		r.fail("group count")
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		f.groups = append(f.groups, string(r.str("group")))
	}
	m := readMessage(r, now)
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	return f, m.own(), nil
}

// own copies the message's byte fields into one allocation of its own.
func (m *message) own() *message {
	p := codec.Publish{Topic: m.topic, Payload: m.payload, QoS: m.qos, Retain: m.retain, Props: m.props}
	c := newMessage(&p, m.from, 0)
	c.expiresAt = m.expiresAt
	return c
}
