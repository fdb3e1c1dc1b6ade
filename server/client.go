package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

// client is one network connection. Unless a field says otherwise it is
// owned by the connection's event loop and touched only there.
//
// A broker holds hundreds of thousands of these, mostly idle, so the
// struct keeps inline only what every connection uses (224 bytes, one
// size class of the allocator): what few connections need lives behind
// info (what CONNECT gave, made before it is accepted) and rare
// (loop-only state, made on first use), and the buffers for bytes to
// write are given back when the connection is idle (checkDeadlines). The order of the fields packs
// them without padding; TestClientSize keeps it so.
type client struct {
	srv  *Server
	gc   gnet.Conn
	loop *loop
	sess *session
	id   string // client id, set by CONNECT

	// ws is the WebSocket state of a connection from the WebSocket
	// listener (ws.go); nil for plain MQTT.
	ws *wsConn
	// tls is the TLS connection this one carries the plaintext of; nil
	// on the plain listener (tls.go).
	tls *tlsConn
	// ident is what the client authenticated as, with its compiled ACL;
	// nil without an authentication chain (auth.go).
	ident *identity
	// retainQ is the retained messages still to deliver after a
	// SUBSCRIBE (retainpace.go); nil: none.
	retainQ *retainBacklog
	// info is what few clients give: a username, MQTT 5 limits, an IPv6
	// zone (connectInfo); nil when the client gave none of them.
	info *connectInfo
	// rare is the state few connections need (clientRare); nil until
	// one does. Only the client's loop touches it.
	rare *clientRare

	// pend holds bytes to write at the end of the current unit of work.
	pend [][]byte
	// arena holds small packets (acks) queued in pend; reset after flush.
	arena []byte

	// lastRead is the broker clock at the last inbound bytes; until
	// CONNECT is accepted, when the connection opened, which the
	// connect timeout counts from.
	lastRead int64
	// For the write delay (coalesce.go): when c was last written
	// (monotime); whether it sent a request since, and when the write
	// after its last request was; whether its bytes are being held (the
	// stamp of its entry in loop.later); until when senders on other loops
	// may leave its bytes for the write timer (0: not now).
	wroteAt   int64
	askedAt   int64
	calmUntil atomic.Int64
	// held counts slots in pend waiting for a store commit; output pauses
	// while it is non-zero (durable.go).
	held int32
	// flow is, in one word that deliveries from any goroutine read: whether
	// the outbound buffer is above the high-water mark (flowSlow, written
	// on the loop), how many deliveries in the client's inflight window
	// other goroutines sent towards its loop that have not reached it
	// (flowTransit each), and whether the loop waits for them to pump the
	// session's queue (flowPump).
	flow atomic.Int32
	// waitSeq stamps c's entry in loop.later (coalesce.go). An entry
	// lives for one write delay, so a wrapping counter does.
	waitSeq uint16
	// keepAlive is the keepalive in seconds (MQTT's unit; the broker's
	// own bounds are at most 65535 s too); 0: none.
	keepAlive uint16
	// addr is the remote address (from the PROXY header or the TLS
	// listener where there is one); see remote.
	addr peerAddr

	version   codec.Version
	connected bool // CONNECT accepted
	closed    bool // OnClose ran or a close is under way
	// parked is set while CONNECT waits for peers to hand over the
	// session: later packets stay in the read buffer until it clears.
	parked bool
	// ackWait is set while the client's input waits for its held
	// acknowledgements (decode, maxHeldAcks); release wakes it.
	ackWait bool
	// proxy says whether a PROXY protocol header is still expected
	// (proxyRequired) or refused (proxyRefused) at the start of the
	// input; proxyNone once the first bytes are past.
	proxy   proxyMode
	dirty   bool
	asked   bool
	waiting bool
	// admitted: the connection counts against the admission limits
	// (limits.go).
	admitted bool
}

