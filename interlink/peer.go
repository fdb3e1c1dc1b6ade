package interlink

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// peer is another member and this node's lanes to it.
type peer struct {
	n     *Node
	name  string
	lanes []*lane
	rtt   atomic.Int64 // nanoseconds, from lane 0's pings
	st    *peerStats
	// forgotten is set once its routes were forgotten while it was
	// gone (Node.maintain); on n.mu.
	forgotten bool

	mu struct {
		sync.Mutex
		addr    string // interlink address, from gossip metadata
		gossip  string
		alive   bool
		left    bool
		goneAt  time.Time
		stopped bool
	}
}

func newPeer(n *Node, name string) *peer {
	p := &peer{n: n, name: name, st: n.stats.peer(name)}
	for i := range n.cfg.Lanes {
		l := &lane{p: p, idx: i, wake: make(chan struct{}, 1), comp: newCompressor(n.cfg.Compression)}
		p.lanes = append(p.lanes, l)
		n.wg.Add(1)
		go l.run()
	}
	p.st.gauges(p)
	return p
}

func (p *peer) setAlive(addr string) {
	p.mu.Lock()
	if addr != "" {
		p.mu.addr = addr
	}
	p.mu.alive, p.mu.left = true, false
	p.mu.Unlock()
	for _, l := range p.lanes {
		l.poke()
	}
}

func (p *peer) setGone(left bool) {
	p.mu.Lock()
	p.mu.alive, p.mu.left = false, left
	p.mu.goneAt = time.Now()
	p.mu.Unlock()
}

func (p *peer) isAlive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.alive && !p.mu.stopped
}

func (p *peer) left() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.left
}

func (p *peer) address() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.addr
}

func (p *peer) gossipAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.gossip
}

func (p *peer) goneAt() time.Time {
	t, _ := p.goneSince()
	return t
}

// queued returns how many reliable records wait for the peer.
func (p *peer) queued() int {
	n := 0
	for _, l := range p.lanes {
		l.mu.Lock()
		n += len(l.mu.rel) - l.mu.head
		l.mu.Unlock()
	}
	return n
}

func (p *peer) goneSince() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.goneAt, !p.mu.alive
}

// stop ends the lanes for good (node stop, or the peer is forgotten).
func (p *peer) stop() {
	p.mu.Lock()
	p.mu.stopped = true
	p.mu.Unlock()
	for _, l := range p.lanes {
		l.mu.Lock()
		if l.mu.conn != nil {
			l.mu.conn.Close()
		}
		l.mu.Unlock()
		l.poke()
	}
	p.st.unregister()
}

func (p *peer) stopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.stopped
}

// dropQueues discards every queued record and returns how many reliable
// ones went.
func (p *peer) dropQueues() int {
	var n int
	var tokens []uint64
	for _, l := range p.lanes {
		l.mu.Lock()
		n += len(l.mu.rel) - l.mu.head
		for _, r := range l.mu.rel[l.mu.head:] {
			if r.token != 0 {
				tokens = append(tokens, r.token)
			}
		}
		l.mu.rel, l.mu.head, l.mu.buf = nil, 0, nil
		l.mu.unsent, l.mu.sentIdx = 0, 0
		l.paceLocked()
		l.mu.Unlock()
	}
	p.st.droppedFull.Add(n)
	if len(tokens) > 0 {
		p.n.h.Settled(p.name, tokens)
	}
	return n
}

// lane is one TCP connection's worth of sending to a peer: a buffer of
// unreliable records, a queue of reliable ones kept until acknowledged,
// and a writer goroutine that batches, compresses and writes them.
type lane struct {
	p    *peer
	idx  int
	wake chan struct{}
	comp *compressor

	mu struct {
		sync.Mutex
		buf       []byte   // unreliable records not yet written
		rel       []relRec // reliable records not yet acknowledged, by seq
		head      int
		nextSeq   uint64            // last assigned in this run
		ackedBy   map[uint64]uint64 // per run (epoch): last seq acknowledged
		sentIdx   int               // rel[head:head+sentIdx] are written on this connection
		unsent    int               // bytes waiting to be written
		reserved  int               // room in rel taken by Reserve and not yet used
		behind    bool              // counted in the node's backlog (pace.go)
		stuck     bool              // behind without writing: not counted
		tookAt    time.Time         // when the writer last took records
		connected bool
		conn      net.Conn
	}

	// writer-owned scratch
	spare []byte
	raw   []byte
	frame []byte
	recs  [][]byte
}

