package server

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/trie"
)

// movedSession is a session on its way from one node to another: what a
// takeover moves.
type movedSession struct {
	id     string
	since  int64 // when its last connection began (broker clock)
	online bool
	expiry time.Duration
	subs   map[string]fanout.Options
	msgs   []movedMsg // inflight first, then queued, in delivery order
	rx     []uint16   // inbound QoS 2 ids awaiting PUBREL
	owner  string     // the user the session belongs to (auth.go)
	// before is how far the node it left had sent to this one
	// (origin.go); nil: not said.
	before []interlink.PeerPosition
}

type movedMsg struct {
	msg      *message
	qos      byte
	retain   bool
	subIDs   []uint32
	pid      uint16 // inflight when non-zero
	released bool
	// late marks a message that reached a restored session after its
	// node restarted: the client's session elsewhere had the same route
	// to it (stale.go).
	late bool
}

// handOver removes sess from this node for good: its connection is told
// 0x8E and closed, no will is sent, its subscriptions and stored state go.
// It returns what the session held, or nil if it had already ended.
func (s *Server) handOver(ob *outbox, sess *session) *movedSession {
	return s.handOverTo(ob, sess, "", nil)
}

// movedGrace is how long a session that moved to a peer keeps its
// subscriptions here, sending on what was already on its way to this node.
const movedGrace = 10 * time.Second

// handOverTo is handOver for a session moving to peer (empty: going
// nowhere). When answer is not nil it is given what the session holds
// (nil if it had ended) before anything changes, with the session locked
// so that nothing more reaches it meanwhile; when it reports false (the
// state could not be sent on) the session stays as it was.
func (s *Server) handOverTo(ob *outbox, sess *session, peer string, answer func(*movedSession) bool) *movedSession {
	sess.mu.Lock()
	if sess.mu.ended {
		sess.mu.Unlock()
		s.forgetSession(sess)
		if answer != nil {
			answer(nil)
		}
		return nil
	}
	cl := sess.mu.cl
	mv := &movedSession{id: sess.id, since: sess.mu.since, online: cl != nil, expiry: sess.mu.expiry, subs: sess.mu.subs,
		owner: sess.mu.owner}
	// A copy's messages routed after the restart, or after the client
	// left a session made while a peer was away (away.go), may have
	// reached the client's other session too.
	stale := sess.mu.restored || s.cl != nil && cl == nil && s.cl.away.has(sess)
	for _, om := range append(sess.inflightLocked(), sess.mu.queue.items[sess.mu.queue.head:]...) {
		mv.msgs = append(mv.msgs, movedMsg{msg: om.msg, qos: om.qos, retain: om.retain, subIDs: om.subIDs,
			pid: om.pid, released: om.released, late: stale && om.seq > sess.mu.restoredSeq})
	}
	for pid := range sess.mu.rxQoS2 {
		mv.rx = append(mv.rx, pid)
	}
	if answer != nil && !answer(mv) {
		sess.mu.Unlock()
		return nil
	}
	s.forgetSession(sess) // Server.sessions is taken last (doc.go)
	_, will := sess.endLocked(ob)
	sess.mu.cl = nil
	sess.mu.gen++
	sess.mu.movedTo = peer
	sess.mu.Unlock()

	if will != nil {
		will.cancel(ob) // a takeover sends no will
	}
	unsub := func() {
		for f := range mv.subs {
			s.unsubscribe(f, sess)
		}
	}
	if peer == "" {
		unsub()
	} else {
		time.AfterFunc(movedGrace, unsub)
	}
	if cl != nil {
		cl.kick(codec.SessionTakenOver)
	}
	return mv
}

