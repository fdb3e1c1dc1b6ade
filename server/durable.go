package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/persist"
)

// The broker keeps every live structure in memory and uses the store as a
// write-behind log that it reads back at start (persist/doc.go). Each unit
// of work collects its writes in its outbox's batch; ob.flush hands the
// batch to the store's group committer and never waits for it.
//
// What must not run ahead of the disk is the acknowledgement: a PUBACK or
// PUBREC (also PUBCOMP, SUBACK and UNSUBACK) to the client whose traffic
// produced writes takes a slot in the client's pending bytes, and the
// client's output pauses until every slot is filled, which happens on the
// client's loop when the commit completes. Bytes queued behind a slot wait
// with it, so the client sees everything in the order it was produced
// [MQTT-4.6.0-2]. A client with slots open holds later acknowledgements
// too, behind an empty commit if need be.

// heldAck is an acknowledgement waiting for a commit in slot c.pend[slot]:
// either a PUBACK/PUBREC/PUBCOMP to encode on release (pkt nil), or a
// packet already encoded.
type heldAck struct {
	c    *client
	slot int
	kind codec.Type
	pid  uint16
	code codec.ReasonCode
	pkt  []byte
	// at is when the timed PUBLISH that a PUBACK or PUBREC answers was
	// taken up (monotime), for the latency histogram; 0: not timed
	// (latency.go).
	at int64
	// failed, for a SUBACK or UNSUBACK (pkt), undoes in memory what the
	// failed commit did not keep and returns the answer to send instead,
	// or nil when the client cannot be told (MQTT 3 UNSUBACK) and the
	// connection is to close. It runs on the client's loop.
	failed func() []byte
}

// storeGate lets Shutdown close the store while timers and loops may still
// be committing: commits take the read side, Close the write side.
type storeGate struct {
	sync.RWMutex
	st     *persist.Store
	closed bool
}

// commit hands b to the store, or fails it with persist's closed error once
// the store is gone. With wait, it blocks while the disk is far behind
// (persist's MaxPending): the backpressure for goroutines such as a peer
// link's receiver. An event loop never waits (outbox.commit): it serves
// every other client of the loop, and each of its clients is bounded by
// the acknowledgements it may have waiting (maxHeldAcks).
func (g *storeGate) commit(b *persist.Batch, done func(error), wait bool) {
	g.commitAs(b, done, wait, false)
}

// commitKept is commit for writes whose effects the broker made already
// and cannot take back (persist.Store.CommitKept).
func (g *storeGate) commitKept(b *persist.Batch, done func(error), wait bool) {
	g.commitAs(b, done, wait, true)
}

// commitLazy is commit for writes that need no fsync of their own
// (persist.Store.CommitLazy). It never waits.
func (g *storeGate) commitLazy(b *persist.Batch, done func(error)) {
	g.RLock()
	defer g.RUnlock()
	if g.closed {
		done(errStoreClosed)
		return
	}
	g.st.CommitLazy(b, done)
}

func (g *storeGate) commitAs(b *persist.Batch, done func(error), wait, keep bool) {
	g.RLock()
	defer g.RUnlock()
	switch {
	case g.closed:
		done(errStoreClosed)
	case keep:
		g.st.CommitKept(b, done, wait)
	case wait:
		g.st.Commit(b, done)
	default:
		g.st.CommitNoWait(b, done)
	}
}

// behind reports whether the store's disk is behind (persist's Behind);
// false without a store.
func (g *storeGate) behind() bool { return g != nil && g.st.Behind() }

var errStoreClosed = errors.New("server: store closed")