type relRec struct {
	epoch uint64 // the run that first sent it (older ones come from the store)
	seq   uint64
	token uint64 // the broker's, for SendTracked; 0 for none
	rec   []byte
}

func (l *lane) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *lane) isConnected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.connected
}

func (l *lane) queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.rel) - l.mu.head
}

func (l *lane) sendRel(kind byte, body []byte, token uint64) (uint64, error) {
	return l.enqueue(kind, body, true, false, token, 0, 0)
}

func (l *lane) send(kind byte, body []byte, reliable bool) error {
	_, err := l.enqueue(kind, body, reliable, false, 0, 0, 0)
	return err
}

// enqueue queues a record and returns a reliable one's seq. A record kept
// from an earlier run (epoch != 0) goes under its old identity, so that
// the receiver recognises it if it had it already. held: a reliable
// record goes into room taken by Reserve.
func (l *lane) enqueue(kind byte, body []byte, reliable, held bool, token, epoch, seq uint64) (uint64, error) {
	cfg := &l.p.n.cfg
	if len(body) > cfg.MaxFrame/2 {
		l.p.st.droppedFull.Inc()
		return 0, ErrTooLarge
	}
	l.mu.Lock()
	before := l.mu.unsent
	if reliable {
		if held {
			l.mu.reserved--
		} else if epoch == 0 && len(l.mu.rel)-l.mu.head+l.mu.reserved >= laneLimit(cfg) {
			l.mu.Unlock()
			l.p.st.droppedFull.Inc()
			return 0, ErrQueueFull
		}
		if epoch == 0 {
			l.mu.nextSeq++
			epoch, seq = l.p.n.epoch, l.mu.nextSeq
		}
		rec := appendRecord(make([]byte, 0, len(body)+6), kind, true, body)
		l.mu.rel = append(l.mu.rel, relRec{epoch: epoch, seq: seq, token: token, rec: rec})
		l.mu.unsent += len(rec)
	} else {
		if !l.mu.connected {
			l.mu.Unlock()
			l.p.st.droppedDown.Inc()
			return 0, ErrNotLinked
		}
		if len(l.mu.buf) >= unreliableLimit(cfg) {
			// The peer or the link is behind: QoS 0 and other
			// unreliable records give way.
			l.mu.Unlock()
			l.p.st.droppedFull.Inc()
			return 0, ErrQueueFull
		}
		n := len(l.mu.buf)
		l.mu.buf = appendRecord(l.mu.buf, kind, false, body)
		l.mu.unsent += len(l.mu.buf) - n
	}
	after := l.mu.unsent
	connected := l.mu.connected
	l.paceLocked()
	l.mu.Unlock()
	// Wake the writer when a batch starts and when it fills; in between
	// it is waiting out the batch delay anyway.
	if connected && (before == 0 || (before < cfg.BatchBytes && after >= cfg.BatchBytes)) {
		l.poke()
	}
	return seq, nil
}

// unreliableLimit bounds the unreliable records a lane holds while its
// writer is behind, and so (with BatchBytes for the reliable part) a frame.
func unreliableLimit(cfg *Config) int {
	return min(8*cfg.BatchBytes, cfg.MaxFrame/4)
}

// ackTo drops the reliable records up to seq: the peer has them.
func (l *lane) ackTo(epoch, seq uint64) {
	var tokens []uint64
	defer func() {
		if len(tokens) > 0 {
			l.p.n.h.Settled(l.p.name, tokens)
		}
		if l.urgent() {
			l.poke() // what gathered behind the acknowledged records goes now
		}
	}()
	l.mu.Lock()
	if l.mu.ackedBy == nil {
		l.mu.ackedBy = make(map[uint64]uint64)
	}
	if seq > l.mu.ackedBy[epoch] {
		l.mu.ackedBy[epoch] = seq
	}
	// Records leave in queue order; one run's records are acknowledged
	// after the earlier runs' that precede them, whatever order the
	// acknowledgements come in.
	for l.mu.head < len(l.mu.rel) && l.mu.rel[l.mu.head].seq <= l.mu.ackedBy[l.mu.rel[l.mu.head].epoch] {
		r := l.mu.rel[l.mu.head]
		if r.token != 0 {
			tokens = append(tokens, r.token)
		}
		if l.mu.sentIdx > 0 {
			l.mu.sentIdx--
		} else {
			// Acknowledged before this connection wrote it again (the
			// receiver had it from an earlier one): it no longer waits.
			l.mu.unsent -= len(r.rec)
			l.paceLocked()
		}
		l.mu.rel[l.mu.head] = relRec{}
		l.mu.head++
	}
	if l.mu.head == len(l.mu.rel) {
		l.mu.rel, l.mu.head = l.mu.rel[:0], 0
	} else if l.mu.head >= 1024 && l.mu.head*2 >= len(l.mu.rel) {
		k := copy(l.mu.rel, l.mu.rel[l.mu.head:])
		clear(l.mu.rel[k:])
		l.mu.rel, l.mu.head = l.mu.rel[:k], 0
	}
	l.mu.Unlock()
}

