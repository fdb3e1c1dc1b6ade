package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"math"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

// handleConnect authenticates nothing yet, settles the session (new,
// resumed or taken over) and answers with CONNACK.
func (c *client) handleConnect(ob *outbox, h codec.FixedHeader, body []byte) error {
	var p codec.Connect
	if err := p.Decode(h, body, 0); err != nil {
		if codec.CodeOf(err) == codec.UnsupportedProtocolVersion {
			c.logger().Warn("refusing connection", "reason", "unsupported protocol version", "err", err)
			if p.ProtocolVersion == codec.V5 {
				c.writeNow(ob, (&codec.Connack{Code: codec.UnsupportedProtocolVersion}).Append(nil, codec.V5))
			} else {
				// Answer in the 3.1.1 form every client level understands
				// [MQTT-3.1.2-2].
				c.writeNow(ob, (&codec.Connack{Code: codec.V3UnacceptableProtocolVersion}).Append(nil, codec.V311))
			}
			return errClose
		}
		if p.ProtocolVersion == codec.V5 {
			c.version = codec.V5
			return err
		}
		// 3.x: a malformed CONNECT closes the connection without CONNACK.
		c.logger().Warn("closing connection", "reason", "malformed CONNECT", "err", err)
		c.srv.stats.protocolErrors.Add(1)
		return errClose
	}
	c.version = p.ProtocolVersion
	v5 := c.version == codec.V5
	refuse := func(v5code, v3code codec.ReasonCode, why string) error {
		c.logger().Warn("refusing connection", "client", string(p.ClientID), "reason", why)
		code := v3code
		if v5 {
			code = v5code
		}
		c.writeNow(ob, (&codec.Connack{Code: code}).Append(nil, c.version))
		return errClose
	}

	if c.rare != nil && c.rare.refusal != "" {
		// Over a connection limit (limits.go): told why, then closed.
		return refuse(codec.QuotaExceeded, codec.V3ServerUnavailable, c.rare.refusal)
	}
	if c.srv.drain.active.Load() {
		return c.refuseDraining(ob) // drain.go
	}
	if v5 && p.Props.Has(codec.PropAuthMethod) {
		// Enhanced authentication is not offered [MQTT-4.12.0-1].
		return refuse(codec.BadAuthenticationMethod, 0, "authentication method "+string(p.Props.AuthMethod)+" is not supported")
	}
	if p.WillFlag {
		if why := c.srv.topicOverLimit(p.WillTopic); why != "" {
			c.srv.adm.pubTopicRefused.Inc()
			if v5 {
				return refuse(codec.TopicNameInvalid, 0, "will topic "+why)
			}
			c.logger().Warn("closing connection", "reason", "will topic "+why)
			return errClose
		}
		if err := codec.ValidateTopicName(p.WillTopic); err != nil {
			if v5 {
				return refuse(codec.TopicNameInvalid, 0, "invalid will topic")
			}
			c.logger().Warn("closing connection", "reason", "invalid will topic", "err", err)
			return errClose
		}
		if v5 && p.WillProps.Has(codec.PropPayloadFormat) && p.WillProps.PayloadFormat == 1 && !validUTF8(p.WillPayload) {
			return refuse(codec.PayloadFormatInvalid, 0, "will payload is not UTF-8 as its format indicator says")
		}
	}

	if len(p.ClientID) > c.srv.limits().MaxClientIDLength {
		c.srv.adm.clientIDRefused.Inc()
		p.ClientID = []byte(clip(p.ClientID))
		return refuse(codec.ClientIdentifierNotValid, codec.V3IdentifierRejected, "client id longer than --max-client-id-length")
	}
	id := string(p.ClientID)
	assigned := false
	if id == "" {
		if !v5 && !p.CleanStart {
			// [MQTT-3.1.3-8]
			return refuse(0, codec.V3IdentifierRejected, "empty client id with clean session 0")
		}
		id = newClientID()
		assigned = true
	}
	c.id = id
	if len(p.Username) > 0 {
		c.infoState().user = string(p.Username)
	}
	if b := c.srv.bans.check(id, c.user(), c.ipAddr()); b != nil {
		return c.refuseBanned(ob, b) // bans.go
	}

	// Keepalive [MQTT-3.1.2-22, MQTT-3.2.2-21].
	ka := time.Duration(p.KeepAlive) * time.Second
	serverKA := false
	if v5 {
		cfg := &c.srv.cfg
		switch {
		case cfg.ServerKeepAlive > 0:
			ka, serverKA = cfg.ServerKeepAlive, true
		case cfg.MaxKeepAlive > 0 && (ka == 0 || ka > cfg.MaxKeepAlive):
			ka, serverKA = cfg.MaxKeepAlive, true
		case cfg.MinKeepAlive > 0 && ka < cfg.MinKeepAlive:
			ka, serverKA = cfg.MinKeepAlive, true
		}
	} else if max := c.srv.cfg.MaxKeepAlive; max > 0 && (ka == 0 || ka > max) {
		// MQTT 3 cannot be told: the bound holds all the same, or a
		// client with keepalive 0 behind a half-open connection would
		// hold it for ever.
		ka = max
	}
	c.keepAlive = uint16(min((ka+time.Second-1)/time.Second, math.MaxUint16))

	if l := c.srv.newPubLimit(c.id); l != nil {
		c.rareState().limit = l
	}
	// Limits the client sets for us.
	window := c.srv.cfg.MaxInflight
	if v5 {
		if p.Props.Has(codec.PropReceiveMaximum) {
			window = min(window, int(p.Props.ReceiveMaximum))
		}
		if p.Props.Has(codec.PropMaximumPacketSize) {
			c.infoState().maxPacket = int(p.Props.MaximumPacketSize)
		}
		if n := min(int(p.Props.TopicAliasMaximum), c.srv.cfg.TopicAliasOut); n > 0 {
			c.infoState().aliases = newAliasTable(n)
		}
	}

	// Session expiry.
	var expiry time.Duration
	if v5 {
		expiry = time.Duration(p.Props.SessionExpiry) * time.Second
		if p.Props.SessionExpiry == 0xFFFFFFFF {
			expiry = c.srv.cfg.MaxSessionExpiry
		}
	} else if !p.CleanStart {
		expiry = c.srv.cfg.MaxSessionExpiry
	}
	expiry = min(expiry, c.srv.cfg.MaxSessionExpiry)

	if p.WillFlag {
		var wp codec.Publish
		wp.Topic, wp.Payload, wp.QoS, wp.Retain = p.WillTopic, p.WillPayload, p.WillQoS, p.WillRetain
		wp.Props = p.WillProps
		r := c.rareState()
		r.will = newMessage(&wp, id, c.srv.now())
		if v5 && p.WillProps.Has(codec.PropWillDelay) {
			r.willDelay = p.WillProps.WillDelay
		}
	}

	req := &connectReq{id: id, assigned: assigned, cleanStart: p.CleanStart, expiry: expiry, window: window,
		ka: ka, serverKA: serverKA, askedExpiry: p.Props.SessionExpiry}
	if ch := c.srv.cfg.Auth; ch != nil {
		// settle runs on this loop once the chain has decided (auth.go).
		c.authenticate(ch, &p, req)
		return nil
	}
	c.settle(ob, req)
	return nil
}

// settle attaches the session, after asking cluster peers for it.
func (c *client) settle(ob *outbox, req *connectReq) {
	if c.srv.cl != nil && c.srv.cl.takeover(c, req) {
		// Peers are asked for the session first; finishConnect runs on
		// this loop when they have answered, and packets after CONNECT
		// wait in the read buffer until then.
		c.parked = true
		return
	}
	c.finishConnect(ob, req, nil)
}

// connectReq is what CONNECT settled, kept for finishConnect.
type connectReq struct {
	id          string
	assigned    bool
	cleanStart  bool
	expiry      time.Duration
	window      int
	ka          time.Duration
	serverKA    bool
	askedExpiry uint32
	// partial: a peer that may hold the session was not linked, or did
	// not answer the takeover in time (away.go).
	partial bool
}

// finishConnect attaches the session (with the state a peer handed over,
// if any), answers CONNACK and redelivers what the session holds.
func (c *client) finishConnect(ob *outbox, req *connectReq, moved *movedSession) {
	id := req.id
	v5 := c.version == codec.V5
	quiet := ob.batch.Len() == 0 // no writes of this unit yet
	if moved != nil && !req.cleanStart {
		c.srv.install(ob, moved)
	}
	if c.bannedLate(ob, !req.assigned) { // bans.go
		return
	}
	if req.expiry > 0 {
		switch c.srv.newSessionRefused(id) {
		case refusedMem:
			c.srv.adm.refused[refusedMem].Inc()
			c.refuseConnect(ob, codec.QuotaExceeded, codec.V3ServerUnavailable, "memory above the high-water mark of --memory-limit")
			return
		case refusedMaxSessions:
			c.srv.stats.sessionsRefused.Inc()
			c.refuseConnect(ob, codec.QuotaExceeded, codec.V3ServerUnavailable, "the broker holds --max-sessions sessions")
			return
		}
	}
	sess, present := c.srv.attach(ob, c, id, req.cleanStart, req.expiry, req.window)
	c.sess = sess
	if req.partial && req.expiry > 0 {
		var made int64
		if !present && moved == nil {
			made = c.srv.now()
		}
		c.srv.cl.away.add(sess, made)
	}
	if c.ident != nil {
		c.srv.adopt(ob, c, sess)
	}
	if quiet && !present && moved == nil && ob.batch.OnlySession(id) {
		// A new session's record alone: until a later commit, fsynced,
		// acknowledges something to it (a SUBACK, a message queued for
		// it), a crash that loses the record loses nothing it was
		// promised, and the client, finding no session present when it
		// comes back, knows (persist.Store.CommitLazy).
		ob.lazyOps = ob.batch.Len()
	}
	c.connected = true
	c.lastRead = c.srv.now() // the keepalive counts from here
	c.srv.stats.clients.Add(1)

	expiry, ka := req.expiry, req.ka
	ack := codec.Connack{SessionPresent: present}
	if v5 {
		pr := &ack.Props
		if req.assigned {
			pr.AssignedClientID = []byte(id)
			pr.Set(codec.PropAssignedClientID)
		}
		if req.serverKA {
			pr.ServerKeepAlive = uint16(ka / time.Second)
			pr.Set(codec.PropServerKeepAlive)
		}
		if (req.askedExpiry == 0xFFFFFFFF && expiry != 0xFFFFFFFF*time.Second) ||
			time.Duration(req.askedExpiry)*time.Second > expiry {
			pr.SessionExpiry = uint32(expiry / time.Second)
			pr.Set(codec.PropSessionExpiry)
		}
		pr.ReceiveMaximum = uint16(c.srv.cfg.ReceiveMaximum)
		pr.Set(codec.PropReceiveMaximum)
		pr.MaximumPacketSize = uint32(c.srv.cfg.MaxPacketSize)
		pr.Set(codec.PropMaximumPacketSize)
		pr.TopicAliasMaximum = uint16(c.srv.cfg.TopicAliasMaximum)
		pr.Set(codec.PropTopicAliasMaximum)
	}
	ob.add(c, ack.Append(nil, c.version))
	if c.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		// Not even the arguments for a line that nobody reads, on
		// every CONNECT.
		c.logger().Debug("client connected", "version", c.version.String(), "clean_start", req.cleanStart,
			"keepalive", ka, "session_present", present)
	}

	// Redeliver what the session holds, in order, then what waits.
	now := c.srv.now()
	sess.mu.Lock()
	if sess.mu.cl == c {
		sess.resendLocked(ob, now)
		sess.pumpLocked(ob, now)
	}
	sess.mu.Unlock()
}

