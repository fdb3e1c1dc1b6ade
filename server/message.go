package server

import (
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gannetmq/gannet/codec"
)

// message is one application message inside the broker. It is immutable once
// built and shared by every receiver, queue and the retained store: its byte
// fields all point into one allocation made when the publish arrived.
type message struct {
	topic   []byte
	payload []byte
	qos     byte
	retain  bool
	// props holds the properties that travel with the message [MQTT-3.3.2]:
	// payload format, content type, response topic, correlation data and user
	// properties; nil when it has none (most messages), which keeps the
	// message small. Message expiry is kept as expiresAt instead. Read it
	// with prop.
	props *codec.Properties
	// expiresAt is the unix time in nanoseconds after which the message is no
	// longer delivered; 0 means never.
	expiresAt int64
	// from is the publisher's client id, for no-local and hash picks.
	from string
	// stamp orders versions of a retained topic across the cluster: the
	// broker clock when it was published; the newest wins.
	stamp int64
	// origin identifies the message across the cluster (origin.go); 0
	// for none.
	origin uint64

	// id is the message's body id in the store, set (once, by the one
	// goroutine that routes the message) when a persistent session first
	// queues it; 0 while no stored entry refers to it.
	id uint64
	// refs counts the stored entries that refer to the body; the body is
	// deleted with the last.
	refs atomic.Int32
}

// clone returns a message with the same content and no store identity.
func (m *message) clone() *message {
	return &message{topic: m.topic, payload: m.payload, qos: m.qos, retain: m.retain,
		props: m.props, expiresAt: m.expiresAt, from: m.from}
}

// noProps stands for a message without properties. Never modified.
var noProps codec.Properties

// prop returns the message's properties, empty when it has none. The
// result must not be modified.
func (m *message) prop() *codec.Properties {
	if m.props == nil {
		return &noProps
	}
	return m.props
}

// keptProps are the properties that travel with a message, in the order of
// their bits on the wire and in the store.
var keptProps = [...]codec.PropID{codec.PropPayloadFormat, codec.PropContentType,
	codec.PropResponseTopic, codec.PropCorrelationData}

const keptMask = uint64(1)<<codec.PropPayloadFormat | 1<<codec.PropContentType |
	1<<codec.PropResponseTopic | 1<<codec.PropCorrelationData

// newMessage copies what the broker keeps of p into one buffer. now is the
// broker clock in unix nanoseconds. from is kept as given.
func newMessage(p *codec.Publish, from string, now int64) *message {
	m := build(p, from, false)
	if p.Props.Has(codec.PropMessageExpiry) {
		m.expiresAt = now + int64(p.Props.MessageExpiry)*int64(time.Second)
	}
	return m
}

// build copies the topic, payload and kept properties of p, and from too
// when copyFrom, into one buffer of the new message's own.
func build(p *codec.Publish, from string, copyFrom bool) *message {
	pr := &p.Props
	n := len(p.Topic) + len(p.Payload) + len(pr.ContentType) + len(pr.ResponseTopic) + len(pr.CorrelationData)
	for _, u := range pr.User {
		n += len(u.Key) + len(u.Value)
	}
	if copyFrom {
		n += len(from)
	}
	buf := make([]byte, 0, n)
	take := func(b []byte) []byte {
		start := len(buf)
		buf = append(buf, b...)
		return buf[start:len(buf):len(buf)]
	}
	m := &message{qos: p.QoS, retain: p.Retain, from: from}
	if copyFrom && from != "" {
		b := take([]byte(from))
		m.from = unsafe.String(&b[0], len(b)) // the buffer is never written again
	}
	m.topic = take(p.Topic)
	m.payload = take(p.Payload)
	if pr.Present&keptMask == 0 && len(pr.User) == 0 {
		return m
	}
	kp := &codec.Properties{Present: pr.Present & keptMask, PayloadFormat: pr.PayloadFormat}
	if pr.Has(codec.PropContentType) {
		kp.ContentType = take(pr.ContentType)
	}
	if pr.Has(codec.PropResponseTopic) {
		kp.ResponseTopic = take(pr.ResponseTopic)
	}
	if pr.Has(codec.PropCorrelationData) {
		kp.CorrelationData = take(pr.CorrelationData)
	}
	if len(pr.User) > 0 {
		kp.User = make([]codec.UserProperty, len(pr.User))
		for i, u := range pr.User {
			kp.User[i] = codec.UserProperty{Key: take(u.Key), Value: take(u.Value)}
		}
	}
	m.props = kp
	return m
}

// own copies a message whose fields alias someone else's bytes (a peer's
// frame) into one allocation of its own.
func (m *message) own() *message {
	p := codec.Publish{Topic: m.topic, Payload: m.payload, QoS: m.qos, Retain: m.retain, Props: *m.prop()}
	c := build(&p, m.from, true)
	c.expiresAt = m.expiresAt
	c.origin, c.stamp = m.origin, m.stamp
	return c
}

// borrow fills the outbox's scratch message with p as a QoS 0 message that
// no one keeps: its fields alias p, valid while p is. Routing a QoS 0
// publish only encodes it (each frame and interlink record copies what it
// needs), so it costs no allocation; a message anything may keep (QoS 1/2,
// retained) is built with newMessage instead.
func (ob *outbox) borrow(p *codec.Publish, from string, now int64) *message {
	m := &ob.scratch
	*m = message{topic: p.Topic, payload: p.Payload, qos: p.QoS, retain: p.Retain, from: from}
	pr := &p.Props
	if pr.Present&keptMask != 0 || len(pr.User) > 0 {
		ob.scratchProps = codec.Properties{Present: pr.Present & keptMask, PayloadFormat: pr.PayloadFormat,
			ContentType: pr.ContentType, ResponseTopic: pr.ResponseTopic, CorrelationData: pr.CorrelationData,
			User: pr.User}
		m.props = &ob.scratchProps
	}
	if pr.Has(codec.PropMessageExpiry) {
		m.expiresAt = now + int64(pr.MessageExpiry)*int64(time.Second)
	}
	return m
}

// expired reports whether the message may no longer be delivered at now.
func (m *message) expired(now int64) bool {
	return m.expiresAt != 0 && now >= m.expiresAt
}

// template fills p with the message as a PUBLISH to be encoded at now: the
// message expiry sent is what remains of the interval [MQTT-3.3.2-6].
func (m *message) template(p *codec.Publish, now int64) {
	*p = codec.Publish{QoS: m.qos, Retain: m.retain, Topic: m.topic, Payload: m.payload, Props: *m.prop()}
	if m.expiresAt != 0 {
		left := (m.expiresAt - now + int64(time.Second) - 1) / int64(time.Second)
		p.Props.MessageExpiry = uint32(max(left, 1))
		p.Props.Set(codec.PropMessageExpiry)
	}
}
