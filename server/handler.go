package server

import (
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/gannetmq/gannet/codec"
)

// handler is the gnet event handler. Every method runs on the event loop
// that owns the connection; none blocks.
type handler struct {
	gnet.BuiltinEventEngine
	srv      *Server
	tickOnce sync.Once
}

func (h *handler) OnBoot(eng gnet.Engine) gnet.Action {
	h.srv.eng = eng
	return gnet.None
}

// OnTick runs first once the event loops exist (OnBoot runs before gnet
// makes them), which is when the engine is ready: connections may be
// registered with it from now on (tls.go). Later ticks do nothing.
func (h *handler) OnTick() (time.Duration, gnet.Action) {
	h.tickOnce.Do(func() { close(h.srv.engReady) })
	return 24 * time.Hour, gnet.None
}

// loopOf returns Gannet's state for the loop that owns gc, creating it on
// the loop's first connection.
func (s *Server) loopOf(gc gnet.Conn) *loop {
	el := gc.EventLoop()
	s.loops.Lock()
	defer s.loops.Unlock()
	l := s.loops.m[el]
	if l == nil {
		l = &loop{el: el}
		l.ob = newOutbox(s, l)
		l.initCoalesce(s.cfg.WriteDelay, s.cfg.WriteDelayBusy)
		s.loops.m[el] = l
	}
	return l
}

func (h *handler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	s := h.srv
	enrolled, _ := gc.Context().(*tlsConn) // a TLS connection handed over by the listener (tls.go)
	if enrolled != nil {
		enrolled.opened.Store(true)
	}
	if s.stopping.Load() {
		return nil, gnet.Close
	}
	l := s.loopOf(gc)
	now := s.now()
	c := &client{srv: s, gc: gc, loop: l, lastRead: now}
	if enrolled != nil {
		// Its handshake is done, its PROXY header read, its rate and
		// descriptors checked (beforeHandshake): the record layer takes
		// over (tlsrec.go).
		c.tls = enrolled
		c.setAddrString(enrolled.remote)
		if enrolled.ws {
			c.ws = &wsConn{} // from the WebSocket over TLS listener
		}
	} else if la := gc.LocalAddr(); la != nil && la.Network() == "unix" {
		// From the TLS listener, through the engine's unix socket
		// (tls.go): a token names the TLS connection, whose peer
		// address and certificate this client takes.
		c.proxy = proxyBridge
	} else if a := gc.RemoteAddr(); a != nil {
		if ta, ok := a.(*net.TCPAddr); ok {
			c.setAddr(ta.AddrPort())
		}
		c.proxy = s.proxyMode(a)
		if p := s.wsPort.Load(); p != 0 {
			if la, ok := gc.LocalAddr().(*net.TCPAddr); ok && la.Port == int(p) {
				c.ws = &wsConn{} // from the WebSocket listener (ws.go)
			}
		}
	}
	gc.SetContext(c)
	l.conns = append(l.conns, c)
	s.stats.connections.Add(1)
	if c.proxy == proxyBridge {
		return nil, gnet.None // admitted on its token (client.proxyHeader)
	}
	if enrolled != nil {
		if !c.admitClient() {
			c.closed = true
			return enrolled.rec.closeNotifyRecord(), gnet.Close
		}
		return nil, gnet.None
	}
	// Admission (limits.go): the rate and the descriptors before
	// anything is read; the counts once the address is final.
	kind := c.kind()
	if reason := s.adm.beforeRead(kind); reason != "" {
		s.adm.refuse(reason, c.remote(), kind)
		c.closed = true
		return nil, gnet.Close
	}
	if c.proxy != proxyRequired && !c.admitClient() {
		c.closed = true
		return nil, gnet.Close
	}
	return nil, gnet.None
}

func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*client)
	if !ok {
		return gnet.Close
	}
	if c.lingering() {
		c.discardLingering()
		return gnet.None
	}
	if cl := h.srv.cl; cl != nil && cl.holdBack(c, true) {
		// Read once the lanes to peers catch up (pace.go). The bytes
		// arrived: they count for the keepalive.
		c.lastRead = h.srv.now()
		return gnet.None
	}
	ob := c.loop.ob
	defer c.recoverPanic(ob)
	act := c.onTraffic(ob)
	ob.flush()
	c.answerNow()
	return act
}

// testBeforePacket, when a test sets it, runs before each packet is handled.
var testBeforePacket atomic.Pointer[func(*client, codec.FixedHeader)]

// recoverPanic ends a connection whose processing panicked, so that one
// client's bad input (a bug it found) costs that client its connection
// and not the broker its process: the panic is counted and logged with
// its stack (once per ten seconds), an MQTT 5 client is told 0x80, and
// the connection closes. What the panic left half done (a lock held, a
// session half changed) cannot be undone here: this keeps the broker
// serving the other clients and says where to look.
func (c *client) recoverPanic(ob *outbox) {
	r := recover()
	if r == nil {
		return
	}
	c.srv.stats.panics.Inc()
	if ok, sup := c.srv.logLimit.allow("panic", 1); ok {
		c.logger().Error("panic while serving a connection; closing it", "panic", fmt.Sprint(r),
			"suppressed", sup, "stack", string(debug.Stack()))
	}
	c.fail(ob, &codec.Error{Code: codec.UnspecifiedError, Msg: "internal error"})
	ob.flush()
}

