package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// Message is one stored application message.
type Message struct {
	ID      uint64 // body id from NextID; 0 for records stored inline
	Topic   []byte
	Payload []byte
	QoS     byte
	Retain  bool
	// Props holds the properties that travel with the message: payload
	// format, content type, response topic, correlation data and user
	// properties. Others are not stored.
	Props     codec.Properties
	ExpiresAt int64 // unix ns; 0: never
	From      string
	// Stamp orders versions of a retained message across a cluster (the
	// broker's stamp); it is kept with retained records only. 0: none.
	Stamp int64
	// Origin identifies the message across a cluster (the broker's
	// origin), so that a session restored with it still knows it when it
	// comes again by another way. 0: none.
	Origin uint64
}

// Subscription is one of a session's subscriptions.
type Subscription struct {
	Filter            string // as subscribed, $share/<group>/ included
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	SubID             uint32
	// ReadCheck: the subscriber's ACL allows the filter only in part, so
	// each message is checked for read access before delivery.
	ReadCheck bool
}

// Session is a session's own record.
type Session struct {
	ClientID       string
	Expiry         time.Duration
	DisconnectedAt int64 // unix ns the client went offline; 0: connected when written
	Subs           []Subscription
	// Owner is the user whose connection made or last took the session
	// (empty: an anonymous client, or a record from before owners were
	// kept).
	Owner string
}

// Entry is one QoS 1/2 message on its way to a session: queued (PacketID
// 0) or inflight.
type Entry struct {
	Seq      uint64 // order within the session; part of the key
	MsgID    uint64
	QoS      byte
	Retain   bool
	PacketID uint16
	Released bool // QoS 2: PUBREC received, PUBREL sent
	SubIDs   []uint32
}

// Will is a delayed will message.
type Will struct {
	Msg    Message
	FireAt int64 // unix ns
}

// recordVersion leads every value. Do not change the meaning of a version:
// stores written by it exist.
const recordVersion = 1

// retainedVersion leads a retained record that carries a stamp: a message
// or a clearing (appendRetained). Retained records of recordVersion are a
// bare message record, stamp 0.
const retainedVersion = 2

// Kinds of a retainedVersion record.
const (
	retainedMessage = 0
	retainedCleared = 1
)

// ErrCorrupt is returned for a store whose records or files do not decode.
var ErrCorrupt = errors.New("persist: data is corrupt")

type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s", ErrCorrupt, what)
	}
	r.b = nil
}

func (r *reader) byte1(what string) byte {
	if len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint(what string) int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// str returns a copy: records outlive the iterator that read them.
func (r *reader) str(what string) []byte {
	n := r.uvarint(what)
	if n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	v := append([]byte(nil), r.b[:n]...)
	r.b = r.b[n:]
	return v
}

func (r *reader) version(what string) {
	if v := r.byte1(what); r.err == nil && v != recordVersion {
		r.fail(what + " version")
	}
}

func (r *reader) done(what string) error {
	if r.err == nil && len(r.b) != 0 {
		r.fail(what + ": trailing bytes")
	}
	return r.err
}

func appendStr(dst, s []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// props kept with a message, in mask bit order; bit 4 is user properties.
var keptProps = [...]codec.PropID{codec.PropPayloadFormat, codec.PropContentType,
	codec.PropResponseTopic, codec.PropCorrelationData}

func appendMessage(dst []byte, m *Message) []byte {
	dst = append(dst, recordVersion)
	bits := m.QoS & 3
	if m.Retain {
		bits |= 4
	}
	if m.Origin != 0 {
		bits |= 8
	}
	dst = append(dst, bits)
	dst = binary.AppendUvarint(dst, m.ID)
	if m.Origin != 0 {
		dst = binary.AppendUvarint(dst, m.Origin)
	}
	dst = binary.AppendVarint(dst, m.ExpiresAt)
	dst = appendStr(dst, []byte(m.From))
	dst = appendStr(dst, m.Topic)
	var mask uint64
	for i, id := range keptProps {
		if m.Props.Has(id) {
			mask |= 1 << i
		}
	}
	if len(m.Props.User) > 0 {
		mask |= 1 << len(keptProps)
	}
	dst = binary.AppendUvarint(dst, mask)
	if mask&1 != 0 {
		dst = append(dst, m.Props.PayloadFormat)
	}
	if mask&2 != 0 {
		dst = appendStr(dst, m.Props.ContentType)
	}
	if mask&4 != 0 {
		dst = appendStr(dst, m.Props.ResponseTopic)
	}
	if mask&8 != 0 {
		dst = appendStr(dst, m.Props.CorrelationData)
	}
	if mask&16 != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(m.Props.User)))
		for _, u := range m.Props.User {
			dst = appendStr(dst, u.Key)
			dst = appendStr(dst, u.Value)
		}
	}
	return appendStr(dst, m.Payload)
}

func readMessage(r *reader, m *Message) {
	r.version("message")
	bits := r.byte1("message flags")
	if bits&^15 != 0 || bits&3 == 3 {
		r.fail("message flags")
		return
	}
	m.QoS, m.Retain = bits&3, bits&4 != 0
	m.ID = r.uvarint("message id")
	if bits&8 != 0 {
		if m.Origin = r.uvarint("message origin"); m.Origin == 0 {
			r.fail("message origin")
			return
		}
	}
	m.ExpiresAt = r.varint("message expiry")
	m.From = string(r.str("publisher"))
	m.Topic = r.str("topic")
	mask := r.uvarint("property mask")
	if mask>>(len(keptProps)+1) != 0 {
		r.fail("property mask")
		return
	}
	if mask&1 != 0 {
		m.Props.PayloadFormat = r.byte1("payload format")
		m.Props.Set(codec.PropPayloadFormat)
	}
	if mask&2 != 0 {
		m.Props.ContentType = r.str("content type")
		m.Props.Set(codec.PropContentType)
	}
	if mask&4 != 0 {
		m.Props.ResponseTopic = r.str("response topic")
		m.Props.Set(codec.PropResponseTopic)
	}
	if mask&8 != 0 {
		m.Props.CorrelationData = r.str("correlation data")
		m.Props.Set(codec.PropCorrelationData)
	}
	if mask&16 != 0 {
		n := r.uvarint("user properties")
		if n == 0 || n > uint64(len(r.b)) {
			r.fail("user properties")
			return
		}
		m.Props.User = make([]codec.UserProperty, n)
		for i := range m.Props.User {
			m.Props.User[i] = codec.UserProperty{Key: r.str("user property"), Value: r.str("user property")}
		}
	}
	m.Payload = r.str("payload")
}

// DecodeMessage decodes a message record.
func DecodeMessage(b []byte) (*Message, error) {
	r := &reader{b: b}
	m := new(Message)
	readMessage(r, m)
	return m, r.done("message")
}

func appendSession(dst []byte, s *Session) []byte {
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(s.Expiry/time.Millisecond))
	dst = binary.AppendVarint(dst, s.DisconnectedAt)
	dst = binary.AppendUvarint(dst, uint64(len(s.Subs)))
	for _, sub := range s.Subs {
		dst = appendStr(dst, []byte(sub.Filter))
		o := sub.QoS & 3
		if sub.NoLocal {
			o |= 4
		}
		if sub.RetainAsPublished {
			o |= 8
		}
		if sub.ReadCheck {
			o |= 16
		}
		dst = append(dst, o)
		dst = binary.AppendUvarint(dst, uint64(sub.SubID))
	}
	if s.Owner != "" {
		// Optional at the end: records without it decode as before.
		dst = appendStr(dst, []byte(s.Owner))
	}
	return dst
}

// DecodeSession decodes a session record; the client id comes from the key.
func DecodeSession(b []byte) (*Session, error) {
	r := &reader{b: b}
	r.version("session")
	s := new(Session)
	exp := r.uvarint("session expiry")
	if exp > 1<<40 {
		r.fail("session expiry")
	}
	s.Expiry = time.Duration(exp) * time.Millisecond
	s.DisconnectedAt = r.varint("disconnected at")
	n := r.uvarint("subscription count")
	if n > uint64(len(r.b)) {
		r.fail("subscription count")
		n = 0
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		var sub Subscription
		sub.Filter = string(r.str("filter"))
		o := r.byte1("subscription options")
		if o&^31 != 0 || o&3 == 3 {
			r.fail("subscription options")
		}
		sub.QoS, sub.NoLocal, sub.RetainAsPublished, sub.ReadCheck = o&3, o&4 != 0, o&8 != 0, o&16 != 0
		id := r.uvarint("subscription id")
		if id > codec.MaxSubscriptionID {
			r.fail("subscription id")
		}
		sub.SubID = uint32(id)
		s.Subs = append(s.Subs, sub)
	}
	if len(r.b) > 0 && r.err == nil {
		s.Owner = string(r.str("owner"))
	}
	return s, r.done("session")
}