// connectInfo is what a client's address and CONNECT gave that most
// clients do not give. It is made and filled before the client joins its
// session (infoState) and not changed afterwards, so that any goroutine
// that finds the client through its session may read it.
type connectInfo struct {
	user string // the username CONNECT gave, for bans and the admin API
	// zone is the remote address's IPv6 zone, if it has one.
	zone string
	// maxPacket is the largest packet an MQTT 5 client said we may
	// send it; 0: no limit.
	maxPacket int
	// aliases are the outbound topic aliases (alias.go); nil when the
	// client allows none or they are turned off. Guarded by sess.mu like
	// every delivery, and used only on the client's own loop.
	aliases *aliasTable
}

// infoState returns c.info, making it on first use. Only before CONNECT
// is accepted, on c's loop.
func (c *client) infoState() *connectInfo {
	if c.info == nil {
		c.info = new(connectInfo)
	}
	return c.info
}

// clientRare is the part of a client that most connections never use,
// made on first use (client.rareState) and touched only on the client's
// loop.
type clientRare struct {
	// refusal is why the client's CONNECT will be refused, when
	// admission did not admit it (limits.go).
	refusal string
	// proxyCN is the client certificate CN a trusted balancer that
	// terminated TLS vouched for in the PROXY header
	// (Config.ProxyProtocolCertCN); empty otherwise.
	proxyCN string
	// aliasIn is the inbound topic aliases (client to server).
	aliasIn [][]byte
	// limit is the client's publish rate (ratelimit.go); nil: none.
	limit *pubLimit
	will  *message
	// willDelay is the v5 will delay interval in seconds.
	willDelay uint32
	// heldGen is the list of held connections this one is on (pace.go).
	heldGen uint64
	// While a closed connection lingers (close): until when (broker
	// clock), and how many more bytes it may send.
	lingerUntil int64
	lingerLeft  int
	// sampleAt is when a timed publish whose delivery sits in pend was
	// taken up, to observe at the write; 0: none (latency.go).
	sampleAt int64
	// slowSince is when the outbound buffer went above the high-water
	// mark (broker clock); 0: it is not.
	slowSince int64
	// disconnect: a DISCONNECT was received, so no will [MQTT-3.1.2-10].
	disconnect bool
	// partial is the start of a packet that arrives over several reads
	// (partial.go); empty: none.
	partial []byte
}

// rareState returns c.rare, making it on first use. On c's loop.
func (c *client) rareState() *clientRare {
	if c.rare == nil {
		c.rare = new(clientRare)
	}
	return c.rare
}

// peerAddr is a remote TCP address in 18 bytes: a string would cost 16
// and its bytes on the heap, a netip.AddrPort 32. An IPv6 zone, rare, is
// kept in connectInfo.zone. Set before CONNECT is accepted.
type peerAddr struct {
	ip   [16]byte // IPv4 as IPv4-mapped IPv6
	port uint16
}

// setAddr records ap as c's remote address.
func (c *client) setAddr(ap netip.AddrPort) {
	c.addr = peerAddr{ip: ap.Addr().As16(), port: ap.Port()}
	if z := ap.Addr().Zone(); z != "" {
		c.infoState().zone = z
	} else if c.info != nil {
		c.info.zone = ""
	}
}

// setAddrString records s ("host:port") as c's remote address, or none
// when s is not one.
func (c *client) setAddrString(s string) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		c.addr = peerAddr{}
		return
	}
	c.setAddr(ap)
}

// ipAddr is the IP address of c's peer; the zero Addr when unknown.
func (c *client) ipAddr() netip.Addr {
	if c.addr == (peerAddr{}) {
		return netip.Addr{}
	}
	ip := netip.AddrFrom16(c.addr.ip).Unmap()
	if c.info != nil && c.info.zone != "" {
		ip = ip.WithZone(c.info.zone)
	}
	return ip
}

// remote is c's peer address as host:port; "" when unknown.
func (c *client) remote() string {
	ip := c.ipAddr()
	if !ip.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(ip, c.addr.port).String()
}

// proxyCN is the client certificate CN a trusted balancer vouched for;
// "" for none.
func (c *client) proxyCN() string {
	if c.rare == nil {
		return ""
	}
	return c.rare.proxyCN
}

// pubLimit is c's publish rate (ratelimit.go); nil: none.
func (c *client) pubLimit() *pubLimit {
	if c.rare == nil {
		return nil
	}
	return c.rare.limit
}