func (h *handler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*client)
	if !ok {
		if _, ok := gc.Context().(*tlsConn); ok {
			h.srv.tlsl.open.Add(-1) // refused by OnOpen: the broker is stopping
		}
		return gnet.None
	}
	switch {
	case c.tls == nil:
	case c.tls.rec != nil:
		h.srv.tlsl.open.Add(-1)
	default:
		c.tls.loopClosed()
	}
	c.closed = true
	if c.rare != nil {
		c.rare.lingerUntil = 0 // over: the sweep lets go of c (loop.sweep)
		c.dropPartial()
	}
	c.releaseAdmission()
	h.srv.stats.connections.Add(-1)
	if err != nil && c.connected && !c.disconnected() {
		c.logger().Info("connection lost", "err", err)
	}
	clear(c.pend)
	c.pend = nil
	c.detach()
	return gnet.None
}

// checkDeadlines closes a connection whose keepalive ran out (1.5 times the
// interval [MQTT-3.1.2-24]), that was not connected within the connect
// timeout (no CONNECT, or one held that long), or that has been a
// slow receiver for too long. It also resumes a session's queue once a
// slow connection drained, and takes back the buffers of a connection
// with nothing to write (idle).
func (c *client) checkDeadlines(ob *outbox, now int64) {
	if c.lingering() && now > c.rare.lingerUntil {
		_ = c.gc.Close()
		return
	}
	if c.closed {
		return
	}
	cfg := c.srv.limits()
	grace := int64(c.keepAlive) * int64(time.Second) * 3 / 2
	switch {
	case !c.connected && now-c.lastRead > connectDeadline(cfg.ConnectTimeout, c.gc.Fd()):
		why := "no CONNECT within "
		if c.parked {
			why = "CONNECT not settled within " // the auth chain or a takeover took that long
		}
		c.logger().Info("closing connection", "reason", why+cfg.ConnectTimeout.String())
		// Nothing was said to it: no reason to linger, and a reset
		// rather than a FIN spares both ends the teardown (on loopback,
		// the peer's half of it runs in this loop's close).
		_ = c.gc.SetLinger(0)
		c.closeNow()
		return
	case c.connected && grace > 0 && now-c.lastRead > grace:
		// It counts from the CONNACK (finishConnect): a CONNECT held for
		// the auth chain or a takeover is bounded by the first case.
		c.logger().Info("closing connection", "reason", "keepalive timeout",
			"keepalive", (time.Duration(c.keepAlive) * time.Second).String())
		c.srv.stats.keepaliveTimeouts.Add(1)
		c.fail(ob, &codec.Error{Code: codec.KeepAliveTimeout, Msg: "no packet within 1.5 times the keepalive"})
		return
	}
	c.idle()
	if r := c.rare; r != nil && r.slowSince != 0 {
		if c.gc.OutboundBuffered() <= c.srv.outboundHighWater() {
			r.slowSince = 0
			c.setSlow(false)
		} else if cfg.SlowTimeout > 0 && now-r.slowSince > int64(cfg.SlowTimeout) {
			c.logger().Warn("closing connection", "reason", "slow receiver",
				"outbound_bytes", c.gc.OutboundBuffered(), "for", cfg.SlowTimeout.String())
			c.srv.stats.slowClosed.Add(1)
			c.close()
			return
		}
	}
	if c.connected && !c.slow() {
		c.pumpQueue(ob, now)
	}
}

// connectDeadline is how long the connection on descriptor fd may take
// to send its CONNECT: the timeout, and up to a quarter more, spread over
// the connections by their descriptors. Connections that opened together
// (a reconnect storm) and never send CONNECT would otherwise all reach the
// timeout in one sweep and be closed, and dial again, in one burst,
// holding their loops for tens of milliseconds.
func connectDeadline(timeout time.Duration, fd int) int64 {
	spread := uint64(fd) * 0x9e3779b97f4a7c15 >> 56 // 0 to 255
	return int64(timeout) + int64(timeout)/4*int64(spread)/255
}

// idle gives back the buffers of a connection that has nothing waiting to
// be written, so that an idle connection holds none: the next bytes for
// it allocate them again. The sweep calls it a few times a second, so a
// busy connection keeps reusing its buffers between sweeps.
func (c *client) idle() {
	if c.dirty || c.held > 0 || len(c.pend) > 0 {
		return
	}
	c.pend, c.arena = nil, nil
}

// shutdown is the last word to a client when the broker stops.
func (c *client) shutdown() {
	if c.closed {
		return
	}
	if c.connected && c.version == codec.V5 {
		c.pend = append(c.pend, (&codec.Disconnect{Code: codec.ServerShuttingDown}).Append(nil, codec.V5))
		c.dirty = true
	}
	// The broker going away is not the client's doing: wills stand.
	c.closeNow()
}

// gnetLogger sends gnet's own logs to slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(format string, args ...any) { g.l.Debug(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Infof(format string, args ...any)  { g.l.Debug(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Warnf(format string, args ...any)  { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Errorf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Fatalf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }
