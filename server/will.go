package server

import (
	"sync/atomic"
	"time"
)

// pendingWill is a will message waiting out its delay. Exactly one of
// cancel and fire takes effect.
type pendingWill struct {
	srv   *Server
	msg   *message
	done  atomic.Bool
	timer *time.Timer
}

// cancel drops the will: the session resumed in time [MQTT-3.1.3-9].
func (w *pendingWill) cancel() {
	if w.done.CompareAndSwap(false, true) && w.timer != nil {
		w.timer.Stop()
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
	w.srv.publishInternal(w.msg)
}

// scheduleWill publishes a will after an unexpected close: at once without
// a delay, else when the delay or the session ends, whichever comes first
// [MQTT-3.1.2-8, MQTT-3.1.3-9].
func (s *Server) scheduleWill(sess *session, m *message, delay uint32, expiry time.Duration) {
	w := &pendingWill{srv: s, msg: m}
	if delay == 0 {
		w.fireNow()
		return
	}
	d := min(time.Duration(delay)*time.Second, expiry)
	sess.mu.Lock()
	if sess.mu.ended || sess.mu.cl != nil {
		sess.mu.Unlock()
		w.fireNow()
		return
	}
	sess.mu.will = w
	w.timer = time.AfterFunc(d, func() {
		sess.mu.Lock()
		if sess.mu.will == w {
			sess.mu.will = nil
		}
		sess.mu.Unlock()
		w.fireNow()
	})
	sess.mu.Unlock()
}

// publishInternal publishes a message that no client connection carries
// (wills, $SYS): retained handling and routing as for a client's publish.
func (s *Server) publishInternal(m *message) {
	if m.retain {
		s.retained.set(m)
	}
	ob := newOutbox(nil)
	s.route(ob, m)
	ob.flush()
}