// disconnected reports whether c sent DISCONNECT (no will).
func (c *client) disconnected() bool {
	return c.rare != nil && c.rare.disconnect
}

// lingering reports whether c is closed and lingers (close).
func (c *client) lingering() bool {
	return c.rare != nil && c.rare.lingerUntil != 0
}

// user is the username c's CONNECT gave; "" for none.
func (c *client) user() string {
	if c.info == nil {
		return ""
	}
	return c.info.user
}

// maxPacket is the largest packet c accepts; 0: no limit.
// REQUIRES: c.sess.mu held, or on c's loop.
func (c *client) maxPacket() int {
	if c.info == nil {
		return 0
	}
	return c.info.maxPacket
}

// aliases is c's outbound topic alias table; nil for none.
func (c *client) aliases() *aliasTable {
	if c.info == nil {
		return nil
	}
	return c.info.aliases
}

// logger returns c's log: lines carry its client id and remote address.
func (c *client) logger() connLogger { return connLogger{c} }

// connLogger writes a connection's log lines. The logger with the
// client's attributes is built only for a line the log level lets
// through: with the log at warn, a flood of refused connections built
// one per refusal for Info lines nobody reads.
type connLogger struct{ c *client }

func (l connLogger) Debug(msg string, args ...any) { l.log(slog.LevelDebug, msg, args) }
func (l connLogger) Info(msg string, args ...any)  { l.log(slog.LevelInfo, msg, args) }
func (l connLogger) Warn(msg string, args ...any)  { l.log(slog.LevelWarn, msg, args) }
func (l connLogger) Error(msg string, args ...any) { l.log(slog.LevelError, msg, args) }

func (l connLogger) log(level slog.Level, msg string, args []any) {
	c := l.c
	ctx := context.Background()
	if !c.srv.connLog.Enabled(ctx, level) {
		return
	}
	log := c.srv.connLog
	if c.id != "" {
		log = log.With("client", c.id, "remote", c.remote())
	} else {
		log = log.With("remote", c.remote())
	}
	log.Log(ctx, level, msg, args...)
}

// errClose closes the connection without sending anything more; it is used
// where the protocol asks for a silent close.
var errClose = errors.New("server: close")

// onTraffic decodes and handles every whole packet in the inbound buffer.
// Packet fields alias gnet's read buffer and die when this returns; handlers
// copy what they keep.
func (c *client) onTraffic(ob *outbox) gnet.Action {
	if c.retainQ != nil && c.retainQ.waking {
		c.pumpRetained(ob) // woken for its next turn
	}
	if c.connected {
		c.lastRead = c.srv.now() // before, the connect timeout counts from the open
	}
	if l := c.pubLimit(); l != nil && l.waking.Load() {
		// Held for its publish rate until the timer wakes it
		// (ratelimit.go): what arrives meanwhile waits unread, rather
		// than being viewed, and copied whenever gnet's ring buffer
		// wraps, on every arrival.
		if c.gc.InboundBuffered()-l.held >= holdLimit {
			c.fail(ob, c.rateFlood())
		}
		return gnet.None
	}
	if c.hasPartial() && !c.finishPartial(ob) {
		return gnet.None
	}
	buf, partial := c.peekInput()
	used := 0
	var err error
	if c.proxy != proxyNone {
		n, ok := c.proxyHeader(buf)
		if !ok {
			return gnet.None
		}
		used = n
	}
	if c.tls != nil && c.tls.rec != nil {
		return c.onTLSTraffic(ob, buf) // TLS on the loop (tlsrec.go)
	}
	if c.ws != nil {
		if used > 0 {
			_, _ = c.gc.Discard(used) // the PROXY header
		}
		return c.onWSTraffic(ob, buf[used:])
	}
	used, err = c.decode(ob, buf, used)
	if err == nil && !partial && !c.closed && used < len(buf) {
		used += c.keepPartial(buf[used:])
	}
	if used > 0 {
		_, _ = c.gc.Discard(used)
	}
	if err != nil {
		c.fail(ob, err)
		return gnet.None
	}
	if partial && !c.closed && !c.parked && !c.srv.cl.isHeld(c) && c.gc.InboundBuffered() > 0 {
		_ = c.gc.Wake(nil) // not held after all: the rest now
	}
	return gnet.None
}

