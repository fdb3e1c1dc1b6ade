package server

import (
	"sync/atomic"
	"time"

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
	// properties. Message expiry is kept as expiresAt instead.
	props codec.Properties
	// expiresAt is the unix time in nanoseconds after which the message is no
	// longer delivered; 0 means never.
	expiresAt int64
	// from is the publisher's client id, for no-local and hash picks.
	from string
	// stamp orders versions of a retained topic across the cluster: the
	// broker clock when it was published; the newest wins.
	stamp int64

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

// newMessage copies what the broker keeps of p into one buffer. now is the
// broker clock in unix nanoseconds.
func newMessage(p *codec.Publish, from string, now int64) *message {
	pr := &p.Props
	n := len(p.Topic) + len(p.Payload) + len(pr.ContentType) + len(pr.ResponseTopic) + len(pr.CorrelationData)
	for _, u := range pr.User {
		n += len(u.Key) + len(u.Value)
	}
	buf := make([]byte, 0, n)
	take := func(b []byte) []byte {
		start := len(buf)
		buf = append(buf, b...)
		return buf[start:len(buf):len(buf)]
	}
	m := &message{qos: p.QoS, retain: p.Retain, from: from}
	m.topic = take(p.Topic)
	m.payload = take(p.Payload)
	keep := uint64(1)<<codec.PropPayloadFormat | 1<<codec.PropContentType |
		1<<codec.PropResponseTopic | 1<<codec.PropCorrelationData
	m.props.Present = pr.Present & keep
	m.props.PayloadFormat = pr.PayloadFormat
	if pr.Has(codec.PropContentType) {
		m.props.ContentType = take(pr.ContentType)
	}
	if pr.Has(codec.PropResponseTopic) {
		m.props.ResponseTopic = take(pr.ResponseTopic)
	}
	if pr.Has(codec.PropCorrelationData) {
		m.props.CorrelationData = take(pr.CorrelationData)
	}
	if len(pr.User) > 0 {
		m.props.User = make([]codec.UserProperty, len(pr.User))
		for i, u := range pr.User {
			m.props.User[i] = codec.UserProperty{Key: take(u.Key), Value: take(u.Value)}
		}
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
	*p = codec.Publish{QoS: m.qos, Retain: m.retain, Topic: m.topic, Payload: m.payload, Props: m.props}
	if m.expiresAt != 0 {
		left := (m.expiresAt - now + int64(time.Second) - 1) / int64(time.Second)
		p.Props.MessageExpiry = uint32(max(left, 1))
		p.Props.Set(codec.PropMessageExpiry)
	}
}
