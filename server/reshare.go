package server

import (
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/trie"
)

// A message that reached a session through a shared subscription
// ($share/name/filter) is the group's, not only the member's: when the
// member's session ends (a clean session disconnects, is taken over with
// Clean Start, or expires) with such messages queued or in flight and not
// yet received, each goes to another member of the group [MQTT-4.8.2-6
// says the server SHOULD], on this node or, through the interlink, on a
// peer that has one. A QoS 1 message the member received without
// acknowledging it may so arrive twice, once at each member, as QoS 1
// allows; a QoS 2 message whose PUBREC came is the member's and stays
// there. Without another member the message is dropped and counted
// (reason "no_share_member").

// shareOf returns a shared group of ss that matches topic, or nil: the
// group a message loaded from the store came through (the store does not
// record it; a message that a plain subscription also matched was one
// delivery for both, and the group's copy all the same).
func (s *Server) shareOf(ss *session, topic []byte) *trie.Group[*session, fanout.Options] {
	var share *trie.Group[*session, fanout.Options]
	s.subs.Match(topic, func(*session, fanout.Options) {}, func(g *trie.Group[*session, fanout.Options]) {
		for i := 0; share == nil && i < g.Len(); i++ {
			if member, _ := g.At(i); member == ss {
				share = g
			}
		}
	})
	return share
}

// sharedLeftLocked returns the messages of shared subscriptions that the
// session has not finished, in delivery order: in flight (a QoS 2
// message only until its PUBREC) and queued.
// REQUIRES: ss.mu held.
func (ss *session) sharedLeftLocked() []*outMsg {
	var left []*outMsg
	for _, om := range ss.inflightLocked() {
		if om.share != nil && !om.released {
			left = append(left, om)
		}
	}
	for _, om := range ss.mu.queue.items[ss.mu.queue.head:] {
		if om.share != nil {
			left = append(left, om)
		}
	}
	return left
}

// reshare hands each of the messages that the ended session left to
// another member of its group.
func (s *Server) reshare(ob *outbox, left *session, msgs []*outMsg) {
	if len(msgs) == 0 {
		return
	}
	now := s.now()
	for _, om := range msgs {
		m := om.msg
		if m.expired(now) {
			s.stats.droppedExpired.Add(1)
			continue
		}
		name, filter := om.share.Name, om.share.Filter
		var (
			to    *session
			opts  fanout.Options
			group *trie.Group[*session, fanout.Options]
		)
		s.subs.Match(m.topic, func(*session, fanout.Options) {}, func(g *trie.Group[*session, fanout.Options]) {
			if to != nil || g.Name != name || g.Filter != filter {
				return
			}
			if ss, o, ok := s.pickShared(g, m, left); ok && ss.mayRead(o, m.topic) {
				to, opts, group = ss, o, g
			}
		})
		switch {
		case to != nil:
			var mg fanout.Merged
			mg.Add(opts)
			qos, retain := mg.Deliver(m.qos, m.retain, false)
			// deliver frames from the outbox's encoder: set it to this
			// message, as route does.
			m.template(&ob.tmpl, now)
			ob.enc.Reset(&ob.tmpl)
			to.deliver(ob, m, qos, retain, mg.SubIDs, now, group)
			s.stats.reshared.Inc()
		case s.cl != nil && s.cl.reshare(ob, m, name, filter):
			s.stats.reshared.Inc()
		default:
			s.stats.droppedNoMember.Inc()
			s.logThrottled("dropping a shared subscription's message: its member left and the group has no other",
				"group", "$share/"+name+"/"+filter, "client", left.id)
		}
	}
}