// peekInput returns the bytes waiting in gnet's buffer. While the
// cluster's lanes are behind, a connection reads one packet and is held
// again (pace.go): it is given its first packet only, and partial says
// so. Viewing the whole of a held input, up to holdLimit, would cost gnet
// a copy of it on every wake when its ring buffer wraps.
func (c *client) peekInput() (buf []byte, partial bool) {
	if cl := c.srv.cl; cl != nil && c.connected && c.proxy == proxyNone && c.ws == nil &&
		(c.tls == nil || c.tls.rec == nil) && cl.node.Behind() {
		if n := c.gc.InboundBuffered(); n >= 64<<10 {
			hdr, _ := c.gc.Peek(5)
			if h, hn, err := codec.DecodeFixedHeader(hdr); err == nil && hn+h.Remaining < n {
				buf, _ = c.gc.Peek(hn + h.Remaining)
				return buf, true
			}
		}
	}
	if c.connected && c.proxy == proxyNone && c.ws == nil && (c.tls == nil || c.tls.rec == nil) {
		// A large packet arrives over many reads: until it is whole,
		// look at its header only (past 64 KiB; smaller input is cheap
		// to view). Viewing all that has come on every
		// read would cost gnet a copy of it whenever its ring buffer
		// wraps, the square of the packet's size in all.
		if n := c.gc.InboundBuffered(); n >= 64<<10 {
			hdr, _ := c.gc.Peek(5)
			if h, hn, err := codec.DecodeFixedHeader(hdr); err == nil && hn+h.Remaining > n &&
				hn+h.Remaining <= c.srv.cfg.MaxPacketSize {
				return nil, false
			}
		}
	}
	buf, _ = c.gc.Peek(-1)
	return buf, false
}

// decode handles every whole packet in buf from used on and returns how
// far it got and the error that stopped it. Packet fields alias buf;
// handlers copy what they keep.
func (c *client) decode(ob *outbox, buf []byte, used int) (int, error) {
	var err error
	for used < len(buf) && !c.closed && !c.parked {
		if used > 0 && c.srv.cl != nil && c.srv.cl.holdBack(c, false) {
			break // the rest once the lanes to peers catch up (pace.go)
		}
		h, n, herr := codec.DecodeFixedHeader(buf[used:])
		if herr == codec.ErrIncomplete {
			break
		}
		if herr != nil {
			err = herr
			break
		}
		if size := n + h.Remaining; size > c.srv.cfg.MaxPacketSize {
			err = &codec.Error{Code: codec.PacketTooLarge, Rule: "MQTT-3.2.2-15",
				Msg: fmt.Sprintf("packet of %d bytes exceeds the maximum of %d", size, c.srv.cfg.MaxPacketSize)}
			break
		}
		if len(buf)-used < n+h.Remaining {
			break
		}
		if rateCounted(h.Type) && c.pubLimit() != nil && !c.rateAllowed(h.Type, n+h.Remaining) {
			// The packet waiting for the bucket does not count: a
			// client that sends one large packet and waits for its
			// answer is slowed down, not cut off.
			if len(buf)-used-(n+h.Remaining) >= holdLimit {
				err = c.rateFlood()
			}
			break // the rest when the buckets have room (ratelimit.go)
		}
		if h.Type == codec.PUBLISH && h.Flags&0x06 != 0 && c.held >= maxHeldAcks(c) {
			// The disk is behind, and this client has as many
			// acknowledgements waiting for it as it may have
			// publishes unacknowledged: the rest of its input waits
			// in the buffer, TCP slows the client down, and release
			// wakes the connection when a commit completes.
			c.ackWait = true
			c.srv.stats.storeHeld.Inc()
			if len(buf)-used >= holdLimit {
				// gnet reads what the socket has whether or not it is
				// consumed: a client that goes on sending is refused
				// rather than buffered without bound.
				err = &codec.Error{Code: codec.ReceiveMaximumExceeded,
					Msg: "more QoS 1/2 publishes unacknowledged than the receive maximum while the disk is behind"}
			}
			break
		}
		if c.retainQ != nil && c.retainQ.waking {
			// A SUBSCRIBE earlier in this input starts its retained
			// messages before the answer to anything after it.
			c.pumpRetained(ob)
		}
		body := buf[used+n : used+n+h.Remaining]
		used += n + h.Remaining
		c.srv.stats.received(n + h.Remaining)
		if err = c.handle(ob, h, body); err != nil {
			break
		}
	}
	return used, err
}

