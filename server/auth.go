package server

import (
	"bytes"
	"context"
	"time"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

// Authentication and authorization (package auth decides; this file asks).
//
// A CONNECT is held while the chain decides, off the event loop: the
// client is parked (its later packets wait in the read buffer) and the
// decision comes back to its loop through Execute. Once in, the client's
// compiled ACL (an *auth.Matcher, nil for "everything") is checked on every
// PUBLISH and SUBSCRIBE without allocating or calling out. A subscription
// that the ACL allows only in part (a deny rule inside it) is marked, and
// each message it matches is checked for read access on delivery.

// sysPrefix starts the topics only the broker publishes to.
var sysPrefix = []byte("$SYS")

// identity is what a client authenticated as, kept for ownership checks
// and for recomputing its ACL after a reload.
type identity struct {
	req       auth.Request // without the password
	user      string
	superuser bool
	fixed     bool // the ACL came with the answer (JWT claim, HTTP rules)
	// acl is the client's compiled ACL; nil allows everything. pubOK
	// is the last topic it allowed the client to publish to.
	acl   *auth.Matcher
	pubOK []byte
}

// authenticate hands the CONNECT to the chain and parks the client until
// it answers. It runs on the client's loop.
func (c *client) authenticate(ch *auth.Chain, p *codec.Connect, req *connectReq) {
	ar := &auth.Request{
		ClientID:    req.id,
		Username:    string(p.Username),
		Password:    bytes.Clone(p.Password),
		HasUsername: p.UsernameFlag,
		HasPassword: p.PasswordFlag,
		Remote:      c.remote(),
		Protocol:    byte(c.version),
		Listener:    "mqtt",
		CertCN:      c.proxyCN(),
	}
	if c.tls != nil {
		ar.Listener = "tls"
		ar.CertCN, ar.CertSANs = c.tls.cn, c.tls.sans
	}
	if c.ws != nil {
		ar.Listener = "ws"
		if c.tls != nil {
			ar.Listener = "wss"
		}
	}
	c.parked = true
	ch.Check(ar, func(r auth.Result) {
		err := c.loop.el.Execute(context.Background(), runFunc(func() {
			ob := c.loop.ob
			c.authDone(ob, ar, req, r)
			ob.flush()
		}))
		if err != nil {
			c.srv.log.Debug("dropping an authentication answer: the broker is stopping", "client", req.id)
		}
	})
}

// authDone applies the chain's decision on the client's loop.
func (c *client) authDone(ob *outbox, ar *auth.Request, req *connectReq, r auth.Result) {
	if c.closed {
		return
	}
	c.parked = false
	st := c.srv.stats
	switch r.Outcome {
	case auth.Allowed:
	case auth.NotAuthorized:
		st.connRefusedAuth.Inc()
		if ar.HasUsername || ar.HasPassword {
			c.refuseConnect(ob, codec.BadUserNameOrPassword, codec.V3BadUsernameOrPassword, "bad user name or password")
		} else {
			c.refuseConnect(ob, codec.NotAuthorized, codec.V3NotAuthorized, "not authorized")
		}
		return
	default:
		st.connRefusedUnavailable.Inc()
		// The cause is logged by the chain once per backend state change;
		// this line names the client.
		c.logger().Warn("refusing connection", "reason", "authentication unavailable", "source", r.Source)
		c.refuseConnect(ob, codec.ServerUnavailable, codec.V3ServerUnavailable, "")
		return
	}
	ar.Password = nil
	c.ident = &identity{req: *ar, user: r.Username, superuser: r.Superuser, fixed: r.FromAnswer, acl: r.Matcher}
	if !c.srv.mayOwn(req.id, c.ident) {
		st.connRefusedOwner.Inc()
		c.refuseConnect(ob, codec.ClientIdentifierNotValid, codec.V3IdentifierRejected,
			"client id belongs to another user")
		return
	}
	c.settle(ob, req)
	if !c.parked && c.inputWaits() {
		_ = c.gc.Wake(nil) // read what waited behind the CONNECT
	}
}

// inputWaits reports whether bytes arrived behind c's CONNECT while it was
// parked: they wait in gnet's buffer or, on a WebSocket or a TLS
// connection served on its loop, unmasked or decrypted in the
// connection's own. A client that sent nothing more is not woken: it
// would cost the loop another round for a read of nothing, and bytes
// that arrive later are read when they do.
func (c *client) inputWaits() bool {
	return c.gc.InboundBuffered() > 0 || c.hasPartial() || (c.ws != nil && len(c.ws.in) > 0) ||
		(c.tls != nil && c.tls.rec != nil && len(c.tls.rec.in) > 0)
}

// refuseConnect answers CONNECT with a refusal and closes the connection.
// An empty why means the caller logged already.
func (c *client) refuseConnect(ob *outbox, v5code, v3code codec.ReasonCode, why string) {
	if why != "" {
		c.logger().Warn("refusing connection", "reason", why)
	}
	code := v3code
	if c.version == codec.V5 {
		code = v5code
	}
	c.writeNow(ob, (&codec.Connack{Code: code}).Append(nil, c.version))
	c.close()
}

// mayOwn reports whether a client authenticated as who may take the
// session of client id id: a client id belongs to the user whose
// connection made its session; superusers may take any.
func (s *Server) mayOwn(id string, who *identity) bool {
	if who == nil || who.superuser {
		return true
	}
	s.sessions.Lock()
	sess := s.sessions.m[id]
	s.sessions.Unlock()
	if sess == nil {
		return true
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.mu.ended || sess.mu.owner == who.user
}

// mayPublish reports whether c may publish to topic: never to $SYS (only
// the broker does, whoever the client is), otherwise as its ACL says.
// Most publishers send to a few topics over and over: the last topic the
// ACL let c publish to is remembered, and the same topic again costs one
// comparison instead of a walk of the rules.
func (c *client) mayPublish(topic []byte) bool {
	if bytes.HasPrefix(topic, sysPrefix) && (len(topic) == len(sysPrefix) || topic[len(sysPrefix)] == '/') {
		return false
	}
	id := c.ident
	if id == nil || id.acl == nil || (id.pubOK != nil && bytes.Equal(topic, id.pubOK)) {
		return true
	}
	if !id.acl.CanPublish(topic) {
		return false
	}
	id.pubOK = append(id.pubOK[:0], topic...)
	return true
}

// denyPublish answers a PUBLISH the ACL refuses: not routed, not retained;
// MQTT 5 QoS 1/2 gets 0x87, MQTT 3 its usual acknowledgement (there is no
// way to say no), and the refusal is counted and logged (throttled).
func (c *client) denyPublish(ob *outbox, p *codec.Publish) error {
	c.srv.stats.publishDenied.Inc()
	c.srv.logThrottled("publish denied", "client", c.id, "topic", string(p.Topic))
	if c.version == codec.V5 {
		return c.ackPublish(ob, p, -1, codec.NotAuthorized)
	}
	return c.ackPublish(ob, p, -1, codec.Success)
}

// subscribeAccess checks a SUBSCRIBE filter against c's ACL; a shared
// subscription is checked on the filter inside it.
func (c *client) subscribeAccess(filter []byte) auth.SubAccess {
	if c.ident == nil || c.ident.acl == nil {
		return auth.SubAllowed
	}
	if _, inner, ok := codec.SplitShared(filter); ok {
		filter = inner
	}
	return c.ident.acl.CanSubscribe(filter)
}

// mayRead reports whether a delivery through a subscription with options
// o may carry topic to the session: only subscriptions the ACL allowed
// in part need the check.
func (ss *session) mayRead(o fanout.Options, topic []byte) bool {
	if !o.Check {
		return true
	}
	if ss.acl.Load().CanRead(topic) {
		return true
	}
	ss.srv.stats.readDenied.Inc()
	return false
}

// aclChange is what a new ACL does to a session's subscriptions: filters
// to take out of the index, and filters whose options changed (the
// per-message read check turned on or off).
type aclChange struct {
	gone    []string
	changed []string
	opts    []fanout.Options
}

// applyACLLocked brings a session's subscriptions in line with its
// client's ACL m: a subscription no longer allowed is removed, one allowed
// in part is checked per message from now on. The caller applies the
// returned change to the index once ss.mu is released (doc.go's lock
// order: the index before a session).
// REQUIRES: ss.mu held.
func (ss *session) applyACLLocked(m *auth.Matcher) aclChange {
	var ch aclChange
	ss.acl.Store(m)
	for f, o := range ss.mu.subs {
		fb := []byte(f)
		if _, inner, ok := codec.SplitShared(fb); ok {
			fb = inner
		}
		access := m.CanSubscribe(fb)
		switch {
		case access == auth.SubDenied:
			ch.gone = append(ch.gone, f)
			delete(ss.mu.subs, f)
			continue
		case o.Check == (access == auth.SubPartial):
			continue
		}
		o.Check = access == auth.SubPartial
		ss.setSubLocked(f, o)
		ch.changed = append(ch.changed, f)
		ch.opts = append(ch.opts, o)
	}
	return ch
}

// applyACLChange updates the index after applyACLLocked.
func (s *Server) applyACLChange(ss *session, ch aclChange) {
	for i, f := range ch.changed {
		_, _, _ = s.subs.Subscribe(f, ss, ch.opts[i])
	}
	for _, f := range ch.gone {
		s.unsubscribe(f, ss)
	}
}

// RefreshAuth reloads the authentication sources that come from files
// (password file, ACL file, JWT keys) and recomputes the ACL of every
// connected client, applying it to its subscriptions. A source that fails
// to reload keeps its old state; the joined errors are returned. Clients
// whose ACL came with their authentication answer keep it.
func (s *Server) RefreshAuth() error {
	ch := s.cfg.Auth
	if ch == nil {
		return nil
	}
	err := ch.Reload()
	go s.recomputeACLs(ch)
	return err
}

// aclLoop recomputes connected clients' ACLs whenever the chain says their
// rules may have changed (its cached backend answers expired).
func (s *Server) aclLoop() {
	defer s.wg.Done()
	ch := s.cfg.Auth
	gen := ch.Generation()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if g := ch.Generation(); g != gen {
				gen = g
				s.recomputeACLs(ch)
			}
		}
	}
}

