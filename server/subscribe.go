package server

import (
	"bytes"
	"slices"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

// handleSubscribe adds each filter to the index and answers with one reason
// code per filter [MQTT-3.8.4-6], then sends the retained messages the new
// subscriptions ask for.
func (c *client) handleSubscribe(ob *outbox, p *codec.Subscribe) error {
	v5 := c.version == codec.V5
	var subID uint32
	if len(p.Props.SubscriptionIDs) > 0 {
		subID = p.Props.SubscriptionIDs[0]
	}
	ack := codec.Suback{PacketID: p.PacketID, Codes: make([]codec.ReasonCode, len(p.Subs))}
	type retainReq struct {
		filter []byte
		opts   fanout.Options
	}
	var wantRetained []retainReq
	if c.sess.persistent() && c.srv.storeUnhealthy() != nil {
		// Nothing is promised that could not be kept.
		c.srv.stats.storeRefused.Add(1)
		for i := range ack.Codes {
			ack.Codes[i] = failCode(v5, codec.QuotaExceeded)
		}
		c.sendAck(ob, ack.Append(nil, c.version), nil)
		return nil
	}
	// What this SUBSCRIBE changed, to be undone if the store cannot keep
	// it.
	type change struct {
		filter string
		had    bool
		prev   fanout.Options
	}
	var changes []change
	// A filter listed more than once is one subscription, with the
	// options of its last listing [MQTT-3.8.4-3]: it is processed once,
	// where it is first listed (so that limits fall as they would
	// listing by listing), with the last listing's options, and the other
	// listings get the code each would have got. A SUBSCRIBE of 100,000
	// copies of # costs the loop one subscription and not 100,000.
	firstOf, lastOf := repeatedListings(p.Subs)
	for i, sub := range p.Subs {
		if firstOf != nil {
			if firstOf[i] != i {
				continue
			}
			sub.QoS, sub.NoLocal, sub.RetainAsPublished, sub.RetainHandling = p.Subs[lastOf[i]].QoS,
				p.Subs[lastOf[i]].NoLocal, p.Subs[lastOf[i]].RetainAsPublished, p.Subs[lastOf[i]].RetainHandling
		}
		if err := codec.ValidateTopicFilter(sub.Filter); err != nil {
			c.logger().Info("subscription refused", "filter", string(sub.Filter), "err", err)
			ack.Codes[i] = failCode(v5, codec.TopicFilterInvalid)
			continue
		}
		if why := c.srv.topicOverLimit(sub.Filter); why != "" {
			c.srv.adm.subTopicRefused.Inc()
			c.logger().Info("subscription refused", "filter", clip(sub.Filter), "reason", why)
			ack.Codes[i] = failCode(v5, codec.TopicFilterInvalid)
			continue
		}
		filter := string(sub.Filter)
		c.sess.mu.Lock()
		prev, had := c.sess.mu.subs[filter]
		held := len(c.sess.mu.subs)
		c.sess.mu.Unlock()
		if max := c.srv.limits().MaxSubscriptions; max > 0 && !had && held >= max {
			c.srv.adm.subMaxRefused.Inc()
			c.logger().Info("subscription refused", "filter", clip(sub.Filter), "reason", "the session has --max-subscriptions")
			ack.Codes[i] = failCode(v5, codec.QuotaExceeded)
			continue
		}
		access := c.subscribeAccess(sub.Filter)
		if access == auth.SubDenied {
			c.srv.stats.subscribeDenied.Inc()
			c.srv.logThrottled("subscription denied", "client", c.id, "filter", string(sub.Filter))
			if v5 {
				ack.Codes[i] = codec.NotAuthorized
			} else {
				ack.Codes[i] = codec.V3SubackFailure
			}
			continue
		}
		opts := fanout.Options{QoS: sub.QoS, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, SubID: subID,
			Check: access == auth.SubPartial}
		added, err := c.srv.subscribe(filter, c.sess, opts)
		if err != nil {
			c.logger().Info("subscription refused", "filter", filter, "err", err)
			ack.Codes[i] = failCode(v5, codec.TopicFilterInvalid)
			continue
		}
		changes = append(changes, change{filter, had, prev})
		ack.Codes[i] = codec.ReasonCode(sub.QoS) // granted QoS 0, 1 or 2
		// Retained messages: never for shared subscriptions (MQTT 5, 4.8.2),
		// and by retain handling otherwise [MQTT-3.3.1-9, -10, -11].
		if _, _, shared := codec.SplitShared(sub.Filter); shared {
			continue
		}
		if sub.RetainHandling == 0 || (sub.RetainHandling == 1 && added) {
			// A filter listed twice in one SUBSCRIBE gets the retained
			// messages once, with the options of its last listing.
			if j := slices.IndexFunc(wantRetained, func(r retainReq) bool { return string(r.filter) == filter }); j >= 0 {
				wantRetained[j].opts = opts
				continue
			}
			wantRetained = append(wantRetained, retainReq{sub.Filter, opts})
		}
	}
	for i, j := range firstOf {
		switch code := ack.Codes[j]; {
		case code < 0x80: // granted: at the QoS this listing asked for
			ack.Codes[i] = codec.ReasonCode(p.Subs[i].QoS)
		default:
			ack.Codes[i] = code
		}
	}
	c.sess.mu.Lock()
	c.sess.saveLocked(ob, 0)
	c.sess.mu.Unlock()
	c.sendAck(ob, ack.Append(nil, c.version), func() []byte {
		// The store did not keep the new subscriptions: memory gives
		// them up too, and the client is told each failed. (Retained
		// messages they matched may already be queued behind the
		// SUBACK.)
		for i := len(changes) - 1; i >= 0; i-- {
			ch := changes[i]
			if ch.had {
				_, _ = c.srv.subscribe(ch.filter, c.sess, ch.prev)
				continue
			}
			c.sess.mu.Lock()
			delete(c.sess.mu.subs, ch.filter)
			c.sess.mu.Unlock()
			c.srv.unsubscribe(ch.filter, c.sess)
		}
		for i, code := range ack.Codes {
			if !code.IsError() {
				ack.Codes[i] = failCode(v5, codec.QuotaExceeded)
			}
		}
		return ack.Append(nil, c.version)
	})
	for _, rr := range wantRetained {
		c.queueRetained(rr.filter, rr.opts) // paced (retainpace.go)
	}
	if len(wantRetained) > 0 && c.srv.retained.len() <= retainMatchNow {
		c.pumpRetained(ob) // cheap enough to start now
	}
	return nil
}

// repeatedListings returns, for each listing, the index of the first and
// of the last listing of the same filter; nil when no filter is listed
// twice.
func repeatedListings(subs []codec.Subscription) (first, last []int) {
	if len(subs) < 2 {
		return nil, nil
	}
	seen := make(map[string]int, min(len(subs), 64))
	for i, sub := range subs {
		if i > 0 && bytes.Equal(sub.Filter, subs[i-1].Filter) {
			// The same as the one before: no lookup (a SUBSCRIBE of
			// one filter many times over).
			if first == nil {
				first, last = make([]int, len(subs)), make([]int, len(subs))
				for k := range first {
					first[k], last[k] = k, k
				}
			}
			first[i] = first[i-1]
			continue
		}
		j, ok := seen[string(sub.Filter)]
		if !ok {
			seen[string(sub.Filter)] = i
			continue
		}
		if first == nil {
			first, last = make([]int, len(subs)), make([]int, len(subs))
			for k := range first {
				first[k], last[k] = k, k
			}
		}
		first[i] = j
	}
	if first == nil {
		return nil, nil
	}
	for i := len(subs) - 1; i >= 0; i-- {
		if j := first[i]; j != i && last[j] == j {
			last[j] = i
		}
	}
	return first, last
}

// failCode is the SUBACK code for a refused filter: the v5 reason, or 0x80
// in 3.x.
func failCode(v5 bool, code codec.ReasonCode) codec.ReasonCode {
	if v5 {
		return code
	}
	return codec.V3SubackFailure
}

// subscribe records a subscription in the index and in the session. added
// reports that the session had no subscription with this filter before.
func (s *Server) subscribe(filter string, sess *session, opts fanout.Options) (added bool, err error) {
	added, _, err = s.subs.Subscribe(filter, sess, opts)
	if err != nil {
		return false, err
	}
	if added && s.cl != nil {
		s.cl.announce(filter, 1, sess.routeDurable())
	}
	sess.mu.Lock()
	if sess.mu.ended {
		sess.mu.Unlock()
		s.unsubscribe(filter, sess)
		return added, nil
	}
	sess.setSubLocked(filter, opts)
	sess.mu.Unlock()
	return added, nil
}

// unsubscribe removes a subscription from the index. It reports whether it
// existed.
func (s *Server) unsubscribe(filter string, sess *session) bool {
	removed, _, _ := s.subs.Unsubscribe(filter, sess)
	if removed && s.cl != nil {
		s.cl.announce(filter, -1, sess.routeDurable())
	}
	return removed
}

// handleUnsubscribe removes each filter and answers with a code per filter
// (v5) [MQTT-3.10.4-5].
func (c *client) handleUnsubscribe(ob *outbox, p *codec.Unsubscribe) error {
	ack := codec.Unsuback{PacketID: p.PacketID}
	if c.version == codec.V5 {
		ack.Codes = make([]codec.ReasonCode, len(p.Filters))
	}
	if c.sess.persistent() {
		if err := c.srv.storeUnhealthy(); err != nil {
			c.srv.stats.storeRefused.Add(1)
			if ack.Codes == nil {
				return &codec.Error{Code: codec.QuotaExceeded, Msg: "cannot store the subscription change: " + err.Error()}
			}
			for i := range ack.Codes {
				ack.Codes[i] = codec.UnspecifiedError
			}
			c.sendAck(ob, ack.Append(nil, c.version), nil)
			return nil
		}
	}
	type removal struct {
		filter string
		opts   fanout.Options
	}
	var removals []removal // to be undone if the store cannot keep them
	for i, f := range p.Filters {
		filter := string(f)
		c.sess.mu.Lock()
		opts, had := c.sess.mu.subs[filter]
		delete(c.sess.mu.subs, filter)
		c.sess.mu.Unlock()
		if had {
			removals = append(removals, removal{filter, opts})
		}
		removed := c.srv.unsubscribe(filter, c.sess)
		if ack.Codes != nil {
			switch {
			case codec.ValidateTopicFilter(f) != nil:
				ack.Codes[i] = codec.TopicFilterInvalid
			case had || removed:
				ack.Codes[i] = codec.Success
			default:
				ack.Codes[i] = codec.NoSubscriptionExisted
			}
		}
	}
	c.sess.mu.Lock()
	c.sess.saveLocked(ob, 0)
	c.sess.mu.Unlock()
	c.sendAck(ob, ack.Append(nil, c.version), func() []byte {
		// The store did not keep the removals: the subscriptions stay.
		for _, r := range removals {
			_, _ = c.srv.subscribe(r.filter, c.sess, r.opts)
		}
		if ack.Codes == nil {
			return nil // MQTT 3 cannot be told: the connection closes
		}
		for i, code := range ack.Codes {
			if code == codec.Success {
				ack.Codes[i] = codec.UnspecifiedError
			}
		}
		return ack.Append(nil, c.version)
	})
	return nil
}

// sendAck queues a SUBACK or UNSUBACK, after the subscription change is
// durable when the session is persistent. When the commit fails, failed
// undoes the change and gives the answer to send instead (heldAck).
func (c *client) sendAck(ob *outbox, pkt []byte, failed func() []byte) {
	if ob.holds(c) {
		ob.hold(heldAck{c: c, slot: -1, pkt: pkt, failed: failed})
		return
	}
	ob.add(c, pkt)
}

// deliverStored delivers one message encoded for this session alone (a
// retained message on subscribe), queued behind what already waits.
func (ss *session) deliverStored(ob *outbox, m *message, qos byte, retain bool, subIDs []uint32, now int64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	cl := ss.mu.cl
	if cl == nil || ss.mu.ended {
		return
	}
	if qos == 0 {
		om := &outMsg{msg: m, qos: qos, retain: retain, subIDs: subIDs}
		if fr, ok := cl.encodeStored(om, now); ok {
			ob.addParts(cl, fr, nil, nil)
		}
		return
	}
	// A retained message is shared by every subscriber that gets it, on
	// any loop; a persistent queue needs a body of its own, so it gets a
	// message of its own (the bytes stay shared).
	om := ss.newOutMsgLocked(m.clone(), qos, retain, subIDs)
	if ss.mustQueueLocked(ob) {
		ss.enqueueLocked(ob, om)
		return
	}
	ss.sendLocked(ob, om, now)
}