// keepMoved takes in a moved session that arrived when no connection
// waits for it any more (the CONNECT that asked gave up waiting, or its
// connection closed). With no session of its id here it is installed,
// offline, for the client's next connection. With one (the client
// connected meanwhile and was told no session was present) it must not
// replace it, which would cut off the connection there now: its queued
// messages and the subscriptions the current session lacks are merged
// into it instead, unless the client started clean. The client discarded
// its state when told no session was present, so QoS 1/2 messages that
// were in flight are sent again as new (at least once); those it had
// received (QoS 2 past PUBREC) and the QoS 2 ids it was sending are
// dropped, as a new exchange may reuse those ids.
func (s *Server) keepMoved(ob *outbox, mv *movedSession) {
	s.sessions.Lock()
	cur := s.sessions.m[mv.id]
	s.sessions.Unlock()
	if cur == nil {
		s.install(ob, mv)
		return
	}
	cur.mu.Lock()
	if cur.mu.ended {
		cur.mu.Unlock()
		s.install(ob, mv)
		return
	}
	if cur.mu.expiry == 0 {
		cur.mu.Unlock()
		s.log.Info("dropping a session that arrived after its client started a clean one", "client", mv.id)
		return
	}
	var seen *trie.Trie[struct{}, struct{}] // cur's subscriptions, for late messages
	now := s.now()
	young := cur.youngLocked(now)
	since := s.subsSinceLocked(cur)
	if young && mv.before != nil {
		cur.mu.recent.before = append(cur.mu.recent.before, mv.before...)
	}
	kept := 0
	for _, mm := range mv.msgs {
		if mm.released {
			continue
		}
		if young || !mm.late {
			// cur remembers what it was given (origin.go).
			if !cur.firstLocked(ob, mm.msg, now) {
				continue
			}
		} else if routedAfter(mm.msg, since) {
			// An older cur had its subscriptions when the late message
			// was routed: it reached cur too when they match it.
			if seen == nil {
				seen = trie.New[struct{}, struct{}]()
				for f := range cur.mu.subs {
					_, _, _ = seen.Subscribe(f, struct{}{}, struct{}{})
				}
			}
			if matches(seen, mm.msg.topic) {
				continue
			}
		}
		om := cur.newOutMsgLocked(mm.msg, mm.qos, mm.retain, mm.subIDs)
		cur.mu.queue.push(om)
		cur.storeEntryLocked(ob, om)
		ob.track(cur, om)
		kept++
	}
	type sub struct {
		filter string
		opts   fanout.Options
	}
	var add []sub
	for f, o := range mv.subs {
		if _, has := cur.mu.subs[f]; !has {
			add = append(add, sub{f, o})
		}
	}
	cur.pumpLocked(ob, now)
	cur.mu.Unlock()
	for _, a := range add {
		if _, err := s.subscribe(a.filter, cur, a.opts); err != nil {
			s.log.Warn("cannot restore a moved subscription", "client", mv.id, "filter", a.filter, "err", err)
		}
	}
	s.log.Info("merged a session that arrived late into the client's current one", "client", mv.id,
		"messages", len(mv.msgs), "kept", kept, "subscriptions", len(add))
}

// install makes a moved session this node's, offline, replacing any local
// session with its id; the connection that asked for it attaches next. A
// local session is a copy the client left here: restored from the store
// and not attached since, or kept while this node was cut off or paused
// and its client made a session elsewhere, which publishers' nodes went
// on routing to. What it holds may have reached it alone, so it is
// merged into the one that arrived (keepMoved). A local session that its
// client attached to after the one that arrived is the client's: it
// stays, and the older one is merged into it.
func (s *Server) install(ob *outbox, mv *movedSession) {
	s.sessions.Lock()
	old := s.sessions.m[mv.id]
	s.sessions.Unlock()
	if old != nil {
		old.mu.Lock()
		newer := !old.mu.ended && old.mu.since > mv.since
		old.mu.Unlock()
		if newer {
			s.keepMoved(ob, mv)
			return
		}
	}
	s.sessions.Lock()
	old = s.sessions.m[mv.id]
	sess := newSession(s, mv.id)
	s.sessions.m[mv.id] = sess
	s.sessions.Unlock()
	var left *movedSession
	if old != nil {
		left = s.handOver(ob, old)
		s.sessions.Lock()
		s.sessions.m[mv.id] = sess
		s.sessions.Unlock()
	}
	if left != nil {
		defer s.keepMoved(ob, left) // once the session that arrived is in
	}

	sess.mu.Lock()
	sess.mu.expiry = mv.expiry
	sess.mu.since = mv.since
	sess.mu.owner = mv.owner
	if r := sess.mu.recent; r != nil {
		r.before = append(r.before, mv.before...)
	}
	s.observe(mv.since)
	for _, pid := range mv.rx {
		sess.addRxQoS2Locked(pid)
	}
	now := s.now()
	sess.saveLocked(ob, now)
	for _, mm := range mv.msgs {
		sess.firstLocked(ob, mm.msg, now) // remembered: it may come again by another way
		om := sess.newOutMsgLocked(mm.msg, mm.qos, mm.retain, mm.subIDs)
		if mm.pid != 0 {
			om.pid, om.released = mm.pid, mm.released
			binary.BigEndian.PutUint16(om.idb[:], om.pid)
			sess.setInflightLocked(om)
			sess.mu.nextID = max(sess.mu.nextID, om.pid)
		} else {
			sess.mu.queue.push(om)
		}
		sess.storeEntryLocked(ob, om)
		ob.track(sess, om)
	}
	if sess.persistentLocked() {
		for _, pid := range mv.rx {
			ob.batch.PutInbound(sess.id, pid)
		}
	}
	sess.mu.Unlock()
	for f, o := range mv.subs {
		if _, err := s.subscribe(f, sess, o); err != nil {
			s.log.Warn("cannot restore a moved subscription", "client", mv.id, "filter", f, "err", err)
		}
	}
}