// refusedMaxSessions is why a new persistent session is refused past
// --max-sessions.
const refusedMaxSessions = "max_sessions"

// newSessionRefused says why a persistent session for id may not be kept,
// or "": one that is resumed or replaced always may; a new one not while
// memory is short (memory.go) or once the broker holds --max-sessions.
func (s *Server) newSessionRefused(id string) string {
	s.sessions.Lock()
	n, old := len(s.sessions.m), s.sessions.m[id]
	s.sessions.Unlock()
	switch max := s.limits().MaxSessions; {
	case old != nil:
		return ""
	case s.mem.high.Load():
		return refusedMem
	case max > 0 && n >= max:
		return refusedMaxSessions
	}
	return ""
}

// newClientID makes an identifier for a client that sent none
// [MQTT-3.1.3-6].
func newClientID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "gannet-" + hex.EncodeToString(b[:])
}

// attach binds c to the session for id, creating it, resuming it or taking
// it over from another connection. It reports whether an existing session
// was resumed (CONNACK's session present).
func (s *Server) attach(ob *outbox, c *client, id string, cleanStart bool, expiry time.Duration, window int) (*session, bool) {
	var old, sess *session
	present := false
	for sess == nil {
		s.sessions.Lock()
		old = s.sessions.m[id]
		s.sessions.Unlock()
		// Asked outside the sessions lock (doc.go's lock order), then
		// settled only if the map still holds what was asked about.
		resume := old != nil && !cleanStart && old.resumable()
		s.sessions.Lock()
		if s.sessions.m[id] == old {
			if resume {
				sess, present = old, true
			} else {
				sess = newSession(s, id)
				s.sessions.m[id] = sess
			}
		}
		s.sessions.Unlock()
	}

	if old != nil && old != sess {
		// Clean start, or a session that ends with its connection: the
		// old session ends here [MQTT-3.1.2-4, MQTT-3.1.2-6], and a
		// connection still on it is told so and closed [MQTT-3.1.4-2].
		// Detached first, it sends no will, as in any takeover.
		old.mu.Lock()
		oldCl := old.mu.cl
		old.mu.cl = nil
		old.mu.Unlock()
		s.endSession(ob, old)
		if oldCl != nil {
			oldCl.kick(codec.SessionTakenOver)
		}
	}

	sess.mu.Lock()
	prev := sess.mu.cl
	sess.mu.cl = c
	sess.mu.gen++
	if sess.persistentLocked() && expiry == 0 {
		// Resumed without an expiry: the session ends with this connection
		// and no longer belongs on disk.
		sess.unstoreLocked(ob)
	}
	sess.mu.expiry = expiry
	sess.mu.window = uint16(window)
	sess.mu.since = s.stamp()
	sess.mu.restored = false // this node owns it now
	since := sess.mu.since
	sess.saveLocked(ob, 0)
	if sess.mu.expTimer != nil {
		sess.mu.expTimer.Stop()
		sess.mu.expTimer = nil
	}
	will := sess.mu.will
	sess.mu.will = nil
	sess.mu.Unlock()

	if will != nil {
		// The session resumed before the will delay ran out: no will
		// [MQTT-3.1.3-9].
		will.cancel(ob)
	}
	if prev != nil {
		prev.kick(codec.SessionTakenOver)
	}
	if !present {
		s.stats.sessionsCreated.Add(1)
	}
	if s.cl != nil {
		s.cl.connected(id, since)
	}
	return sess, present
}

// kick disconnects a client from another goroutine: a v5 client gets
// DISCONNECT with code first [MQTT-3.1.4-3].
func (c *client) kick(code codec.ReasonCode) {
	_ = c.loop.el.Execute(context.Background(), runFunc(func() {
		if c.closed {
			return
		}
		if c.version == codec.V5 {
			c.pend = append(c.pend, (&codec.Disconnect{Code: code}).Append(nil, codec.V5))
			c.dirty = true
		}
		c.close()
	}))
}

// handleDisconnect processes a client's DISCONNECT: no will unless the v5
// code asks for one, and an updated session expiry.
func (c *client) handleDisconnect(ob *outbox, p *codec.Disconnect) error {
	if c.version == codec.V5 && p.Props.Has(codec.PropSessionExpiry) {
		c.sess.mu.Lock()
		was := c.sess.mu.expiry
		if was == 0 && p.Props.SessionExpiry != 0 {
			c.sess.mu.Unlock()
			// [MQTT-3.14.2-2]
			return &codec.Error{Code: codec.ProtocolError, Rule: "MQTT-3.14.2-2",
				Msg: "session expiry set in DISCONNECT after CONNECT set it to 0"}
		}
		exp := min(time.Duration(p.Props.SessionExpiry)*time.Second, c.srv.cfg.MaxSessionExpiry)
		if exp == 0 && c.sess.persistentLocked() {
			c.sess.unstoreLocked(ob)
		}
		c.sess.mu.expiry = exp
		c.sess.mu.Unlock()
	}
	if !(c.version == codec.V5 && p.Code == codec.DisconnectWithWill) {
		c.rareState().disconnect = true // [MQTT-3.1.2-10]
	}
	c.logger().Debug("client disconnected", "code", p.Code.String())
	c.close()
	return nil
}

// onClose detaches the client from its session, publishes or schedules its
// will, and starts the session's expiry.
func (c *client) onClose() {
	if !c.connected {
		return
	}
	sess := c.sess
	// OnClose may run inside another client's flush (a failed write), so
	// this work gets an outbox of its own that reaches every client through
	// its loop.
	ob := newOutbox(c.srv, nil)
	defer ob.flush()
	sess.mu.Lock()
	mine := sess.mu.cl == c
	if mine {
		sess.mu.cl = nil
		sess.mu.restoredSeq = sess.mu.seq // what comes after may be late (takeover.go)
		sess.saveLocked(ob, c.srv.now())
	}
	expiry := sess.mu.expiry
	gen := sess.mu.gen
	sess.mu.Unlock()

	if !mine {
		// Taken over: the session lives on with the new connection, and no
		// will is sent.
		return
	}
	if r := c.rare; r != nil && r.will != nil && !r.disconnect {
		c.srv.scheduleWill(ob, sess, r.will, r.willDelay, expiry)
	}
	if expiry == 0 {
		c.srv.endSession(ob, sess)
		return
	}
	sess.mu.Lock()
	if sess.mu.gen == gen && sess.mu.cl == nil && !sess.mu.ended {
		sess.mu.expTimer = time.AfterFunc(expiry, func() { c.srv.expireSession(sess, gen) })
	}
	sess.mu.Unlock()
}

// expireSession ends sess if it has stayed offline since generation gen.
func (s *Server) expireSession(sess *session, gen uint64) {
	sess.mu.Lock()
	stale := sess.mu.gen != gen || sess.mu.cl != nil || sess.mu.ended
	sess.mu.Unlock()
	if !stale {
		s.stats.sessionsExpired.Add(1)
		ob := newOutbox(s, nil)
		s.endSession(ob, sess)
		ob.flush()
	}
}

// forgetSession takes sess out of the sessions map, unless another
// session has replaced it there.
func (s *Server) forgetSession(sess *session) {
	s.sessions.Lock()
	if s.sessions.m[sess.id] == sess {
		delete(s.sessions.m, sess.id)
	}
	s.sessions.Unlock()
}

// endLocked marks the session ended: its stored state goes, its queue and
// expiry timer are released. It returns the subscriptions to take out of
// the index and the pending will, both now the caller's.
// REQUIRES: ss.mu held, ss.mu.ended false.
func (ss *session) endLocked(ob *outbox) (map[string]fanout.Options, *pendingWill) {
	if ss.persistentLocked() {
		ss.unstoreLocked(ob)
	}
	ss.mu.ended = true
	if ss.srv.cl != nil {
		ss.srv.cl.away.drop(ss)
	}
	subs, will := ss.mu.subs, ss.mu.will
	ss.mu.subs, ss.mu.will = nil, nil
	ss.mu.inflight = nil
	ss.mu.queue.release()
	ss.mu.queue = msgQueue{}
	if ss.mu.expTimer != nil {
		ss.mu.expTimer.Stop()
	}
	return subs, will
}

// endSession removes a session: its subscriptions leave the index and its
// queued messages go. A pending will is published now [MQTT-3.1.2-8].
func (s *Server) endSession(ob *outbox, sess *session) {
	s.forgetSession(sess)
	sess.mu.Lock()
	if sess.mu.ended {
		sess.mu.Unlock()
		return
	}
	shared := sess.sharedLeftLocked()
	subs, will := sess.endLocked(ob)
	sess.mu.Unlock()

	for f := range subs {
		s.unsubscribe(f, sess)
	}
	s.reshare(ob, sess, shared) // reshare.go
	if will != nil {
		will.fireNow()
	}
}