// run keeps the lane connected while the peer is alive.
func (l *lane) run() {
	n := l.p.n
	defer n.wg.Done()
	backoff := 50 * time.Millisecond
	var lastWarn time.Time
	for {
		select {
		case <-n.done:
			return
		default:
		}
		if l.p.stopped() {
			return
		}
		if !l.p.isAlive() {
			select {
			case <-l.wake:
			case <-n.done:
				return
			}
			continue
		}
		conn, lk, err := l.dial()
		if err != nil {
			if time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				n.log.Warn("cannot link to peer; retrying", "peer", l.p.name, "lane", l.idx, "err", err)
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-n.done:
				t.Stop()
				return
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		lastWarn = time.Time{}
		err = l.serve(conn, lk)
		select {
		case <-n.done:
			return
		default:
		}
		if errors.Is(err, ErrFrame) {
			n.stats.badFrame(err)
			n.log.Warn("closing link: bad frame", "peer", l.p.name, "lane", l.idx, "err", err)
		} else if errors.Is(err, errRekey) {
			n.tls.rekeys.Inc()
			n.log.Debug("replacing the link for fresh TLS keys", "peer", l.p.name, "lane", l.idx)
		} else if err != nil && !l.p.stopped() {
			n.log.Info("link to peer lost", "peer", l.p.name, "lane", l.idx, "err", err)
		}
	}
}

// link is the dialer's framing of one authenticated connection: acks and
// pongs are read with in, and what the lane writes is sealed with out
// (both nil-ciphered on an insecure link or one over TLS). raw is the
// TCP connection under TLS, closed to cut the link at once (a tls.Conn's
// Close may first wait to send its close_notify).
type link struct {
	in  *frameReader
	out *frameCipher
	raw net.Conn
	// records counts the TLS records written on a link over TLS, up to
	// recordLimit (tls.go); 0 without TLS.
	records, recordLimit int64
}

// wrote counts a frame written on the link.
func (lk *link) wrote(f []byte) {
	if lk.recordLimit > 0 {
		lk.records += tlsRecords(len(f))
	}
}

// dial connects and authenticates: TLS first when the links run over it,
// then the interlink handshake (inside TLS), all within
// Config.HandshakeTimeout.
func (l *lane) dial() (net.Conn, *link, error) {
	n := l.p.n
	addr := l.p.address()
	if addr == "" {
		return nil, nil, fmt.Errorf("no interlink address gossiped")
	}
	raw, err := net.DialTimeout("tcp", addr, n.cfg.HandshakeTimeout)
	if err != nil {
		return nil, nil, err
	}
	conn := raw
	fail := func(err error) (net.Conn, *link, error) {
		raw.Close()
		return nil, nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(n.cfg.HandshakeTimeout))
	if n.tls != nil {
		if conn, err = n.tlsClient(raw); err != nil {
			return fail(fmt.Errorf("%s: %w", addr, err))
		}
	}
	h := hello{node: n.cfg.NodeName, epoch: n.epoch, lane: uint8(l.idx), compression: n.cfg.Compression}
	_, _ = rand.Read(h.nonce[:])
	hf := h.append(nil)
	if _, err := conn.Write(hf); err != nil {
		return fail(err)
	}
	hp := hf[frameHeader:]
	br := bufio.NewReaderSize(conn, 64<<10)
	t, p, _, err := readFrame(br, nil, 4096)
	if err != nil {
		// Over TLS 1.3 an acceptor that refuses this node's certificate
		// says so only now, with an alert.
		n.peerRefusedTLS(err)
		return fail(err)
	}
	switch t {
	case frameWelcome:
	case frameReject:
		r := &reader{b: p}
		return fail(fmt.Errorf("refused by %s: %s", addr, r.str("reason", 4096)))
	default:
		return fail(frameErr("frame type %d during handshake", t))
	}
	w, err := decodeWelcome(p)
	if err != nil {
		return fail(err)
	}
	if w.node != l.p.name {
		return fail(fmt.Errorf("%s answered as %q, expected %q", addr, w.node, l.p.name))
	}
	want := proof(n.secret, "welcome", hp, w.node, w.nonce)
	if !hmac.Equal(want[:], w.proof[:]) {
		n.stats.handshakeFailures.Inc()
		n.log.Warn("peer rejected: it does not know the cluster secret", "peer", w.node, "addr", addr)
		return fail(fmt.Errorf("%s failed the cluster secret check", addr))
	}
	pr := proof(n.secret, "hello", hp, w.node, w.nonce)
	if _, err := conn.Write(appendBytesFrame(nil, frameProof, pr[:])); err != nil {
		return fail(err)
	}
	_ = raw.SetDeadline(time.Time{})
	lk := &link{in: &frameReader{r: br, max: 4096}, raw: raw}
	if n.tls != nil {
		lk.recordLimit = n.tls.recordLimit
	}
	if n.sealed() {
		out, back := linkKeys(n.secret, h.nonce, w.nonce, h.node, w.node)
		lk.out, lk.in.c = newFrameCipher(out), newFrameCipher(back)
	}
	return conn, lk, nil
}

// serve writes batches on conn until it fails, or over TLS until it has
// written its share of records (errRekey). A second goroutine reads the
// peer's acknowledgements and pongs.
func (l *lane) serve(conn net.Conn, lk *link) (err error) {
	n := l.p.n
	l.mu.Lock()
	l.mu.connected = true
	l.mu.conn = lk.raw
	replay := l.mu.sentIdx
	l.mu.sentIdx = 0 // everything unacknowledged goes again
	l.mu.unsent = len(l.mu.buf)
	for _, r := range l.mu.rel[l.mu.head:] {
		l.mu.unsent += len(r.rec)
	}
	l.paceLocked()
	l.mu.Unlock()
	if replay > 0 {
		l.p.st.replayed.Add(int(replay))
	}
	defer func() {
		lk.raw.Close()
		l.mu.Lock()
		l.mu.connected = false
		l.mu.conn = nil
		if !errors.Is(err, errRekey) {
			// A link that failed drops what waits unreliably; one
			// replaced for new keys hands it to the next.
			l.mu.unsent -= len(l.mu.buf)
			l.p.st.droppedDown.Add(countRecords(l.mu.buf))
			l.mu.buf = l.mu.buf[:0]
		}
		l.paceLocked()
		l.mu.Unlock()
	}()
	if l.idx == 0 {
		n.h.PeerUp(l.p.name)
	}

	readErr := make(chan error, 1)
	go func() { readErr <- l.readAcks(lk.in) }()

	var ping <-chan time.Time
	if l.idx == 0 {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		ping = t.C
	}
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	// A writer that missed a wake-up still writes within a tick.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	l.poke() // write what waits
	for {
		select {
		case <-l.wake:
		case <-tick.C:
			if !l.pending() {
				continue
			}
		case <-ping:
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
			f, err := lk.out.finish(appendBytesFrame(l.frame[:0], framePing, b[:]), 0)
			l.frame = f
			if err != nil {
				return err
			}
			if _, err := conn.Write(f); err != nil {
				return err
			}
			lk.wrote(f)
			continue
		case err := <-readErr:
			return err
		case <-n.done:
			return nil
		}
		if l.p.stopped() {
			return nil
		}
		// Wait out the batch delay unless the batch is full already, or
		// reliable records wait while none is in flight (urgent).
		if d := n.cfg.BatchDelay; d > 0 && !l.urgent() {
			delay.Reset(d)
		wait:
			for l.unsentBytes() < n.cfg.BatchBytes && !l.urgent() {
				select {
				case <-delay.C:
					break wait
				case <-l.wake:
				case err := <-readErr:
					delay.Stop()
					return err
				case <-n.done:
					delay.Stop()
					return nil
				}
			}
			delay.Stop()
		}
		if err := l.writeAll(conn, lk); err != nil {
			return err
		}
		if lk.recordLimit > 0 && lk.records >= lk.recordLimit {
			return errRekey
		}
	}
}

// pending reports whether anything waits to be written on this
// connection.
func (l *lane) pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.buf) > 0 || len(l.mu.rel)-l.mu.head > l.mu.sentIdx
}