// A moved session on the wire (recSession body after the request id and
// the present flag):
//
//	client id str | since uvarint | online u8 | expiry seconds uvarint |
//	subs: uvarint n, n × (filter str, options u8, subscription id uvarint) |
//	msgs: uvarint n, n × (flags u8, [pid u16], subids: uvarint n + n uvarint, message) |
//	rx:   uvarint n, n × pid u16 | owner str
//
// Subscription options: QoS in bits 0-1, no local 4, retain as published
// 8, read check 16.
//
// Message flags: QoS in bits 0-1, retain 4, released 8, inflight (pid
// follows) 16, late 32.

func appendMoved(dst []byte, mv *movedSession, now int64, routed bool) []byte {
	dst = appendStr(dst, []byte(mv.id))
	dst = binary.AppendUvarint(dst, uint64(mv.since))
	online := byte(0)
	if mv.online {
		online = 1
	}
	dst = append(dst, online)
	dst = binary.AppendUvarint(dst, uint64(mv.expiry/time.Second))
	dst = binary.AppendUvarint(dst, uint64(len(mv.subs)))
	for f, o := range mv.subs {
		dst = appendStr(dst, []byte(f))
		ob := o.QoS & 3
		if o.NoLocal {
			ob |= 4
		}
		if o.RetainAsPublished {
			ob |= 8
		}
		if o.Check {
			ob |= 16
		}
		dst = append(dst, ob)
		dst = binary.AppendUvarint(dst, uint64(o.SubID))
	}
	dst = binary.AppendUvarint(dst, uint64(len(mv.msgs)))
	for _, mm := range mv.msgs {
		fl := mm.qos & 3
		if mm.retain {
			fl |= 4
		}
		if mm.released {
			fl |= 8
		}
		if mm.pid != 0 {
			fl |= 16
		}
		if mm.late {
			fl |= 32
		}
		dst = append(dst, fl)
		if mm.pid != 0 {
			dst = binary.BigEndian.AppendUint16(dst, mm.pid)
		}
		dst = binary.AppendUvarint(dst, uint64(len(mm.subIDs)))
		for _, id := range mm.subIDs {
			dst = binary.AppendUvarint(dst, uint64(id))
		}
		dst = appendMessage(dst, mm.msg, now, routed)
	}
	dst = binary.AppendUvarint(dst, uint64(len(mv.rx)))
	for _, pid := range mv.rx {
		dst = binary.BigEndian.AppendUint16(dst, pid)
	}
	return appendStr(dst, []byte(mv.owner))
}

func decodeMoved(r *wireReader, now int64) (*movedSession, error) {
	mv := decodeMovedPart(r, now)
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return mv, r.err
}

