package server

import (
	"strconv"
	"unicode/utf8"

	"github.com/gannetmq/gannet/codec"
)

// handlePublish takes a client's PUBLISH: resolves a topic alias, validates,
// copies the message once, routes it and acknowledges it.
func (c *client) handlePublish(ob *outbox, h codec.FixedHeader, body []byte) error {
	p := &c.loop.scratch.pub
	if err := p.Decode(h, body, c.version); err != nil {
		return err
	}
	ob.samplePublish(c.srv.now()) // for the latency histograms (latency.go)
	v5 := c.version == codec.V5
	if v5 && len(p.Props.SubscriptionIDs) > 0 {
		return &codec.Error{Code: codec.ProtocolError, Rule: "MQTT-3.3.4-6", Msg: "PUBLISH from a client carries a subscription identifier"}
	}
	if v5 && p.Props.Has(codec.PropTopicAlias) {
		a := int(p.Props.TopicAlias)
		if a == 0 || a > c.srv.cfg.TopicAliasMaximum {
			// [MQTT-3.3.2-9, MQTT-3.3.2-10]
			return &codec.Error{Code: codec.TopicAliasInvalid, Rule: "MQTT-3.3.2-9", Msg: "topic alias out of range"}
		}
		r := c.rareState()
		if r.aliasIn == nil {
			r.aliasIn = make([][]byte, c.srv.cfg.TopicAliasMaximum+1)
		}
		if len(p.Topic) > 0 {
			r.aliasIn[a] = append(r.aliasIn[a][:0], p.Topic...)
		} else if r.aliasIn[a] == nil {
			return &codec.Error{Code: codec.ProtocolError, Msg: "topic alias " + strconv.Itoa(a) + " was never set"}
		} else {
			p.Topic = r.aliasIn[a]
		}
	}
	if err := codec.ValidateTopicName(p.Topic); err != nil {
		return err
	}
	if why := c.srv.topicOverLimit(p.Topic); why != "" {
		return c.refuseTopic(ob, p, why)
	}
	if !c.mayPublish(p.Topic) {
		return c.denyPublish(ob, p)
	}
	if v5 && p.Props.Has(codec.PropPayloadFormat) && p.Props.PayloadFormat == 1 && !validUTF8(p.Payload) {
		// The payload must be UTF-8 as the indicator says [MQTT-3.3.2-4].
		if p.QoS == 0 {
			return &codec.Error{Code: codec.PayloadFormatInvalid, Rule: "MQTT-3.3.2-4", Msg: "payload is not valid UTF-8"}
		}
		c.srv.stats.protocolErrors.Add(1)
		c.logger().Info("publish refused", "topic", string(p.Topic), "reason", "payload is not valid UTF-8")
		return c.ackPublish(ob, p, -1, codec.PayloadFormatInvalid)
	}

	if p.QoS > 0 && c.superseded() {
		// Read after the session went to another connection (a takeover
		// here or by a peer, the kick still on its way): the client sends
		// it again there, and taken here too it would be delivered twice.
		c.logger().Info("closing connection", "reason", "its session was taken over; dropping a publish read after")
		return errClose
	}
	if p.QoS > 0 {
		if err := c.srv.storeUnhealthy(); err != nil {
			// Nothing is accepted that could not be kept.
			c.srv.stats.storeRefused.Add(1)
			c.srv.logThrottled("refusing QoS 1/2 publishes: the store cannot write", "err", err)
			if !v5 {
				return &codec.Error{Code: codec.QuotaExceeded, Msg: "the broker cannot store messages now: " + err.Error()}
			}
			return c.ackPublish(ob, p, -1, codec.QuotaExceeded)
		}
		if cfg := c.srv.limits(); cfg.QueueFullPolicy == QueueFullRefuse && cfg.MaxQueuedBytesTotal > 0 &&
			c.srv.queuedBytes.Load() >= cfg.MaxQueuedBytesTotal {
			// The node's queues are full: nothing more is taken on that
			// they might have to hold.
			c.srv.stats.refusedBudget.Add(1)
			c.srv.logThrottled("refusing QoS 1/2 publishes: the session queues hold --max-queued-bytes-total")
			if !v5 {
				return &codec.Error{Code: codec.QuotaExceeded, Msg: "the broker's queues are full"}
			}
			return c.ackPublish(ob, p, -1, codec.QuotaExceeded)
		}
	}

	switch p.QoS {
	case 0:
		c.publish(ob, p)
		return nil
	case 1:
		// The acknowledgement's place comes before the copy that a
		// publisher subscribed to its own topic gets.
		slot := c.reserve(ob)
		return c.ackRouted(ob, p, slot, c.publish(ob, p))
	default:
		c.sess.mu.Lock()
		_, seen := c.sess.mu.rxQoS2[p.PacketID]
		if !seen && len(c.sess.mu.rxQoS2) >= c.srv.cfg.ReceiveMaximum {
			c.sess.mu.Unlock()
			// [MQTT-3.3.4-9]
			return &codec.Error{Code: codec.ReceiveMaximumExceeded, Rule: "MQTT-3.3.4-9",
				Msg: "more unacknowledged QoS 2 publishes than the receive maximum"}
		}
		if !seen {
			c.sess.addRxQoS2Locked(p.PacketID)
			if c.sess.persistentLocked() {
				ob.batch.PutInbound(c.sess.id, p.PacketID)
			}
		}
		c.sess.mu.Unlock()
		if !seen {
			// Deliver once; a resent PUBLISH with the same id is only
			// acknowledged again [MQTT-4.3.3-10].
			slot := c.reserve(ob)
			return c.ackRouted(ob, p, slot, c.publish(ob, p))
		}
		return c.ackPublish(ob, p, -1, codec.Success)
	}
}