// openStore opens the data directory and loads what it holds into the
// broker's structures. It runs in Start, before any client can connect.
func (s *Server) openStore() error {
	if s.cfg.Durability == DurabilityNone {
		return nil
	}
	d, err := persist.ParseDurability(string(s.cfg.Durability))
	if err != nil {
		return err
	}
	st, err := persist.Open(persist.Options{
		Dir:          s.cfg.DataDir,
		Durability:   d,
		SyncInterval: s.cfg.SyncInterval,
		MinFreeBytes: s.cfg.MinFreeDisk,
		MaxPending:   s.cfg.storeMaxPending,
		FS:           s.cfg.storeFS,
		Logger:       s.log,
		OnWrite:      s.stats.lat.commitTook,
	})
	if err != nil {
		return fmt.Errorf("cannot open the data directory %s: %w", s.cfg.DataDir, err)
	}
	s.store = &storeGate{st: st}
	s.storeMetrics(st)
	ls, err := s.load(st)
	if err != nil {
		_ = st.Close()
		s.store = nil
		return fmt.Errorf("cannot load the data directory %s: %w", s.cfg.DataDir, err)
	}
	s.log.Info("state loaded", "dir", s.cfg.DataDir, "durability", d.String(), "sessions", ls.Sessions,
		"messages", ls.Entries, "retained", ls.Retained, "retained_cleared", ls.Cleared, "purged", ls.Purged, "took", ls.Took)
	return nil
}

// closeStore completes the pending commits and closes the store.
func (s *Server) closeStore() error {
	g := s.store
	if g == nil {
		return nil
	}
	g.Lock()
	defer g.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	return g.st.Close()
}

// load rebuilds sessions, their queues, retained messages and pending wills
// from the store.
func (s *Server) load(st *persist.Store) (persist.LoadStats, error) {
	now := time.Now()
	bodies := make(map[uint64]*message)
	sessions := make(map[string]*session)
	type loadedWill struct {
		client string
		w      *persist.Will
	}
	var wills []loadedWill
	var orphans persist.Batch
	sharing := make(map[*session]bool) // sessions with a shared subscription
	ls, err := st.Load(now, persist.Loader{
		Body: func(m *persist.Message) {
			bodies[m.ID] = messageFromRecord(m)
		},
		Session: func(r *persist.Session) {
			ss := newSession(s, r.ClientID)
			ss.mu.expiry = r.Expiry
			ss.mu.owner = r.Owner
			ss.mu.restored = true
			ss.mu.since = r.DisconnectedAt // before it: the last connection's start is not kept
			for _, sub := range r.Subs {
				opts := fanout.Options{QoS: sub.QoS, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, SubID: sub.SubID,
					Check: sub.ReadCheck}
				if _, _, err := s.subs.Subscribe(sub.Filter, ss, opts); err != nil {
					s.log.Warn("dropping a stored subscription", "client", r.ClientID, "filter", sub.Filter, "err", err)
					continue
				}
				ss.setSubLocked(sub.Filter, opts)
				if strings.HasPrefix(sub.Filter, "$share/") {
					sharing[ss] = true
				}
			}
			off := r.DisconnectedAt
			if off == 0 {
				off = now.UnixNano()
			}
			left := time.Duration(off + int64(r.Expiry) - now.UnixNano())
			ss.mu.expTimer = time.AfterFunc(max(left, 0), func() { s.expireSession(ss, 0) })
			sessions[r.ClientID] = ss
			s.sessions.m[r.ClientID] = ss
		},
		Entry: func(client string, e *persist.Entry) {
			ss, m := sessions[client], bodies[e.MsgID]
			if ss == nil || m == nil {
				orphans.DeleteEntry(client, e.Seq)
				return
			}
			om := &outMsg{msg: m, qos: e.QoS, retain: e.Retain, subIDs: e.SubIDs, pid: e.PacketID,
				released: e.Released, seq: e.Seq, stored: true}
			if sharing[ss] {
				om.share = s.shareOf(ss, m.topic)
			}
			m.refs.Add(1)
			ss.mu.seq = max(ss.mu.seq, e.Seq)
			if om.pid != 0 {
				om.idb = [2]byte{byte(om.pid >> 8), byte(om.pid)}
				ss.setInflightLocked(om)
				ss.mu.nextID = max(ss.mu.nextID, om.pid)
			} else {
				ss.mu.queue.push(om)
			}
		},
		Inbound: func(client string, pid uint16) {
			if ss := sessions[client]; ss != nil {
				ss.addRxQoS2Locked(pid)
			}
		},
		Meta: func(key string, val []byte) {
			if peer, pos, ok := restoreMark(key, val); ok {
				s.marks = append(s.marks, mark{peer, pos})
			} else if sp, ok := restoreSpool(key, val); ok {
				s.spool = append(s.spool, sp)
			} else {
				s.restoreBan(key, val) // bans.go
			}
		},
		Retained: func(m *persist.Message) {
			s.observe(m.Stamp) // stamps made from now on order after it
			s.retained.set(messageFromRecord(m))
		},
		Cleared: func(topic []byte, stamp int64) {
			s.observe(stamp)
			if s.cfg.Cluster == nil || stamp < now.UnixNano()-int64(s.tombLife()) {
				orphans.DeleteRetained(topic) // expired, or alone: nothing needs it
				return
			}
			s.retained.restoreTomb(topic, stamp)
		},
		Will: func(client string, w *persist.Will) {
			wills = append(wills, loadedWill{client, w})
		},
	})
	if err != nil {
		return ls, err
	}
	for _, ss := range sessions {
		ss.mu.restoredSeq = ss.mu.seq
	}
	for id, m := range bodies {
		if m.refs.Load() == 0 {
			orphans.DeleteBody(id)
		}
	}
	if orphans.Len() > 0 {
		st.Commit(&orphans, func(error) {})
	}
	for _, lw := range wills {
		m := messageFromRecord(&lw.w.Msg)
		ss := sessions[lw.client]
		wait := time.Duration(lw.w.FireAt - now.UnixNano())
		if ss == nil || wait <= 0 {
			s.fireStoredWill(lw.client, m)
			continue
		}
		w := &pendingWill{srv: s, msg: m, client: lw.client, stored: true}
		ss.mu.will = w
		w.timer = time.AfterFunc(wait, func() { ss.willDue(w) })
	}
	return ls, nil
}