// decodeMovedPart reads a moved session and leaves what follows in r.
func decodeMovedPart(r *wireReader, now int64) *movedSession {
	mv := &movedSession{subs: make(map[string]fanout.Options)}
	mv.id = string(r.str("client id"))
	mv.since = int64(r.uvarint("since"))
	mv.online = r.byte1("online") == 1
	mv.expiry = time.Duration(min(r.uvarint("expiry"), 0xFFFFFFFF)) * time.Second
	n := r.uvarint("subscriptions")
	for i := uint64(0); i < n && r.err == nil; i++ {
		f := string(r.str("filter"))
		ob := r.byte1("options")
		id := r.uvarint("subscription id")
		if codec.ValidateTopicFilter([]byte(f)) != nil || ob&3 == 3 || ob&^31 != 0 || id > 268_435_455 {
			r.fail("subscription")
			break
		}
		mv.subs[f] = fanout.Options{QoS: ob & 3, NoLocal: ob&4 != 0, RetainAsPublished: ob&8 != 0, SubID: uint32(id),
			Check: ob&16 != 0}
	}
	n = r.uvarint("messages")
	for i := uint64(0); i < n && r.err == nil; i++ {
		fl := r.byte1("message flags")
		mm := movedMsg{qos: fl & 3, retain: fl&4 != 0, released: fl&8 != 0, late: fl&32 != 0}
		if fl&16 != 0 {
			p := r.u16("packet id")
			mm.pid = p
			if p == 0 {
				r.fail("packet id")
			}
		}
		k := r.uvarint("subscription ids")
		if k > uint64(len(r.b)) {
			r.fail("subscription ids")
			break
		}
		for j := uint64(0); j < k; j++ {
			mm.subIDs = append(mm.subIDs, uint32(r.uvarint("subscription id")))
		}
		var m message
		if !readMessage(r, now, &m) {
			break
		}
		if mm.qos == 0 || mm.qos == 3 {
			r.fail("message QoS")
			break
		}
		mm.msg = m.own()
		mv.msgs = append(mv.msgs, mm)
	}
	n = r.uvarint("inbound ids")
	for i := uint64(0); i < n && r.err == nil; i++ {
		mv.rx = append(mv.rx, r.u16("inbound id"))
	}
	mv.owner = string(r.str("owner"))
	return mv
}