// proxyHeader deals with the start of the input while a PROXY protocol
// header is expected or refused: it returns the header's length (0 for
// none), or false when more bytes are needed or the connection was
// refused.
func (c *client) proxyHeader(buf []byte) (int, bool) {
	if c.proxy == proxyBridge {
		if len(buf) < len(bridgeToken{}) {
			return 0, false
		}
		var tc *tlsConn
		switch v := c.srv.tlsl.claim(buf[:len(bridgeToken{})]).(type) {
		case *tlsConn:
			tc = v
		case *tlsProbe: // Start learning the loops (probeLoops)
			v.got <- c.loop.el
			c.closeNow()
			return 0, false
		default:
			c.logger().Warn("closing connection", "reason", "unknown token on the TLS listener's internal socket")
			c.srv.stats.protocolErrors.Add(1)
			c.close()
			return 0, false
		}
		c.tls, c.proxy = tc, proxyNone
		c.setAddrString(tc.remote)
		if tc.ws {
			c.ws = &wsConn{} // from the WebSocket over TLS listener
		}
		if !c.admitClient() {
			c.closeNow()
			return 0, false
		}
		return len(bridgeToken{}), true
	}
	if c.proxy == proxyRefused {
		yes, unsure := proxySignature(buf)
		switch {
		case unsure:
			return 0, false // neither CONNECT nor a header yet: wait
		case !yes:
			c.proxy = proxyNone
			return 0, true
		}
		c.logger().Warn("closing connection", "reason", "PROXY protocol header from a peer outside --proxy-protocol-from")
		c.srv.stats.proxyUntrusted.Inc()
		c.close()
		return 0, false
	}
	n, src, err := parseProxy(buf)
	if err == nil && c.srv.cfg.ProxyProtocolCertCN {
		var cn string
		if cn, err = proxyCertCN(buf[:n]); cn != "" {
			c.rareState().proxyCN = cn
		}
	}
	switch {
	case err == errIncomplete:
		return 0, false
	case err != nil:
		c.logger().Warn("closing connection", "reason", "bad PROXY protocol header", "err", err)
		c.srv.stats.protocolErrors.Add(1)
		c.srv.stats.proxyBad.Inc()
		c.close()
		return 0, false
	}
	c.proxy = proxyNone
	if src != "" {
		c.setAddrString(src)
	}
	if !c.admitClient() {
		c.closeNow()
		return 0, false
	}
	return n, true
}

// fail ends the connection because of err: the reason code goes to a v5
// client in a DISCONNECT (or CONNACK before CONNECT completed), a log line
// names the client and the cause, and the connection closes.
func (c *client) fail(ob *outbox, err error) {
	if c.closed {
		return
	}
	code := codec.CodeOf(err)
	if errors.Is(err, errClose) {
		c.logger().Debug("closing connection")
	} else {
		c.logger().Warn("closing connection", "reason", code.String(), "err", err)
		c.srv.stats.protocolErrors.Add(1)
	}
	if !errors.Is(err, errClose) && c.version == codec.V5 {
		if c.connected {
			c.writeNow(ob, (&codec.Disconnect{Code: code}).Append(nil, codec.V5))
		} else {
			c.writeNow(ob, (&codec.Connack{Code: code}).Append(nil, codec.V5))
		}
	}
	c.close()
}

// writeNow queues pkt and flushes this client at once, for the last bytes
// before a close.
func (c *client) writeNow(ob *outbox, pkt []byte) {
	ob.add(c, pkt)
	if c.dirty {
		c.flush()
	}
}

