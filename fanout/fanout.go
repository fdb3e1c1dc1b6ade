// Package fanout turns one publish into the bytes each receiver gets.
//
// Receivers of one message differ in few ways: protocol family (3.x or 5),
// granted QoS, the retain flag as sent, v5 subscription identifiers and a
// topic alias. Everything else — topic, payload, properties — is the same.
// An Encoder encodes the PUBLISH once per distinct Form and hands every
// receiver of that form the same bytes. For QoS 1 and 2 the packet
// identifier is the only per-receiver field; a Frame records where it sits,
// so a receiver's packet is written as three slices — the shared head, its
// own two id bytes, the shared tail — in one writev, never re-encoded.
//
// Merge combines the options of overlapping subscriptions that one receiver
// holds, as MQTT 5 section 3.3.4 asks: one delivery at the highest granted
// QoS carrying every matching subscription identifier.
package fanout

import (
	"slices"

	"github.com/gannetmq/gannet/codec"
)

// Form is what makes one receiver's PUBLISH differ from another's, the
// packet identifier and the topic alias's number aside.
type Form struct {
	V5     bool
	QoS    byte
	Retain bool
	// SubIDs are the v5 subscription identifiers of the subscriptions that
	// matched, in ascending order without duplicates.
	SubIDs []uint32
	// Alias says whether the v5 PUBLISH carries a topic alias, and whether
	// the topic goes with it. The alias's number is the receiver's own:
	// like the packet identifier, it is written beside the shared frame.
	Alias AliasMode
}

// AliasMode is how a PUBLISH uses a topic alias (MQTT 5, 3.3.2.3.4).
type AliasMode uint8

// Alias modes.
const (
	AliasNone AliasMode = iota // the topic, no alias
	AliasSet                   // the topic and an alias: (re)defines the alias
	AliasUse                   // the alias alone, the topic left out
)

func (f *Form) equal(g *Form) bool {
	return f.V5 == g.V5 && f.QoS == g.QoS && f.Retain == g.Retain &&
		f.Alias == g.Alias && slices.Equal(f.SubIDs, g.SubIDs)
}

// Frame is one encoded PUBLISH shared by every receiver of its form. Buf
// must not be modified. For QoS 1/2, IDOff is the offset of the two packet
// identifier bytes in Buf; for QoS 0 it is -1. With a topic alias,
// AliasOff is the offset of the alias's two bytes; otherwise it is -1.
type Frame struct {
	Buf      []byte
	IDOff    int
	AliasOff int
}

// Parts returns the slices to write for a receiver whose packet identifier
// bytes are id (ignored for QoS 0) and whose topic alias bytes are alias
// (ignored without an alias). It appends to dst and returns it. The packet
// identifier always comes before the properties, so before the alias.
func (f Frame) Parts(dst [][]byte, id, alias []byte) [][]byte {
	b, at := f.Buf, 0
	if f.IDOff >= 0 {
		dst = append(dst, b[:f.IDOff], id)
		at = f.IDOff + 2
	}
	if f.AliasOff >= 0 {
		dst = append(dst, b[at:f.AliasOff], alias)
		at = f.AliasOff + 2
	}
	return append(dst, b[at:])
}

// Size is the encoded length of the packet.
func (f Frame) Size() int { return len(f.Buf) }

// Encoder caches the frames of one message. It is not safe for concurrent
// use; keep one per event loop and Reset it for each message.
type Encoder struct {
	pub    codec.Publish
	forms  []Form
	frames []Frame
}

// Reset starts a new message. p is copied (its slices are shared, not
// copied): fields a Form decides (QoS, retain, DUP, subscription ids, topic
// alias) are overwritten per form. The caller keeps p's byte slices
// unchanged until the frames are no longer needed.
func (e *Encoder) Reset(p *codec.Publish) {
	e.pub = *p
	e.pub.Dup = false
	e.pub.PacketID = 0
	e.pub.Props.SubscriptionIDs = nil
	e.pub.Props.Clear(codec.PropTopicAlias)
	for i := range e.forms {
		e.forms[i] = Form{}
		e.frames[i] = Frame{}
	}
	e.forms = e.forms[:0]
	e.frames = e.frames[:0]
}

// Frame returns the frame for f, encoding it on first use. The returned
// bytes stay valid after Reset: each encoding is a fresh buffer, so a frame
// may be queued for a write that happens later.
func (e *Encoder) Frame(f *Form) Frame {
	for i := range e.forms {
		if e.forms[i].equal(f) {
			return e.frames[i]
		}
	}
	fr := Encode(&e.pub, f)
	e.forms = append(e.forms, Form{V5: f.V5, QoS: f.QoS, Retain: f.Retain,
		SubIDs: slices.Clone(f.SubIDs), Alias: f.Alias})
	e.frames = append(e.frames, fr)
	return fr
}

// Encode encodes template p for form f into a new buffer. p is not
// modified.
func Encode(p *codec.Publish, f *Form) Frame {
	q := *p
	q.QoS = f.QoS
	q.Retain = f.Retain
	q.Dup = false
	if f.QoS > 0 {
		q.PacketID = 0xFFFF // placeholder; the receiver's id is written beside it
	} else {
		q.PacketID = 0
	}
	v := codec.V311
	if f.V5 {
		v = codec.V5
		q.Props.SubscriptionIDs = f.SubIDs
		if f.Alias != AliasNone {
			q.Props.TopicAlias = 0xFFFF // placeholder, like the packet id
			q.Props.Set(codec.PropTopicAlias)
			if f.Alias == AliasUse {
				q.Topic = nil
			}
		} else {
			q.Props.Clear(codec.PropTopicAlias)
		}
	} else {
		q.Props = codec.Properties{}
	}
	buf := make([]byte, 0, q.Size(v))
	buf, off, aoff := q.AppendFrame(buf, v)
	return Frame{Buf: buf, IDOff: off, AliasOff: aoff}
}

// Options are a subscription's delivery options as the broker stores them.
type Options struct {
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	SubID             uint32 // 0: none
	// Check says that the subscriber's ACL allows this filter only in
	// part: each message it matches is checked for read access.
	Check bool
}

// Merged is the delivery one receiver gets for one message when several of
// its subscriptions match.
type Merged struct {
	QoS               byte
	RetainAsPublished bool
	SubIDs            []uint32
}

// Add folds one matching subscription into m. The first Add starts from a
// zero Merged.
func (m *Merged) Add(o Options) {
	m.QoS = max(m.QoS, o.QoS)
	m.RetainAsPublished = m.RetainAsPublished || o.RetainAsPublished
	if o.SubID != 0 {
		i, found := slices.BinarySearch(m.SubIDs, o.SubID)
		if !found {
			m.SubIDs = slices.Insert(m.SubIDs, i, o.SubID)
		}
	}
}

// Deliver computes what a receiver gets: QoS is the lower of the message's
// and the granted one [MQTT-3.8.4-8], and the retain flag is kept only under
// retain-as-published [MQTT-3.3.1-12] (retained messages sent because of a
// new subscription keep it regardless; pass retain=true for those).
func (m *Merged) Deliver(msgQoS byte, msgRetain, forSubscribe bool) (qos byte, retain bool) {
	qos = min(msgQoS, m.QoS)
	retain = msgRetain && (forSubscribe || m.RetainAsPublished)
	return qos, retain
}