// fireStoredWill publishes a will that came due while the broker was down.
func (s *Server) fireStoredWill(client string, m *message) {
	w := &pendingWill{srv: s, msg: m, client: client, stored: true}
	w.fireNow()
}

// messageFromRecord builds a message from its stored form; the record's
// slices become the message's own.
func messageFromRecord(r *persist.Message) *message {
	m := &message{topic: r.Topic, payload: r.Payload, qos: r.QoS, retain: r.Retain,
		expiresAt: r.ExpiresAt, from: r.From, id: r.ID, stamp: r.Stamp, origin: r.Origin}
	if r.Props.Present != 0 || len(r.Props.User) > 0 {
		pr := r.Props
		m.props = &pr
	}
	return m
}

// record is the stored form of m; it shares m's bytes.
func (m *message) record() *persist.Message {
	return &persist.Message{ID: m.id, Topic: m.topic, Payload: m.payload, QoS: m.qos, Retain: m.retain,
		Props: *m.prop(), ExpiresAt: m.expiresAt, From: m.from, Stamp: m.stamp, Origin: m.origin}
}

// persistentLocked reports whether the session's state goes to the store.
// REQUIRES: ss.mu held.
func (ss *session) persistentLocked() bool {
	return ss.srv.store != nil && ss.mu.expiry > 0 && !ss.mu.ended
}

// persistent is persistentLocked for a caller without ss.mu.
func (ss *session) persistent() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.persistentLocked()
}

// recordLocked is the stored form of the session. A connected session is
// written with DisconnectedAt 0.
// REQUIRES: ss.mu held.
func (ss *session) recordLocked(disconnectedAt int64) *persist.Session {
	r := &persist.Session{ClientID: ss.id, Expiry: ss.mu.expiry, DisconnectedAt: disconnectedAt,
		Subs: make([]persist.Subscription, 0, len(ss.mu.subs)), Owner: ss.mu.owner}
	for f, o := range ss.mu.subs {
		r.Subs = append(r.Subs, persist.Subscription{Filter: f, QoS: o.QoS, NoLocal: o.NoLocal,
			RetainAsPublished: o.RetainAsPublished, SubID: o.SubID, ReadCheck: o.Check})
	}
	return r
}

// saveLocked writes the session record when the session is persistent.
// REQUIRES: ss.mu held.
func (ss *session) saveLocked(ob *outbox, disconnectedAt int64) {
	if ss.persistentLocked() {
		ob.batch.PutSession(ss.recordLocked(disconnectedAt))
	}
}