// A connection the broker ends lingers: after its last packet (CONNACK
// with a refusal, DISCONNECT with a reason) the write side is shut down
// (FIN), and what the client still sends is read and discarded for up to
// lingerTime or lingerBytes before the socket closes. Closing at once with
// the client's bytes unread would make the kernel answer with a reset,
// and a client still writing then sees "connection reset" or "broken
// pipe" instead of the reason code.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// close ends the connection after flushing what is pending: the session
// lets go of it now, and the socket lingers (above) before it closes.
// It runs on the client's loop.
func (c *client) close() {
	if c.closed {
		return
	}
	if c.tls != nil && c.tls.rec != nil {
		c.tlsCloseNotify()
	}
	c.flushLast()
	if c.closed {
		return // the last write failed: the connection is gone (OnClose ran)
	}
	c.closed = true
	if c.srv.stopping.Load() {
		_ = c.gc.Close()
		return
	}
	if c.gc.OutboundBuffered() == 0 {
		// With bytes still queued, gnet writes them before it closes;
		// shutting down the write side now would lose them.
		_ = unix.Shutdown(c.gc.Fd(), unix.SHUT_WR)
	}
	r := c.rareState()
	r.lingerUntil = c.srv.now() + int64(lingerTime)
	r.lingerLeft = lingerBytes
	c.detach()
}

// closeNow closes the socket at once after flushing what is pending, for
// the broker's own shutdown.
func (c *client) closeNow() {
	if c.closed {
		return
	}
	if c.tls != nil && c.tls.rec != nil {
		c.tlsCloseNotify()
	}
	c.flushLast()
	if c.closed {
		return // the last write failed: the connection is gone (OnClose ran)
	}
	c.closed = true
	_ = c.gc.Close()
}

// flushLast writes the last bytes before a close.
func (c *client) flushLast() {
	if c.held > 0 {
		// The last bytes go now; acknowledgements still waiting for the
		// disk never do.
		c.pend = slices.DeleteFunc(c.pend, func(b []byte) bool { return b == nil })
		c.held = 0
	}
	if c.dirty || len(c.pend) > 0 || c.tls != nil && c.tls.rec != nil && c.tls.rec.owes() {
		c.flush()
	}
}

// detach ends the client's part in its session (will, expiry, takeover
// see it gone) when the connection ends, whether the socket is closed yet
// or still lingering. It runs once.
func (c *client) detach() {
	if !c.connected {
		return
	}
	c.srv.stats.clients.Add(-1)
	if c.rare != nil && c.rare.limit != nil {
		c.srv.rates.leave(c.id, c.rare.limit) // ratelimit.go
	}
	c.onClose()
	c.connected = false
}

// discardLingering reads and drops what a lingering connection sends,
// closing it once lingerBytes have come.
func (c *client) discardLingering() {
	n, _ := c.gc.Discard(-1)
	c.rare.lingerLeft -= n
	if c.rare.lingerLeft <= 0 {
		_ = c.gc.Close()
	}
}

// flush writes the pending bytes with as few writev calls as possible and
// updates the slow-receiver state.
func (c *client) flush() {
	c.dirty = false
	if c.held > 0 {
		return // resumed by releaseAck
	}
	if !c.closed {
		c.writeParts(c.pend)
		if c.rare != nil && c.rare.sampleAt != 0 {
			c.wroteSample()
		}
	}
	clear(c.pend)
	c.pend = c.pend[:0]
	c.arena = c.arena[:0]
	if c.closed {
		return
	}
	if c.gc.OutboundBuffered() > c.srv.outboundHighWater() {
		if r := c.rareState(); r.slowSince == 0 {
			r.slowSince = c.srv.now()
			c.setSlow(true)
		}
	} else if c.rare != nil && c.rare.slowSince != 0 {
		c.rare.slowSince = 0
		c.setSlow(false)
	}
}

// The bits of client.flow.
const (
	flowSlow    = 1
	flowPump    = 2
	flowTransit = 4 // the count's unit
)