// u16 reads a big-endian uint16.
func (r *wireReader) u16(what string) uint16 {
	if len(r.b) < 2 {
		r.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

// deliverMoved delivers a message that reached this session through the
// node it left (hops: how many nodes sent it on): queued like any other
// delivery. A session that moved on from here meanwhile sends it on to
// where it went, a bounded number of times.
func (ss *session) deliverMoved(ob *outbox, m *message, qos byte, retain bool, subIDs []uint32, now int64, hops byte) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	cl := ss.mu.cl
	if ss.mu.ended {
		ss.sendOnLocked(ob, m, qos, retain, subIDs, now, hops+1)
		return
	}
	if (qos == 0 && cl == nil) || !ss.firstLocked(ob, m, now) {
		return
	}
	if qos == 0 {
		om := &outMsg{msg: m, retain: retain, subIDs: subIDs}
		if fr, ok := cl.encodeStored(om, now); ok {
			ob.addParts(cl, fr, nil, nil)
		}
		return
	}
	om := ss.newOutMsgLocked(m, qos, retain, subIDs)
	if ss.mustQueueLocked(ob) {
		ss.enqueueLocked(ob, om)
		return
	}
	ss.sendLocked(ob, om, now)
}

// connected tells peers that a client connected here, so that an older
// connection with the same id elsewhere (after a partition) goes.
func (cl *cluster) connected(id string, since int64) {
	cl.broadcast(recConnected, appendConnected(nil, id, since))
}

func appendConnected(dst []byte, id string, since int64) []byte {
	dst = binary.AppendUvarint(dst, uint64(since))
	return append(dst, id...)
}

// connectedElsewhere ends the local session of a client that connected
// on peer later: the newest connection wins (after a partition, both
// nodes had one), and what the session here holds goes to peer, merged
// into the session there (handStale). An offline session goes too: a copy
// left here while this node was paused or cut off, when its client found
// it silent and made a session there, which publishers' nodes went on
// routing to (peer says so again when the link comes back, PeerUp).
// Unless the client is connecting here meanwhile: its takeover brings the
// peer's session, and the copy is merged into it (install).
func (cl *cluster) connectedElsewhere(ob *outbox, peer string, b []byte) error {
	since, n := binary.Uvarint(b)
	if n <= 0 {
		return errWire
	}
	id := string(b[n:])
	s := cl.s
	s.observe(int64(since))
	s.sessions.Lock()
	sess := s.sessions.m[id]
	s.sessions.Unlock()
	if sess == nil {
		return nil
	}
	sess.mu.Lock()
	older := !sess.mu.ended && sess.mu.since < int64(since)
	online := sess.mu.cl != nil
	sess.mu.Unlock()
	switch {
	case !older:
	case online:
		s.log.Info("client connected on another node later; closing it here", "client", id, "peer", peer)
		cl.handStale(ob, sess, peer)
	case !cl.connecting(id):
		s.log.Info("client connected on another node later; its offline session here goes there", "client", id, "peer", peer)
		cl.handStale(ob, sess, peer)
	}
	return nil
}

// connecting reports whether a CONNECT of client waits here for peers to
// hand its session over.
func (cl *cluster) connecting(client string) bool {
	cl.reqs.Lock()
	defer cl.reqs.Unlock()
	return cl.reqs.byClient[client] != nil
}

// takeoverReq is a CONNECT waiting for peers to hand over its session.
type takeoverReq struct {
	id      uint64
	c       *client
	req     *connectReq
	waiting map[string]bool
	moved   *movedSession
	// older are the other copies peers handed over (two nodes held one,
	// after a partition or a restart), merged into moved's (keepMoved):
	// their nodes ended them, and what they hold is not lost.
	older   []*movedSession
	timer   *time.Timer
	refused bool // a peer holds the session for another user
	// abandoned: the peers did not answer in time; the request waits
	// for late answers (finishTakeover).
	abandoned bool
	// early is what the node the session left sent on (redirect) before
	// the session was installed here: delivered right after.
	early []earlyMsg
}

// earlyMsg is a delivery sent on by a session's old node before the
// session arrived.
type earlyMsg struct {
	m      *message
	qos    byte
	retain bool
	hops   byte
	subIDs []uint32
}

// takeover asks every linked peer to hand over c's session. It reports
// false when there is no one to ask.
func (cl *cluster) takeover(c *client, req *connectReq) bool {
	peers := cl.node.Peers()
	t := &takeoverReq{c: c, req: req, waiting: make(map[string]bool)}
	cl.reqs.Lock()
	cl.reqs.next++
	t.id = cl.reqs.next
	body := binary.AppendUvarint(nil, t.id)
	clean := byte(0)
	if req.cleanStart {
		clean = 1
	}
	body = append(body, clean)
	// Who asks: a peer hands the session only to its owner (auth.go).
	// Bit 4: the answer may carry the peer's send marks (origin.go); a
	// node that does not know the bit answers without them.
	who := byte(4)
	var user string
	if c.ident != nil {
		who, user = who|1, c.ident.user
		if c.ident.superuser {
			who |= 2
		}
	}
	body = append(body, who)
	body = appendStr(body, []byte(user))
	body = append(body, req.id...)
	for _, p := range peers {
		if cl.node.Linked(p) && cl.node.Send(p, 0, recTakeover, body, true) == nil {
			t.waiting[p] = true
		} else {
			req.partial = true
		}
	}
	if len(t.waiting) == 0 {
		cl.reqs.Unlock()
		return false
	}
	cl.reqs.m[t.id] = t
	cl.reqs.byClient[string(req.id)] = t
	wait := takeoverTimeout
	if d := cl.takeoverWait.Load(); d > 0 {
		wait = time.Duration(d) // a test's
	}
	t.timer = time.AfterFunc(wait, func() { cl.finishTakeover(t.id, true) })
	cl.reqs.Unlock()
	return true
}

// handOverTo answers a peer's takeover request: the session leaves this
// node (its connection gets DISCONNECT 0x8E, no will) and its state goes
// to the peer.
func (cl *cluster) handOverTo(ob *outbox, peer string, b []byte) error {
	r := &wireReader{b: b}
	id := r.uvarint("request id")
	clean := r.byte1("clean start")
	who := r.byte1("who")
	user := string(r.str("user"))
	if r.err != nil {
		return r.err
	}
	client := string(r.b)
	s := cl.s
	reply := binary.AppendUvarint(nil, id)
	if who&1 != 0 && !s.mayOwn(client, &identity{user: user, superuser: who&2 != 0}) {
		// Another user's session: untouched, and the CONNECT is refused.
		s.log.Warn("refusing a peer's takeover: the client id belongs to another user", "client", client, "peer", peer)
		reply = append(reply, 2)
		if err := cl.send(ob, peer, 0, recSession, reply, true); err != nil {
			s.log.Warn("cannot answer a peer's takeover", "client", client, "peer", peer, "err", err)
		}
		return nil
	}
	// The answer is queued before the session ends here: when it cannot
	// be (the peer's queue is full), the session stays, and the peer's
	// CONNECT goes on without it once it stops waiting.
	answer := func(mv *movedSession) bool {
		r := reply
		// A session with expiry 0 ended with the connection it was
		// taken from: it is never reused [MQTT-3.1.2-6].
		if mv != nil && clean == 0 && mv.expiry > 0 {
			r = append(r, 1)
			r = appendMoved(r, mv, s.now(), cl.feats.has(peer, featRouted))
			if who&4 != 0 {
				// Taken while the session is still here (handOverTo
				// holds its lock): every forward this node routed while
				// it was here is queued for peer by now (origin.go).
				epoch, seqs := cl.node.SentTo(peer)
				r = appendSentMarks(r, epoch, seqs)
			}
		} else {
			r = append(r, 0)
		}
		// Reliable and kept: the answer carries the session, which
		// will no longer be stored here.
		if err := cl.send(ob, peer, 0, recSession, r, true); err != nil {
			s.log.Warn("cannot answer a peer's takeover; the session stays here", "client", client, "peer", peer, "err", err)
			return false
		}
		if mv != nil && clean == 0 && mv.expiry > 0 {
			s.log.Info("session handed over", "client", client, "to", peer)
		}
		return true
	}
	s.sessions.Lock()
	sess := s.sessions.m[client]
	s.sessions.Unlock()
	if sess != nil {
		s.handOverTo(ob, sess, peer, answer)
	} else {
		answer(nil)
	}
	return nil
}

// sessionArrived takes a peer's answer to a takeover request.
func (cl *cluster) sessionArrived(peer string, b []byte, now int64) error {
	id, present, mv, err := decodeSessionAnswer(b, peer, now)
	if err != nil {
		return err
	}
	cl.reqs.Lock()
	t := cl.reqs.m[id]
	if t != nil && t.abandoned {
		cl.lateAnswer(t, peer, mv)
		return nil
	}
	if t == nil {
		cl.reqs.Unlock()
		if mv != nil {
			// The CONNECT gave up waiting (takeover.go, keepMoved).
			ob := newOutbox(cl.s, nil)
			cl.s.keepMoved(ob, mv)
			ob.flush()
		}
		return nil
	}
	delete(t.waiting, peer)
	if present == 2 {
		t.refused = true
	}
	switch {
	case mv == nil:
	case t.moved == nil:
		t.moved = mv
	case mv.since > t.moved.since:
		t.older, t.moved = append(t.older, t.moved), mv
	default:
		t.older = append(t.older, mv)
	}
	last := len(t.waiting) == 0
	cl.reqs.Unlock()
	if last {
		cl.finishTakeover(id, false)
	}
	return nil
}

// decodeSessionAnswer reads peer's answer to a takeover request:
//
//	request id uvarint | present u8 (0 no, 1 yes, 2 refused) |
//	[moved session | [send marks (appendSentMarks)]]
//
// The moved session comes when present is 1, and the send marks after it
// when the request asked for them (who bit 4).
func decodeSessionAnswer(b []byte, peer string, now int64) (id uint64, present byte, mv *movedSession, err error) {
	r := &wireReader{b: b}
	id = r.uvarint("request id")
	present = r.byte1("present")
	if r.err == nil && present == 1 {
		mv = decodeMovedPart(r, now)
		if r.err == nil && len(r.b) > 0 {
			mv.before = decodeSentMarks(r, peer)
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return 0, 0, nil, r.err
	}
	return id, present, mv, nil
}

// finishTakeover resumes the parked CONNECT on its loop. A request that
// timed out stays for late answers (lateAnswer) until every peer asked
// has answered or movedGrace has passed: a peer's copy may still come,
// and what that peer sends on before it (redirect) is kept for it.
func (cl *cluster) finishTakeover(id uint64, timedOut bool) {
	cl.reqs.Lock()
	t := cl.reqs.m[id]
	if t == nil || t.abandoned {
		cl.reqs.Unlock()
		return
	}
	// The last answer may have come just as the timer fired.
	waiting := len(t.waiting)
	timedOut = timedOut && waiting > 0
	if timedOut {
		t.abandoned = true
		cl.expireAbandoned(t)
	} else {
		delete(cl.reqs.m, id)
	}
	cl.reqs.Unlock()
	t.timer.Stop()
	if timedOut {
		t.req.partial = true
		cl.s.log.Warn("peers did not answer a session takeover in time; connecting without their state",
			"client", t.req.id, "waiting_for", waiting)
	}
	c := t.c
	err := c.loop.el.Execute(context.Background(), runFunc(func() {
		ob := c.loop.ob
		defer ob.flush()
		kept := false
		defer func() {
			cl.mergeOlder(ob, t)
			if !kept {
				cl.deliverEarly(ob, t)
			}
		}()
		if c.closed {
			if t.moved != nil {
				cl.s.keepMoved(ob, t.moved)
			}
			// The connection closed before the peers answered: a late
			// answer brings the session here (keepMoved), and what
			// the peer's copy sends on before that waits for it in
			// t.early instead of finding no session.
			kept = timedOut && cl.stillWaiting(t)
			return
		}
		c.parked = false
		if t.refused {
			if t.moved != nil {
				cl.s.install(ob, t.moved)
			}
			c.srv.stats.connRefusedOwner.Inc()
			c.refuseConnect(ob, codec.ClientIdentifierNotValid, codec.V3IdentifierRejected,
				"client id belongs to another user on a peer")
			return
		}
		c.finishConnect(ob, t.req, t.moved)
		_ = c.gc.Wake(nil)
	}))
	if err != nil {
		ob := newOutbox(cl.s, nil)
		if t.moved != nil {
			cl.s.install(ob, t.moved)
		}
		cl.mergeOlder(ob, t)
		cl.deliverEarly(ob, t)
		ob.flush()
	}
}

// mergeOlder merges the copies that lost to t.moved into the session the
// takeover left here.
func (cl *cluster) mergeOlder(ob *outbox, t *takeoverReq) {
	for _, mv := range t.older {
		cl.s.keepMoved(ob, mv)
	}
	t.older = nil
}

// expireAbandoned stops, after movedGrace, waiting for the answers to a
// takeover that timed out, and delivers what was kept for its client to
// the session it has by then.
// REQUIRES: cl.reqs held.
func (cl *cluster) expireAbandoned(t *takeoverReq) {
	time.AfterFunc(movedGrace, func() {
		cl.reqs.Lock()
		if cl.reqs.m[t.id] != t {
			cl.reqs.Unlock()
			return
		}
		delete(cl.reqs.m, t.id)
		cl.reqs.Unlock()
		ob := newOutbox(cl.s, nil)
		cl.deliverEarly(ob, t)
		ob.flush()
	})
}

// stillWaiting reports whether a peer asked in t has not answered yet.
func (cl *cluster) stillWaiting(t *takeoverReq) bool {
	cl.reqs.Lock()
	defer cl.reqs.Unlock()
	return cl.reqs.m[t.id] == t
}

// lateAnswer takes a peer's answer to an abandoned takeover: the session
// is kept here, and what was sent on early is delivered to it once every
// peer asked has answered.
// REQUIRES: cl.reqs held; released here.
func (cl *cluster) lateAnswer(t *takeoverReq, peer string, mv *movedSession) {
	delete(t.waiting, peer)
	last := len(t.waiting) == 0
	if last {
		delete(cl.reqs.m, t.id)
	}
	cl.reqs.Unlock()
	ob := newOutbox(cl.s, nil)
	if mv != nil {
		cl.s.keepMoved(ob, mv)
	}
	if last {
		cl.deliverEarly(ob, t)
	}
	ob.flush()
}

// early keeps a delivery sent on by the node a session left when the
// session is not here yet but a takeover of it waits: it reports false
// when none does.
func (cl *cluster) early(client string, e earlyMsg) bool {
	cl.reqs.Lock()
	defer cl.reqs.Unlock()
	t := cl.reqs.byClient[client]
	if t == nil {
		return false
	}
	t.early = append(t.early, e)
	return true
}

// deliverEarly delivers what was kept for t's client (early) to the
// session now installed, and stops keeping.
func (cl *cluster) deliverEarly(ob *outbox, t *takeoverReq) {
	id := string(t.req.id)
	cl.reqs.Lock()
	early := t.early
	t.early = nil
	if cl.reqs.byClient[id] == t {
		delete(cl.reqs.byClient, id)
	}
	cl.reqs.Unlock()
	if len(early) == 0 {
		return
	}
	sess := cl.s.lookupSession(id)
	if sess == nil {
		return // the client started clean and left: nothing to deliver to
	}
	now := cl.s.now()
	for _, e := range early {
		sess.deliverMoved(ob, e.m, e.qos, e.retain, e.subIDs, now, e.hops)
	}
}

// sendOnLocked sends a delivery for a session that ended here, having
// moved to a peer, on to it (hops: the nodes that sent it on before this
// one), unless the session had the message here, and took it or moved
// with it: the session there does not remember what it was given here.
// REQUIRES: ss.mu held, ss.mu.ended.
func (ss *session) sendOnLocked(ob *outbox, m *message, qos byte, retain bool, subIDs []uint32, now int64, hops byte) {
	if to := ss.mu.movedTo; to != "" && hops <= maxRedirectHops && ss.firstLocked(ob, m, now) {
		ss.srv.cl.redirect(ob, ss.id, to, m, qos, retain, subIDs, hops)
	}
}

// maxRedirectHops bounds how many nodes send one delivery on: a session
// that moved twice in quick succession (back to a node it had left, say)
// has its old nodes' deliveries follow it, and nothing circles.
const maxRedirectHops = 3

// redirect sends a delivery for a session that has moved to peer on to
// it: a message routed here before the peer announced the session's
// subscriptions, or one sent on to this node after the session had moved
// on from here too (hops: the nodes that sent it on before this one).
// REQUIRES: the session's mu held (sending only queues).
func (cl *cluster) redirect(ob *outbox, client, peer string, m *message, qos byte, retain bool, subIDs []uint32, hops byte) {
	b := appendRedirect(nil, client, m, qos, retain, subIDs, hops, cl.s.now(), cl.feats.has(peer, featRouted))
	if err := cl.send(ob, peer, cl.node.LaneFor(m.from), recRedirect, b, qos > 0); err != nil && qos > 0 {
		cl.s.logThrottled("cannot send a moved session's message on", "client", client, "peer", peer, "err", err)
	}
}

// appendRedirect encodes a delivery sent on (recRedirect):
//
//	client id str | flags u8 | subscription ids: uvarint n, n uvarint | message
//
// flags: QoS in bits 0-1, retain 4, hops in bits 3-4 (0 from the first
// node that sends it on; a node that does not know them refuses the
// record, and it had no session to give it to).
func appendRedirect(dst []byte, client string, m *message, qos byte, retain bool, subIDs []uint32, hops byte, now int64, routed bool) []byte {
	dst = appendStr(dst, []byte(client))
	fl := qos&3 | hops<<3
	if retain {
		fl |= 4
	}
	dst = append(dst, fl)
	dst = binary.AppendUvarint(dst, uint64(len(subIDs)))
	for _, id := range subIDs {
		dst = binary.AppendUvarint(dst, uint64(id))
	}
	return appendMessage(dst, m, now, routed)
}

// redirected delivers a message sent on by the node a session left.
func (cl *cluster) redirected(ob *outbox, b []byte, now int64) error {
	client, e, err := decodeRedirect(b, now)
	if err != nil {
		return err
	}
	if cl.early(client, e) {
		return nil // the session is on its way here: delivered once it is in
	}
	sess := cl.s.lookupSession(client)
	if sess == nil {
		// It moved on from here too: what still reaches it here goes on.
		sess = cl.s.movedOnFrom(client, e.m.topic)
	}
	switch {
	case sess == nil:
	case cl.s.reachedDirectly(sess, e.m, now):
		ob.dropped = true
	default:
		sess.deliverMoved(ob, e.m, e.qos, e.retain, e.subIDs, now, e.hops)
	}
	return nil
}

// decodeRedirect reads a delivery sent on (appendRedirect); the message
// is its own.
func decodeRedirect(b []byte, now int64) (client string, e earlyMsg, err error) {
	r := &wireReader{b: b}
	id := r.str("client id")
	fl := r.byte1("flags")
	n := r.uvarint("subscription ids")
	if n > uint64(len(r.b)) {
		r.fail("subscription ids")
	}
	var subIDs []uint32
	for i := uint64(0); i < n && r.err == nil; i++ {
		subIDs = append(subIDs, uint32(r.uvarint("subscription id")))
	}
	var m message
	readMessage(r, now, &m)
	if r.err == nil && (fl&3 == 3 || fl&^0x1F != 0 || fl>>3 > maxRedirectHops) {
		r.fail("flags")
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return "", earlyMsg{}, r.err
	}
	return string(id), earlyMsg{m: m.own(), qos: fl & 3, retain: fl&4 != 0, hops: fl >> 3, subIDs: subIDs}, nil
}

// movedOnFrom finds the session of client that last moved from this node
// to a peer and still holds its subscriptions here (movedGrace), among
// those matching topic; nil if none.
func (s *Server) movedOnFrom(client string, topic []byte) *session {
	var last *session
	var lastSince int64
	s.subs.Match(topic, func(ss *session, _ fanout.Options) {
		if ss.id != client {
			return
		}
		ss.mu.Lock()
		if ss.mu.ended && ss.mu.movedTo != "" && (last == nil || ss.mu.since > lastSince) {
			last, lastSince = ss, ss.mu.since
		}
		ss.mu.Unlock()
	}, func(*trie.Group[*session, fanout.Options]) {})
	return last
}