// storeEntryLocked writes om (new or changed) when the session is
// persistent. The message body goes with the first entry that needs it.
// REQUIRES: ss.mu held.
func (ss *session) storeEntryLocked(ob *outbox, om *outMsg) {
	if !om.stored {
		if !ss.persistentLocked() {
			return
		}
		m := om.msg
		if m.id == 0 || m.refs.Load() == 0 {
			// New to the store, or its body was deleted with the last
			// entry that held it: a session that ended here (handed
			// over) and whose messages are merged into another one
			// (keepMoved) gives its messages on after unstoring them.
			m.id = ss.srv.store.st.NextID()
			ob.batch.PutBody(m.record())
		}
		m.refs.Add(1)
		om.stored = true
		ob.batch.CreateEntry(ss.id, om.record())
		return
	}
	ob.batch.PutEntry(ss.id, om.record())
}

// record is the stored form of om.
func (om *outMsg) record() *persist.Entry {
	return &persist.Entry{Seq: om.seq, MsgID: om.msg.id, QoS: om.qos, Retain: om.retain,
		PacketID: om.pid, Released: om.released, SubIDs: om.subIDs}
}

// forgetLocked deletes om's entry, and its body when no entry holds it any
// more.
// REQUIRES: ss.mu held.
func (ss *session) forgetLocked(ob *outbox, om *outMsg) {
	if !om.stored {
		return
	}
	if om.createdElsewhere(ob) {
		om.forgot = true // deleted by the creator, after its creation (track)
		return
	}
	om.stored = false
	ob.batch.DeleteEntry(ss.id, om.seq)
	if om.msg.refs.Add(-1) == 0 {
		ob.batch.DeleteBody(om.msg.id)
	}
}

// createdEntry is a queued message whose entry an outbox creates.
type createdEntry struct {
	ss *session
	om *outMsg
}

// track notes that ob's batch creates the entry of om, a message queued
// in ss, which another goroutine may take out of the queue before ob
// commits: the subscriber's loop sending it, whose acknowledgement's
// deletion would then reach the store before the creation, and the entry
// come back at the next start (a completed QoS 2 delivery made again).
// Until ob has handed its batch to the store (releaseCreated), others
// leave om in the queue (pumpLocked) and leave its deletion to ob
// (forgetLocked).
// REQUIRES: ss.mu held.
func (ob *outbox) track(ss *session, om *outMsg) {
	if !om.stored || om.creator != nil {
		return
	}
	om.creator = ob
	ob.created = append(ob.created, createdEntry{ss, om})
}

// createdElsewhere reports whether om's entry is created by another
// outbox than ob that has not handed it to the store yet (track).
// REQUIRES: the session's mu held.
func (om *outMsg) createdElsewhere(ob *outbox) bool { return om.creator != nil && om.creator != ob }

// releaseCreated runs once ob's batch is with the store: the entries it
// created may be sent and deleted by anyone now. Deletions asked for
// meanwhile go into ob's batch (after the creations), and a session whose
// pump stopped at one of them is pumped on its client's loop.
func (ob *outbox) releaseCreated() {
	for i, c := range ob.created {
		ob.created[i] = createdEntry{}
		ss, om := c.ss, c.om
		var pump *client
		ss.mu.Lock()
		if om.creator == ob {
			om.creator = nil
			if om.forgot {
				om.forgot = false
				ss.forgetLocked(ob, om)
			}
			if om.blocked {
				om.blocked = false
				pump = ss.mu.cl
			}
		}
		ss.mu.Unlock()
		if pump != nil {
			pump.pumpArrived()
		}
	}
	ob.created = ob.created[:0]
}

// unstoreLocked removes the whole session from the store and releases the
// bodies its messages held; memory keeps what it has.
// REQUIRES: ss.mu held.
func (ss *session) unstoreLocked(ob *outbox) {
	if ss.srv.store == nil {
		return
	}
	release := func(om *outMsg) {
		if om.stored && om.createdElsewhere(ob) {
			om.forgot = true // its creator deletes it after the creation (track)
			return
		}
		if om.stored {
			om.stored = false
			if om.msg.refs.Add(-1) == 0 {
				ob.batch.DeleteBody(om.msg.id)
			}
		}
	}
	for _, om := range ss.mu.inflight {
		release(om)
	}
	for _, om := range ss.mu.queue.items[ss.mu.queue.head:] {
		release(om)
	}
	ob.batch.DeleteSession(ss.id)
}

// holds reports whether an acknowledgement to c must wait for a commit:
// this unit of work has writes, or c already has acknowledgements waiting.
func (ob *outbox) holds(c *client) bool {
	return c.srv.store != nil && (ob.batch.Len() > 0 || len(ob.peerWaits) > 0 || c.held > 0)
}