// superseded reports whether c's session belongs to another connection
// now, or to none (it moved to a peer).
func (c *client) superseded() bool {
	c.sess.mu.Lock()
	defer c.sess.mu.Unlock()
	return c.sess.mu.cl != c
}

// publish copies p into a message, stores it when retained and routes it.
// It reports false when a QoS 1/2 message could not be queued for every
// cluster peer that should have it; it is then delivered nowhere
// (publishOrRefuse).
func (c *client) publish(ob *outbox, p *codec.Publish) bool {
	var m *message
	if p.QoS == 0 && !p.Retain {
		m = ob.borrow(p, c.id, c.srv.now())
	} else {
		m = newMessage(p, c.id, c.srv.now())
	}
	c.srv.stats.msgsIn.Add(1)
	ob.last = nil
	n, ok := c.srv.publishOrRefuse(ob, m)
	if ob.sampleAt != 0 && ob.last != nil {
		ob.sampleDelivery()
	}
	if n == 0 && ok {
		c.srv.stats.noSubscribers.Add(1)
	}
	return ok
}

// ackRouted acknowledges a QoS 1/2 publish after routing: Success, or, when
// a peer's queue could not take it and it was delivered nowhere, 0x97 in
// MQTT 5 (the client may resend) and a close in 3.x (the client resends
// after reconnecting).
// The acknowledgement goes in slot (see reserve).
func (c *client) ackRouted(ob *outbox, p *codec.Publish, slot int, ok bool) error {
	if ok {
		return c.ackPublish(ob, p, slot, codec.Success)
	}
	if c.version != codec.V5 {
		c.pend[slot] = []byte{}
		return &codec.Error{Code: codec.QuotaExceeded, Msg: "a cluster peer's queue is full"}
	}
	return c.ackPublish(ob, p, slot, codec.QuotaExceeded)
}

// reserve gives an acknowledgement that is decided later a place in c's
// pending bytes now, so that it is written before anything queued for c
// in between, and returns the place for queueAck.
func (c *client) reserve(ob *outbox) int {
	slot := len(c.pend)
	c.pend = append(c.pend, []byte{})
	if !c.dirty {
		c.dirty = true
		ob.local = append(ob.local, c)
	}
	return slot
}

// ackPublish answers a QoS 1/2 PUBLISH with PUBACK or PUBREC, in slot
// when it is not negative (reserve).
func (c *client) ackPublish(ob *outbox, p *codec.Publish, slot int, code codec.ReasonCode) error {
	if p.QoS == 0 {
		return nil
	}
	kind := codec.PUBACK
	if p.QoS == 2 {
		kind = codec.PUBREC
		if code.IsError() {
			c.sess.mu.Lock()
			if _, ok := c.sess.mu.rxQoS2[p.PacketID]; ok {
				delete(c.sess.mu.rxQoS2, p.PacketID)
				if c.sess.persistentLocked() {
					ob.batch.DeleteInbound(c.sess.id, p.PacketID)
				}
			}
			c.sess.mu.Unlock()
		}
	}
	c.queueAck(ob, slot, kind, p.PacketID, code)
	return nil
}

