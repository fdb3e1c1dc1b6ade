package server

import (
	"bytes"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/persist"
)

// pendingWill is a will message waiting out its delay. Exactly one of
// cancel and fire takes effect.
type pendingWill struct {
	srv    *Server
	msg    *message
	client string
	stored bool // written to the store (persistent session); deleted when settled
	done   atomic.Bool
	timer  *time.Timer
}

// cancel drops the will: the session resumed in time [MQTT-3.1.3-9].
func (w *pendingWill) cancel(ob *outbox) {
	if w.done.CompareAndSwap(false, true) {
		if w.timer != nil {
			w.timer.Stop()
		}
		if w.stored {
			ob.batch.DeleteWill(w.client)
		}
	}
}

// fireNow publishes the will unless it was cancelled or already sent.
func (w *pendingWill) fireNow() {
	if !w.done.CompareAndSwap(false, true) {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	w.srv.stats.willsSent.Add(1)
	ob := newOutbox(w.srv, nil)
	if w.stored {
		ob.batch.DeleteWill(w.client)
	}
	w.srv.publishOn(ob, w.msg)
	ob.flush()
}

// willDue runs when a will's delay is over.
func (ss *session) willDue(w *pendingWill) {
	ss.mu.Lock()
	if ss.mu.will == w {
		ss.mu.will = nil
	}
	ss.mu.Unlock()
	w.fireNow()
}

// scheduleWill publishes a will after an unexpected close: at once without
// a delay, else when the delay or the session ends, whichever comes first
// [MQTT-3.1.2-8, MQTT-3.1.3-9]. A persistent session's delayed will is
// stored, so that it still comes after a restart.
func (s *Server) scheduleWill(ob *outbox, sess *session, m *message, delay uint32, expiry time.Duration) {
	w := &pendingWill{srv: s, msg: m, client: sess.id}
	if delay == 0 {
		w.fireNow()
		return
	}
	d := min(time.Duration(delay)*time.Second, expiry)
	sess.mu.Lock()
	if sess.mu.ended {
		sess.mu.Unlock()
		w.fireNow()
		return
	}
	if sess.mu.cl != nil {
		// The client came back (on another loop) between its old
		// connection's close and this: the session resumed before the
		// delay ran out, so no will [MQTT-3.1.3-9].
		sess.mu.Unlock()
		return
	}
	sess.mu.will = w
	if sess.persistentLocked() {
		w.stored = true
		ob.batch.PutWill(sess.id, &persist.Will{Msg: *m.record(), FireAt: time.Now().Add(d).UnixNano()})
	}
	w.timer = time.AfterFunc(d, func() { sess.willDue(w) })
	sess.mu.Unlock()
}

// publishInternal publishes a message that no client connection carries
// ($SYS): retained handling and routing as for a client's publish.
func (s *Server) publishInternal(m *message) {
	ob := newOutbox(s, nil)
	s.publishOn(ob, m)
	ob.flush()
}

// publishOn stores a retained message and routes m, collecting the work in
// ob.
func (s *Server) publishOn(ob *outbox, m *message) (int, bool) {
	if m.retain {
		s.setRetained(ob, m)
	}
	return s.route(ob, m)
}

// setRetained replaces the retained message of m's topic, in memory and in
// the store.
func (s *Server) setRetained(ob *outbox, m *message) {
	if s.cl != nil {
		// Versions order copies across the cluster; a clearing's is kept
		// (a tombstone) so that an older copy from a peer does not bring
		// the message back. Alone, a node needs neither.
		m.stamp = s.stamp()
	}
	lim := s.limits()
	if why := s.retained.setBounded(m, lim.MaxRetained, lim.MaxRetainedBytes); why != "" {
		// Delivered all the same, and acknowledged: the publisher would
		// resend a message its subscribers already have.
		s.stats.retainedRefused[why].Inc()
		s.logThrottled("not retaining a message: the broker holds --"+strings.ReplaceAll(why, "_", "-"), "topic", clip(m.topic))
		return
	}
	if s.cl != nil && !bytes.HasPrefix(m.topic, []byte("$SYS/")) {
		// $SYS statistics are each node's own.
		s.cl.replicateRetained(m)
	}
	s.storeRetained(ob, m)
}

// storeRetained adds a retained message or its clearing, as the retained
// store took it, to ob's store writes. A clearing with a stamp is kept, as
// the store keeps it in memory (a tombstone), so that after a restart a
// peer's older copy does not bring the message back; one without (a node
// alone) is deleted.
func (s *Server) storeRetained(ob *outbox, m *message) {
	switch {
	case s.store == nil:
	case len(m.payload) > 0:
		ob.batch.PutRetained(m.record())
	case m.stamp != 0:
		ob.batch.ClearRetained(m.topic, m.stamp)
	default:
		ob.batch.DeleteRetained(m.topic)
	}
}