// slow reports whether c's outbound buffer is above the high-water mark.
func (c *client) slow() bool { return c.flow.Load()&flowSlow != 0 }

// setSlow records whether it is. It runs on c's loop.
func (c *client) setSlow(on bool) {
	if on {
		c.flow.Or(flowSlow)
	} else {
		c.flow.And(^flowSlow)
	}
}

// maxHeldAcks is how many acknowledgements may wait for the disk for one
// client before its QoS 1/2 publishes wait in its input: the receive
// maximum, which is as many as an MQTT 5 client may have unacknowledged.
// It bounds what a client can make the broker hold while the disk is
// slow, since an event loop never waits for the store (storeGate.commit).
func maxHeldAcks(c *client) int32 { return int32(c.srv.cfg.ReceiveMaximum) }

// writeOutOfTurn writes pkt ahead of c's pending bytes, which wait for a
// commit, framed as the connection needs.
func (c *client) writeOutOfTurn(pkt []byte) {
	if !c.closed {
		c.writeParts([][]byte{pkt})
	}
}

// writeParts puts p on the wire as the connection needs it: in WebSocket
// frames, sealed into TLS records (tlsrec.go), and with as few writev
// calls as IOV_MAX allows. A failed write closes the connection
// (OnClose).
func (c *client) writeParts(p [][]byte) {
	if c.ws != nil && c.ws.upgraded {
		p = c.ws.frames(p)
	}
	if c.tls != nil && c.tls.rec != nil {
		c.writeTLS(p)
		return
	}
	for len(p) > 0 && !c.closed {
		n := min(len(p), 1024) // IOV_MAX
		w, err := c.gc.Writev(p[:n])
		c.srv.stats.bytesOut.Add(w)
		c.srv.stats.writes.Inc()
		if err != nil {
			break
		}
		p = p[n:]
	}
}

// handle dispatches one packet.
func (c *client) handle(ob *outbox, h codec.FixedHeader, body []byte) error {
	if f := testBeforePacket.Load(); f != nil {
		(*f)(c, h)
	}
	if h.Type != codec.PUBACK && h.Type != codec.PUBCOMP {
		c.ready() // it waits for an answer (coalesce.go)
	}
	if !c.connected {
		if h.Type != codec.CONNECT {
			// The first packet must be CONNECT [MQTT-3.1.0-1].
			c.logger().Warn("closing connection", "reason", "first packet is not CONNECT", "type", h.Type.String())
			c.srv.stats.protocolErrors.Add(1)
			return errClose
		}
		return c.handleConnect(ob, h, body)
	}
	switch h.Type {
	case codec.PUBLISH:
		return c.handlePublish(ob, h, body)
	case codec.PUBACK, codec.PUBREC, codec.PUBREL, codec.PUBCOMP:
		sc := &c.loop.scratch
		sc.ack.Kind = h.Type
		if err := sc.ack.Decode(h, body, c.version); err != nil {
			return err
		}
		return c.handleAck(ob, &sc.ack)
	case codec.SUBSCRIBE:
		// A SUBSCRIBE listing more filters than a session may hold is
		// not decoded further: 100,000 listings would hold the loop
		// for milliseconds whatever they are.
		sc := &c.loop.scratch
		if err := sc.sub.DecodeAtMost(h, body, c.version, c.srv.limits().MaxSubscriptions); err != nil {
			if codec.CodeOf(err) == codec.QuotaExceeded {
				c.srv.adm.subLongRefused.Inc()
			}
			return err
		}
		return c.handleSubscribe(ob, &sc.sub)
	case codec.UNSUBSCRIBE:
		sc := &c.loop.scratch
		if err := sc.uns.Decode(h, body, c.version); err != nil {
			return err
		}
		return c.handleUnsubscribe(ob, &sc.uns)
	case codec.PINGREQ:
		var p codec.Pingreq
		if err := p.Decode(h, body, c.version); err != nil {
			return err
		}
		if c.held > 0 && c.srv.store.behind() {
			// The client's output waits behind its acknowledgements
			// for a disk that is far behind (durable.go); a PINGRESP
			// is not ordered with them and goes now, so that a
			// client waiting for its PUBACK does not take the broker
			// for gone. Otherwise it waits its turn: clients may use
			// it as a barrier behind what they were sent before.
			c.writeOutOfTurn(pingresp)
			return nil
		}
		ob.add(c, pingresp)
		return nil
	case codec.DISCONNECT:
		sc := &c.loop.scratch
		if err := sc.disc.Decode(h, body, c.version); err != nil {
			return err
		}
		return c.handleDisconnect(ob, &sc.disc)
	case codec.CONNECT:
		return &codec.Error{Code: codec.ProtocolError, Rule: "MQTT-3.1.0-2", Msg: "second CONNECT"}
	case codec.AUTH:
		if c.version != codec.V5 {
			return &codec.Error{Code: codec.MalformedPacket, Msg: "AUTH before MQTT 5"}
		}
		// No enhanced authentication was agreed in CONNECT, so AUTH is out
		// of place [MQTT-4.12.0-1].
		return &codec.Error{Code: codec.ProtocolError, Rule: "MQTT-4.12.0-1", Msg: "AUTH without an authentication method"}
	default:
		// CONNACK, SUBACK, UNSUBACK, PINGRESP go only from server to client.
		return &codec.Error{Code: codec.ProtocolError, Msg: h.Type.String() + " sent by a client"}
	}
}