// hold gives an acknowledgement to c a slot in its pending bytes (h.slot,
// reserved earlier, or a new one when negative), filled when the outbox's
// batch is durable. It runs on c's loop, which is the outbox's home.
func (ob *outbox) hold(h heldAck) {
	c := h.c
	c.held++
	if h.slot < 0 {
		h.slot = len(c.pend)
		c.pend = append(c.pend, nil)
	}
	c.pend[h.slot] = nil
	if !c.dirty {
		c.dirty = true
		ob.local = append(ob.local, c)
	}
	ob.held = append(ob.held, h)
}

// commit hands the batch, with the acknowledgements waiting for it, to the
// store. It never waits.
func (ob *outbox) commit() {
	after, keep, lazy := ob.after, ob.keep, ob.lazyOps
	ob.after, ob.keep, ob.lazyOps = nil, false, 0
	g := ob.srv.store
	if g == nil || (ob.batch.Len() == 0 && len(ob.held) == 0 && after == nil && len(ob.peerWaits) == 0) {
		if after != nil {
			after(nil)
		}
		ob.releaseCreated()
		return
	}
	held := ob.held
	ob.held = nil
	var gated func(error)
	if len(ob.peerWaits) > 0 {
		// The acknowledgements wait for the peers too (peerack.go).
		gated = ob.srv.cl.gate(ob, func(err error) { ob.srv.release(held, err) })
	}
	if lazy > 0 && lazy == ob.batch.Len() && len(held) == 0 && len(ob.peerWaits) == 0 && after == nil && !keep && len(ob.created) == 0 {
		// Only a new session's record: nothing acknowledged depends on
		// it before a later commit, which is fsynced (finishConnect).
		g.commitLazy(&ob.batch, func(error) {})
		ob.batch.Reset()
		return
	}
	// An empty batch still goes through the committer: it completes after
	// every earlier commit, so after never runs ahead of them.
	commit := g.commit
	if keep {
		commit = g.commitKept
	}
	commit(&ob.batch, func(err error) {
		if gated != nil {
			gated(err)
		} else {
			ob.srv.release(held, err)
		}
		if after != nil {
			after(err)
		}
	}, ob.home == nil)
	ob.batch.Reset()
	if len(ob.created) > 0 {
		ob.releaseCreated()
		if ob.batch.Len() > 0 {
			// Deletions that waited for the creations above.
			g.commit(&ob.batch, func(error) {}, ob.home == nil)
			ob.batch.Reset()
		}
	}
}

// release fills the slots of acknowledgements whose commit completed, on
// each client's loop. When the commit failed, a QoS 1/2 publish is
// refused: MQTT 5 clients get 0x97 (quota exceeded) and may retry; MQTT 3
// cannot be told, so the connection closes and the client resends after it
// reconnects.
func (s *Server) release(held []heldAck, err error) {
	if len(held) == 0 {
		return
	}
	if err != nil && !errors.Is(err, errStoreClosed) {
		s.stats.storeRefused.Add(len(held))
		s.logThrottled("refusing acknowledgements: the store cannot write", "err", err)
	}
	// Held acknowledgements all come from one unit of work, so from one
	// loop.
	l := held[0].c.loop
	_ = l.el.Execute(context.Background(), runFunc(func() {
		var now int64
		for _, h := range held {
			h.c.releaseAck(h, err)
			if h.at != 0 && err == nil && !h.c.closed {
				if now == 0 {
					now = monotime()
				}
				since(s.stats.lat.ack, h.at, now)
			}
		}
		for _, h := range held {
			c := h.c
			if c.held == 0 && c.dirty {
				c.flush()
			}
			if c.ackWait && c.held < maxHeldAcks(c) && !c.closed {
				c.ackWait = false
				_ = c.gc.Wake(nil) // the input held in decode
			}
		}
	}))
}