// recomputeACLs recomputes the ACL of every connected client, one client
// at a time so that a hundred thousand clients do not make a hundred
// thousand goroutines or concurrent backend calls.
func (s *Server) recomputeACLs(ch *auth.Chain) {
	loops := s.loopList()
	var clients []*client
	for _, l := range loops {
		got := make(chan []*client, 1)
		err := l.el.Execute(context.Background(), runFunc(func() {
			var cs []*client
			for _, c := range l.conns {
				if c.connected && !c.closed && c.ident != nil && !c.ident.fixed && !c.ident.superuser {
					cs = append(cs, c)
				}
			}
			got <- cs
		}))
		if err != nil {
			return // stopping
		}
		select {
		case cs := <-got:
			clients = append(clients, cs...)
		case <-s.done:
			return
		}
	}
	for _, c := range clients {
		select {
		case <-s.done:
			return
		default:
		}
		c.recomputeACL(ch)
	}
}

// recomputeACL asks the chain for c's rules again and applies them on c's
// loop. A backend that cannot answer leaves the old rules in force.
func (c *client) recomputeACL(ch *auth.Chain) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := ch.Rules(ctx, &c.ident.req, c.ident.user)
	if err != nil {
		c.srv.logThrottled("cannot recompute a client's ACL; the old rules stay", "client", c.ident.req.ClientID, "err", err)
		return
	}
	_ = c.loop.el.Execute(context.Background(), runFunc(func() {
		if c.closed || !c.connected {
			return
		}
		c.ident.acl = m
		c.ident.pubOK = nil // decided under the old rules
		sess := c.sess
		sess.mu.Lock()
		ch := sess.applyACLLocked(m)
		sess.mu.Unlock()
		c.srv.applyACLChange(sess, ch)
		if len(ch.gone) > 0 {
			c.logger().Info("subscriptions removed: the ACL no longer allows them", "filters", ch.gone)
		}
	}))
}

// adopt makes sess the authenticated client c's: c's user owns it, and its
// subscriptions (a resumed session's, made under an older ACL or none) and
// queued messages are brought in line with c's ACL. It runs on c's loop
// right after attach.
func (s *Server) adopt(ob *outbox, c *client, sess *session) {
	sess.mu.Lock()
	owner := sess.mu.owner != c.ident.user
	sess.mu.owner = c.ident.user
	acl := c.ident.acl
	ch := sess.applyACLLocked(acl)
	if acl != nil && sess.mu.queue.len() > 0 {
		// Queued under an older ACL (or before a restart, with none):
		// what the client may not read now goes.
		sess.mu.queue.filter(func(om *outMsg) bool {
			if acl.CanRead(om.msg.topic) {
				return true
			}
			s.stats.readDenied.Inc()
			sess.forgetLocked(ob, om)
			return false
		})
	}
	if owner {
		sess.saveLocked(ob, 0)
	}
	sess.mu.Unlock()
	s.applyACLChange(sess, ch)
}