func appendEntry(dst []byte, e *Entry) []byte {
	dst = append(dst, recordVersion)
	bits := e.QoS & 3
	if e.Retain {
		bits |= 4
	}
	if e.Released {
		bits |= 8
	}
	dst = append(dst, bits)
	dst = binary.AppendUvarint(dst, e.MsgID)
	dst = binary.BigEndian.AppendUint16(dst, e.PacketID)
	dst = binary.AppendUvarint(dst, uint64(len(e.SubIDs)))
	for _, id := range e.SubIDs {
		dst = binary.AppendUvarint(dst, uint64(id))
	}
	return dst
}

// DecodeEntry decodes an entry record; Seq comes from the key.
func DecodeEntry(b []byte) (*Entry, error) {
	r := &reader{b: b}
	r.version("entry")
	e := new(Entry)
	bits := r.byte1("entry flags")
	if bits&^15 != 0 || bits&3 == 0 || bits&3 == 3 {
		r.fail("entry flags")
	}
	e.QoS, e.Retain, e.Released = bits&3, bits&4 != 0, bits&8 != 0
	e.MsgID = r.uvarint("message id")
	if len(r.b) < 2 {
		r.fail("packet id")
	} else {
		e.PacketID = binary.BigEndian.Uint16(r.b)
		r.b = r.b[2:]
	}
	n := r.uvarint("subscription id count")
	if n > uint64(len(r.b)) {
		r.fail("subscription id count")
		n = 0
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		id := r.uvarint("subscription id")
		if id == 0 || id > codec.MaxSubscriptionID {
			r.fail("subscription id")
		}
		e.SubIDs = append(e.SubIDs, uint32(id))
	}
	return e, r.done("entry")
}

func appendWill(dst []byte, w *Will) []byte {
	dst = append(dst, recordVersion)
	dst = binary.AppendVarint(dst, w.FireAt)
	return appendMessage(dst, &w.Msg)
}

// DecodeWill decodes a will record.
func DecodeWill(b []byte) (*Will, error) {
	r := &reader{b: b}
	r.version("will")
	w := new(Will)
	w.FireAt = r.varint("will time")
	readMessage(r, &w.Msg)
	return w, r.done("will")
}

// appendRetained encodes a topic's retained message, or its clearing when
// m is nil:
//
//	+---------+-------------------+----------------+-------------------+
//	| version | kind              | stamp          | message record    |
//	| 1 (= 2) | 1: 0 msg, 1 clear | uvarint        | (a message only)  |
//	+---------+-------------------+----------------+-------------------+
func appendRetained(dst []byte, m *Message, clearedAt int64) []byte {
	dst = append(dst, retainedVersion)
	if m == nil {
		dst = append(dst, retainedCleared)
		return binary.AppendUvarint(dst, uint64(clearedAt))
	}
	dst = append(dst, retainedMessage)
	dst = binary.AppendUvarint(dst, uint64(m.Stamp))
	return appendMessage(dst, m)
}

// DecodeRetained decodes a retained record: a message, with its Stamp, or,
// when m is nil, a clearing made at stamp (its topic is the key's). A
// record from before stamps were kept is a message with stamp 0.
func DecodeRetained(b []byte) (m *Message, stamp int64, err error) {
	if len(b) > 0 && b[0] == recordVersion {
		m, err = DecodeMessage(b)
		return m, 0, err
	}
	r := &reader{b: b}
	if v := r.byte1("retained version"); r.err == nil && v != retainedVersion {
		r.fail("retained version")
	}
	kind := r.byte1("retained kind")
	st := r.uvarint("retained stamp")
	if st > math.MaxInt64 {
		r.fail("retained stamp")
	}
	switch {
	case r.err != nil:
	case kind == retainedMessage:
		m = new(Message)
		readMessage(r, m)
		m.Stamp = int64(st)
	case kind != retainedCleared:
		r.fail("retained kind")
	}
	if err := r.done("retained"); err != nil {
		return nil, 0, err
	}
	return m, int64(st), nil
}