var pingresp = []byte{byte(codec.PINGRESP) << 4, 0}

const pubrelCode = codec.PUBREL

// encodeAck encodes a PUBACK/PUBREC/PUBREL/PUBCOMP with Success into a new
// buffer.
func (c *client) encodeAck(kind codec.Type, pid uint16) []byte {
	a := codec.Ack{Kind: kind, PacketID: pid}
	return a.Append(make([]byte, 0, 4), c.version)
}

// frame returns the shared frame for a live delivery to c, and the topic
// alias bytes to write beside it (nil without an alias). ok is false when
// the packet would exceed the client's maximum packet size.
// REQUIRES: c.sess.mu held.
func (c *client) frame(ob *outbox, m *message, qos byte, retain bool, subIDs []uint32) (fr fanout.Frame, alias []byte, ok bool) {
	f := fanout.Form{V5: c.version == codec.V5, QoS: qos, Retain: retain}
	if f.V5 {
		f.SubIDs = subIDs
		if c.aliases() != nil && ob.home == c.loop {
			var a uint16
			a, f.Alias = c.aliases().lookup(m.topic)
			alias = aliasWire[a][:]
		}
	}
	fr = ob.enc.Frame(&f)
	if mp := c.maxPacket(); mp > 0 && fr.Size() > mp {
		if f.Alias == fanout.AliasSet {
			c.aliases().forget(uint16(alias[0])<<8 | uint16(alias[1]))
		}
		c.srv.stats.droppedTooLarge.Add(1)
		return fanout.Frame{}, nil, false
	}
	if f.Alias == fanout.AliasUse {
		c.srv.stats.aliasedOut.Add(1)
	}
	return fr, alias, true
}

// encodeStored encodes a queued or inflight message for c as it is now.
// REQUIRES: c.sess.mu held.
func (c *client) encodeStored(m *outMsg, now int64) (fanout.Frame, bool) {
	var p codec.Publish
	m.msg.template(&p, now)
	f := fanout.Form{V5: c.version == codec.V5, QoS: m.qos, Retain: m.retain}
	if f.V5 {
		f.SubIDs = m.subIDs
	}
	fr := fanout.Encode(&p, &f)
	if mp := c.maxPacket(); mp > 0 && fr.Size() > mp {
		c.srv.stats.droppedTooLarge.Add(1)
		return fanout.Frame{}, false
	}
	c.srv.stats.sentMessage()
	return fr, true
}

// encodeStoredDup is encodeStored with the DUP flag set, for redelivery
// [MQTT-3.3.1-1].
func (c *client) encodeStoredDup(m *outMsg, now int64) (fanout.Frame, bool) {
	fr, ok := c.encodeStored(m, now)
	if ok {
		fr.Buf[0] |= 0x08
	}
	return fr, ok
}