// handleAck processes PUBACK, PUBREC, PUBREL and PUBCOMP.
func (c *client) handleAck(ob *outbox, a *codec.Ack) error {
	sess := c.sess
	now := c.srv.now()
	switch a.Kind {
	case codec.PUBREL:
		// Inbound QoS 2, step 2: forget the id, answer PUBCOMP
		// [MQTT-4.3.3-11]. An unknown id gets 0x92 in v5.
		sess.mu.Lock()
		_, ok := sess.mu.rxQoS2[a.PacketID]
		if ok && sess.persistentLocked() {
			if err := c.srv.storeUnhealthy(); err != nil {
				// The store could not forget the id: neither does
				// memory, and the client sends PUBREL again after it
				// reconnects (durable.go, releaseAck).
				sess.mu.Unlock()
				c.srv.stats.storeRefused.Add(1)
				return &codec.Error{Code: codec.QuotaExceeded, Msg: "cannot store the end of a QoS 2 exchange: " + err.Error()}
			}
		}
		if ok {
			delete(sess.mu.rxQoS2, a.PacketID)
			if sess.persistentLocked() {
				ob.batch.DeleteInbound(sess.id, a.PacketID)
			}
		}
		sess.mu.Unlock()
		code := codec.Success
		if !ok {
			code = codec.PacketIdentifierNotFound
		}
		c.queueAck(ob, -1, codec.PUBCOMP, a.PacketID, code)
		return nil
	case codec.PUBACK, codec.PUBCOMP:
		sess.mu.Lock()
		m := sess.mu.inflight[a.PacketID]
		want := byte(1)
		if a.Kind == codec.PUBCOMP {
			want = 2
		}
		if m != nil && m.qos == want && (want == 1 || m.released) {
			if sess.mu.queue.len() > 0 {
				c.ready() // the window was full: what it frees goes at once
			}
			delete(sess.mu.inflight, a.PacketID)
			sess.forgetLocked(ob, m)
			sess.pumpLocked(ob, now)
		}
		sess.mu.Unlock()
		if m == nil {
			c.logger().Debug("acknowledgement for unknown packet id", "type", a.Kind.String(), "id", a.PacketID)
		} else if c.retainQ != nil {
			c.pumpRetained(ob) // the window has room again
		}
		return nil
	case codec.PUBREC:
		sess.mu.Lock()
		m := sess.mu.inflight[a.PacketID]
		rel, code := false, codec.Success
		switch {
		case m == nil:
			rel, code = c.version == codec.V5, codec.PacketIdentifierNotFound
		case m.qos != 2:
			sess.mu.Unlock()
			return &codec.Error{Code: codec.ProtocolError, Msg: "PUBREC for a QoS 1 message"}
		case a.Code.IsError():
			// The receiver refused it: the flow ends here [MQTT-4.3.3-4].
			delete(sess.mu.inflight, a.PacketID)
			sess.forgetLocked(ob, m)
			sess.pumpLocked(ob, now)
		default:
			if !m.released {
				m.released = true
				if m.stored {
					sess.storeEntryLocked(ob, m)
				}
			}
			rel = true
		}
		sess.mu.Unlock()
		if rel {
			// Held until the record of the PUBREC is written: sent
			// before, a crash would have the restarted broker send the
			// PUBLISH again to a client that completed the exchange.
			c.queueAck(ob, -1, codec.PUBREL, a.PacketID, code)
		}
		return nil
	}
	return nil
}

// queueAck queues an acknowledgement for this client, encoded into the
// client's arena (reused after each flush), in slot when it is not
// negative (reserve), else after what is pending. It runs on the client's
// loop.
func (c *client) queueAck(ob *outbox, slot int, kind codec.Type, pid uint16, code codec.ReasonCode) {
	if ob.holds(c) {
		ob.hold(heldAck{c: c, slot: slot, kind: kind, pid: pid, code: code, at: ob.ackFrom(c, kind)})
		return
	}
	if at := ob.ackFrom(c, kind); at != 0 {
		since(c.srv.stats.lat.ack, at, monotime())
	}
	a := codec.Ack{Kind: kind, PacketID: pid}
	if c.version == codec.V5 {
		a.Code = code
	}
	start := len(c.arena)
	c.arena = a.Append(c.arena, c.version)
	pkt := c.arena[start:len(c.arena):len(c.arena)]
	if slot >= 0 {
		c.pend[slot] = pkt
		return
	}
	ob.add(c, pkt)
}

func validUTF8(b []byte) bool { return utf8.Valid(b) }