// releaseAck fills one slot. It runs on c's loop.
func (c *client) releaseAck(h heldAck, err error) {
	if c.closed {
		return // close wrote what it could and reset held
	}
	c.held--
	c.dirty = true
	if h.pkt != nil {
		if err != nil && h.failed != nil {
			if h.pkt = h.failed(); h.pkt == nil {
				c.pend[h.slot] = []byte{}
				c.fail(c.loop.ob, &codec.Error{Code: codec.QuotaExceeded, Msg: "cannot store the subscription change: " + err.Error()})
				return
			}
		}
		c.pend[h.slot] = h.pkt
		return
	}
	if err != nil && h.kind == codec.PUBCOMP {
		// The disk still holds the QoS 2 packet id PUBREL released: so
		// does memory again, and the client, which gets no PUBCOMP,
		// sends PUBREL again once it has reconnected.
		c.sess.mu.Lock()
		c.sess.addRxQoS2Locked(h.pid)
		c.sess.mu.Unlock()
		c.pend[h.slot] = []byte{}
		c.fail(c.loop.ob, &codec.Error{Code: codec.QuotaExceeded, Msg: "cannot store the end of a QoS 2 exchange: " + err.Error()})
		return
	}
	code := h.code
	if err != nil && (h.kind == codec.PUBACK || h.kind == codec.PUBREC) && !code.IsError() {
		if c.version != codec.V5 {
			c.logger().Warn("closing connection", "reason", "cannot store its message", "err", err)
			c.pend[h.slot] = []byte{}
			c.close()
			return
		}
		code = codec.QuotaExceeded
		if h.kind == codec.PUBREC {
			c.sess.mu.Lock()
			delete(c.sess.mu.rxQoS2, h.pid)
			c.sess.mu.Unlock()
		}
	}
	a := codec.Ack{Kind: h.kind, PacketID: h.pid}
	if c.version == codec.V5 {
		a.Code = code
	}
	c.pend[h.slot] = a.Append(make([]byte, 0, 6), c.version)
}

// storeUnhealthy reports why QoS 1/2 publishes cannot be accepted now, or
// nil.
func (s *Server) storeUnhealthy() error {
	if s.store == nil {
		return nil
	}
	return s.store.st.Healthy()
}

// purgeLoop drops expired messages from offline sessions' queues and
// expired retained messages, so that the store does not keep them until a
// client returns.
func (s *Server) purgeLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.purge()
		}
	}
}

func (s *Server) purge() {
	now := s.now()
	s.sessions.Lock()
	list := make([]*session, 0, len(s.sessions.m))
	for _, ss := range s.sessions.m {
		list = append(list, ss)
	}
	s.sessions.Unlock()
	ob := newOutbox(s, nil)
	for _, ss := range list {
		ss.mu.Lock()
		if ss.mu.cl == nil && ss.mu.queue.len() > 0 {
			q := &ss.mu.queue
			kept := q.items[:0]
			for _, om := range q.items[q.head:] {
				if om.msg.expired(now) {
					s.stats.droppedExpired.Add(1)
					ss.forgetLocked(ob, om)
					continue
				}
				kept = append(kept, om)
			}
			clear(q.items[len(kept):])
			q.items, q.head = kept, 0
		}
		ss.mu.Unlock()
	}
	for _, m := range s.retained.dropExpired(now) {
		if s.store != nil {
			ob.batch.DeleteRetained(m.topic)
		}
	}
	ob.flush()
}

// storeMetrics exposes the store's counters.
func (s *Server) storeMetrics(st *persist.Store) {
	set := s.stats.set
	set.NewGauge("gannet_store_commits_total", func() float64 { return float64(st.Stats().Commits) })
	set.NewGauge("gannet_store_syncs_total", func() float64 { return float64(st.Stats().Syncs) })
	set.NewGauge("gannet_store_ops_total", func() float64 { return float64(st.Stats().Ops) })
	set.NewGauge("gannet_store_bytes_written_total", func() float64 { return float64(st.Stats().BytesWritten) })
	set.NewGauge("gannet_store_failures_total", func() float64 { return float64(st.Stats().Failures) })
	set.NewGauge("gannet_store_elided_total", func() float64 { return float64(st.Stats().Elided) })
	set.NewGauge("gannet_store_held_deletions_dropped_total", func() float64 { return float64(st.Stats().HeldDropped) })
	set.NewGauge("gannet_store_pending_bytes", func() float64 { return float64(st.PendingBytes()) })
	set.NewGauge("gannet_store_healthy", func() float64 {
		if st.Healthy() != nil {
			return 0
		}
		return 1
	})
}