// urgent reports whether reliable records wait to be written while none
// written on this connection awaits its acknowledgement. Those go at once
// rather than after the batch delay, as TCP's Nagle algorithm does: a
// publisher waiting for each acknowledgement (which waits for the peer's)
// gets a round trip, not a round trip and a delay, while at a high rate
// records still gather behind the ones in flight. Unreliable records
// always wait for the delay: nothing acknowledges them.
func (l *lane) urgent() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.sentIdx == 0 && len(l.mu.rel)-l.mu.head > 0
}

func (l *lane) unsentBytes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.unsent
}

// writeAll writes everything waiting, in frames of about BatchBytes,
// each compressed (when large enough) and then sealed with lk.out.
func (l *lane) writeAll(conn net.Conn, lk *link) error {
	out := lk.out
	cfg := &l.p.n.cfg
	for {
		l.mu.Lock()
		l.recs = l.recs[:0]
		size := 0
		// A frame carries consecutive records of one run.
		var epoch, first, last uint64
		for i := l.mu.head + l.mu.sentIdx; i < len(l.mu.rel) && size < cfg.BatchBytes; i++ {
			r := l.mu.rel[i]
			if len(l.recs) == 0 {
				epoch, first = r.epoch, r.seq
			} else if r.epoch != epoch || r.seq != last+1 {
				break
			}
			l.recs = append(l.recs, r.rec)
			size += len(r.rec)
			last = r.seq
		}
		var unrel []byte
		if size < cfg.BatchBytes && len(l.mu.buf) > 0 {
			unrel = l.mu.buf
			l.mu.buf = l.spare[:0]
			l.spare = nil
			size += len(unrel)
		}
		l.mu.unsent -= size
		// Taken counts as sent: an acknowledgement can come back before
		// Write returns, and must not count these as waiting. A failed
		// write ends the connection, and the next one starts over from
		// the last acknowledged.
		l.mu.sentIdx += len(l.recs)
		if size > 0 {
			l.tookLocked()
		}
		l.mu.Unlock()
		if size == 0 {
			return nil
		}
		l.raw = l.raw[:0]
		for _, r := range l.recs {
			l.raw = append(l.raw, r...)
		}
		l.raw = append(l.raw, unrel...)
		nrel := len(l.recs)
		msgs := nrel + countRecords(unrel)
		if unrel != nil {
			l.spare = unrel[:0]
		}
		f := l.frame[:0]
		f = appendFrame(f, frameBatch)
		zip := cfg.Compression != CompressNone && len(l.raw) >= cfg.CompressMin
		var flags byte
		if zip {
			flags = batchZipped
		}
		f = append(f, flags)
		if nrel == 0 {
			epoch, first = l.p.n.epoch, 0
		}
		f = binary.AppendUvarint(f, epoch)
		f = binary.AppendUvarint(f, first)
		if zip {
			f = binary.AppendUvarint(f, uint64(len(l.raw)))
			f = l.comp.compress(f, l.raw)
		} else {
			f = append(f, l.raw...)
		}
		f, err := out.finish(f, 0)
		l.frame = f
		if err != nil {
			return err
		}
		if _, err := conn.Write(f); err != nil {
			return err
		}
		lk.wrote(f)
		st := l.p.st
		st.batchesSent.Inc()
		st.msgsSent.Add(msgs)
		st.rawSent.Add(len(l.raw))
		st.wireSent.Add(len(f))
	}
}

// readAcks reads what the peer sends back on a lane: acknowledgements and
// pongs.
func (l *lane) readAcks(in *frameReader) error {
	for {
		t, p, err := in.next()
		if err != nil {
			return err
		}
		switch t {
		case frameAck:
			epoch, seq, err := decodeAck(p)
			if err != nil {
				return err
			}
			l.ackTo(epoch, seq)
		case framePong:
			if len(p) == 8 {
				rtt := time.Now().UnixNano() - int64(binary.BigEndian.Uint64(p))
				l.p.rtt.Store(rtt)
				l.p.st.rtt.Update(float64(rtt) / 1e9)
			}
		case frameReject:
			r := &reader{b: p}
			return fmt.Errorf("peer closed the link: %s", r.str("reason", 4096))
		default:
			return frameErr("frame type %d from the receiving side", t)
		}
	}
}

// countRecords counts the records in well-formed record bytes.
func countRecords(b []byte) int {
	n := 0
	for len(b) > 0 {
		v, k := binary.Uvarint(b[1:])
		if k <= 0 {
			break
		}
		b = b[1+k+int(v):]
		n++
	}
	return n
}
