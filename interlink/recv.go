package interlink

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"time"
)

// stream returns the state for k. A sender's earlier runs keep theirs: a
// sender that restarted replays what it kept from them under their
// identity. All runs of one sender's lane share its inLane.
func (n *Node) stream(k streamKey) *stream {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.streams[k]
	if st == nil {
		st = &stream{in: n.inLaneLocked(k.node, k.lane)}
		n.streams[k] = st
	}
	return st
}

// inLaneLocked returns the receiving side of a sender's lane.
// REQUIRES: n.mu held.
func (n *Node) inLaneLocked(node string, lane uint8) *inLane {
	k := streamKey{node: node, lane: lane}
	il := n.inLanes[k]
	if il == nil {
		il = newInLane(n, node, lane)
		n.inLanes[k] = il
	}
	return il
}

// streamsOf lists the runs of a sender's lane with their states.
func (n *Node) streamsOf(node string, lane uint8) map[uint64]*stream {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[uint64]*stream)
	for k, st := range n.streams {
		if k.node == node && k.lane == lane {
			out[k.epoch] = st
		}
	}
	return out
}

func (n *Node) accept() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			select {
			case <-n.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("cluster accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		// Until it proves the secret (and, over TLS, its certificate
		// first) a peer gets a goroutine, a read buffer and
		// Config.HandshakeTimeout, and only Config.PendingHandshakes
		// peers at a time: past that a new connection is closed at
		// once.
		if int(n.pending.Load()) >= n.cfg.PendingHandshakes {
			n.shed() // counted before the close the peer sees
			c.Close()
			continue
		}
		n.mu.Lock()
		select {
		case <-n.done:
			n.mu.Unlock()
			c.Close()
			return
		default:
		}
		n.conns[c] = struct{}{}
		n.wg.Add(1)
		n.pending.Add(1)
		n.mu.Unlock()
		go n.serveConn(c)
	}
}

// shed counts a connection refused for too many pending handshakes and
// logs it at most every ten seconds.
func (n *Node) shed() {
	n.stats.handshakesShed.Inc()
	n.shedMu.Lock()
	n.shedCount++
	if time.Since(n.shedLog) < 10*time.Second {
		n.shedMu.Unlock()
		return
	}
	count := n.shedCount
	n.shedCount, n.shedLog = 0, time.Now()
	n.shedMu.Unlock()
	n.log.Warn("refusing cluster connections: too many handshakes pending", "pending_limit", n.cfg.PendingHandshakes,
		"refused", count)
}

// handshake authenticates the dialer and returns its HELLO, the
// decompressor for what it sends, and the link's framing. It returns nil
// after logging when the peer is refused. The caller has set the
// handshake's deadline.
func (n *Node) handshake(c net.Conn, br *bufio.Reader) (*hello, *decompressor, *frameReader, *frameCipher) {
	remote := c.RemoteAddr().String()
	reject := func(name, reason string) {
		n.stats.handshakeFailures.Inc()
		n.log.Warn("peer rejected", "peer", name, "remote", remote, "reason", reason)
		_, _ = c.Write(appendBytesFrame(nil, frameReject, appendStr(nil, reason)))
	}
	t, hp, _, err := readFrame(br, nil, 4096)
	if err != nil || t != frameHello {
		n.stats.handshakeFailures.Inc()
		n.log.Warn("peer rejected", "remote", remote, "reason", "no interlink HELLO", "err", err)
		return nil, nil, nil, nil
	}
	h, err := decodeHello(hp)
	if err != nil {
		reject("", err.Error())
		return nil, nil, nil, nil
	}
	if h.node == n.cfg.NodeName {
		reject(h.node, "a peer uses this node's own name")
		return nil, nil, nil, nil
	}
	if int(h.lane) >= 64 {
		reject(h.node, "lane out of range")
		return nil, nil, nil, nil
	}
	if h.compression > CompressZstd {
		reject(h.node, frameErr("unknown compression %d", h.compression).Error())
		return nil, nil, nil, nil
	}
	w := welcome{node: n.cfg.NodeName}
	_, _ = rand.Read(w.nonce[:])
	w.proof = proof(n.secret, "welcome", hp, w.node, w.nonce)
	if _, err := c.Write(w.append(nil)); err != nil {
		return nil, nil, nil, nil
	}
	t, p, _, err := readFrame(br, nil, 4096)
	want := proof(n.secret, "hello", hp, w.node, w.nonce)
	if err != nil || t != frameProof || !hmac.Equal(p, want[:]) {
		reject(h.node, "it does not know the cluster secret")
		return nil, nil, nil, nil
	}
	// Authenticated: only now does the peer get a decompressor (zstd's
	// holds its window) and its lane's state.
	dec, err := newDecompressor(h.compression, n.cfg.MaxFrame)
	if err != nil {
		reject(h.node, err.Error())
		return nil, nil, nil, nil
	}
	_ = c.SetDeadline(time.Time{})
	fr := &frameReader{r: br, max: n.cfg.MaxFrame + 64}
	var out *frameCipher
	if n.sealed() {
		in, back := linkKeys(n.secret, h.nonce, w.nonce, h.node, w.node)
		fr.c, out = newFrameCipher(in), newFrameCipher(back)
	}
	return h, dec, fr, out
}

// serveConn receives one lane from a peer: TLS first when the links run
// over it, then the interlink handshake (inside TLS), together within
// Config.HandshakeTimeout.
func (n *Node) serveConn(raw net.Conn) {
	defer n.wg.Done()
	defer func() {
		// The TCP connection, not TLS's: its close_notify could wait on
		// a peer that stopped reading.
		raw.Close()
		n.mu.Lock()
		delete(n.conns, raw)
		n.mu.Unlock()
	}()
	_ = raw.SetDeadline(time.Now().Add(n.cfg.HandshakeTimeout))
	c := raw
	if n.tls != nil {
		var ok bool
		if c, ok = n.tlsServer(raw); !ok {
			n.pending.Add(-1)
			return
		}
	}
	br := bufio.NewReaderSize(c, 64<<10)
	h, dec, fr, out := n.handshake(c, br)
	n.pending.Add(-1)
	if h == nil {
		return
	}
	defer dec.close()
	pst := n.stats.peer(h.node)
	n.mu.Lock()
	il := n.inLaneLocked(h.node, h.lane)
	n.mu.Unlock()
	// Registered before the first batch is read: a failed span closes
	// every connection that may have dropped its replay (inLane.retry).
	il.add(raw)
	defer il.remove(raw)
	pongs := make(chan [8]byte, 4)
	closed := make(chan struct{})
	defer close(closed)
	go n.acker(c, out, h.node, h.lane, il.notify, pongs, closed)

	var recs []Record
	for {
		t, p, err := fr.next()
		if err != nil {
			if errors.Is(err, ErrFrame) {
				n.stats.badFrame(err)
				n.log.Warn("closing link: bad frame", "peer", h.node, "lane", h.lane, "err", err)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				n.log.Debug("link from peer closed", "peer", h.node, "lane", h.lane, "err", err)
			}
			return
		}
		switch t {
		case frameBatch:
			hdr, data, err := decodeBatch(p, dec, n.cfg.MaxFrame)
			var taken []seqRange
			var mark uint64
			var st *stream
			il.order.Lock()
			if err == nil {
				st = n.stream(streamKey{h.node, hdr.epoch, h.lane})
				recs, taken, mark, err = n.accept1(st, hdr, data, recs[:0], pst)
			}
			if err != nil {
				il.order.Unlock()
				n.stats.badFrames.Inc()
				n.log.Warn("closing link: bad frame", "peer", h.node, "lane", h.lane, "err", err)
				return
			}
			pst.batchesRecv.Inc()
			pst.msgsRecv.Add(len(recs))
			pst.wireRecv.Add(len(p) + frameHeader)
			pst.rawRecv.Add(len(data))
			if len(recs) > 0 {
				pos := Position{Epoch: hdr.epoch, Lane: h.lane, Seq: mark}
				n.h.Receive(h.node, pos, recs, func(err error) {
					n.settle(st, h.node, h.lane, taken, err, pst)
				})
			}
			il.order.Unlock()
			clear(recs)
		case framePing:
			if len(p) == 8 {
				var v [8]byte
				copy(v[:], p)
				select {
				case pongs <- v:
				default:
				}
			}
		default:
			n.stats.badFrames.Inc()
			n.log.Warn("closing link: bad frame", "peer", h.node, "lane", h.lane, "err", frameErr("unexpected frame type %d", t))
			return
		}
	}
}

// accept1 parses a batch's records and drops reliable ones already
// accepted (a replay), except those of failed spans, and new ones while a
// failed span is not refilled (they come again after it). taken is the spans
// that stand for the reliable records kept, for settle; mark is what the
// broker stores with them (stream.markLocked), 0 if none was kept.
func (n *Node) accept1(st *stream, hdr batchHeader, data []byte, recs []Record, pst *peerStats) (_ []Record, taken []seqRange, mark uint64, _ error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	seq := hdr.firstSeq
	dups, at := 0, 0
	var kept []seqRange
	// Records past what was accepted wait while a failed span does:
	// handed over now they would be stored before it. Those this batch
	// refills do not count.
	failed, refilled, held := st.failedLocked(), uint64(0), 0
	err := parseRecords(data, func(r Record) {
		if r.Reliable {
			s := seq
			seq++
			st.seen = max(st.seen, s)
			if !st.wantLocked(s, &at) {
				dups++
				return
			}
			if s <= st.last {
				refilled++
			} else if refilled < failed {
				held++
				return
			}
			if k := len(kept); k > 0 && kept[k-1].hi == s-1 {
				kept[k-1].hi = s
			} else {
				kept = append(kept, seqRange{s, s})
			}
			r.Seq = s
		}
		recs = append(recs, r)
	})
	if err != nil {
		return recs, nil, 0, err
	}
	if seq != hdr.firstSeq && hdr.firstSeq == 0 {
		return recs, nil, 0, frameErr("reliable records in a batch without a sequence number")
	}
	if dups > 0 {
		pst.duplicates.Add(dups)
	}
	if held > 0 {
		pst.heldBack.Add(held)
		st.in.replayHeld()
	}
	if len(kept) == 0 {
		return recs, nil, 0, nil
	}
	taken = st.takeLocked(kept)
	mark = st.markLocked()
	st.marked = max(st.marked, mark)
	return recs, taken, mark, nil
}

// settle takes the broker's outcome for a batch's reliable records (the
// spans taken for them). Stored, they are acknowledged as soon as
// everything before them is; not stored, they hold back the
// acknowledgement of everything after them, and the sender is asked for
// them again.
func (n *Node) settle(st *stream, node string, lane uint8, taken []seqRange, err error, pst *peerStats) {
	if len(taken) == 0 {
		return // no reliable record: nothing to acknowledge or send again
	}
	st.mu.Lock()
	st.settleLocked(taken, err == nil)
	st.mu.Unlock()
	if err == nil {
		st.in.stored()
		st.in.wake()
		return
	}
	pst.unstored.Inc()
	if logNow, failed := st.in.retry(); logNow {
		n.log.Warn("cannot store a peer's messages; asking the peer to send them again", "peer", node, "lane", lane,
			"batches", failed, "err", err)
	}
}

// takeBack has the broker store a lower position for each run of a
// sender's lane whose stored one may reach past a failed span: a batch
// handed over before an earlier one failed carried a position past it,
// and a restart must not take the failed records as stored. It runs
// before the lane's connections are cut, so the broker stores it before
// the records sent again (and their position) arrive. A position the
// broker could not store either is taken back again at the next cut.
func (n *Node) takeBack(il *inLane) {
	for epoch, st := range n.streamsOf(il.node, il.lane) {
		st.mu.Lock()
		m, prev := st.markLocked(), st.marked
		if prev <= m {
			st.mu.Unlock()
			continue
		}
		st.marked = m
		st.mu.Unlock()
		n.h.Receive(il.node, Position{Epoch: epoch, Lane: il.lane, Seq: m}, nil, func(err error) {
			if err != nil {
				st.mu.Lock()
				st.marked = max(st.marked, prev)
				st.mu.Unlock()
			}
		})
	}
}

// acker writes acknowledgements (and pongs) back to the sender: for every
// run of the sender's lane, how far it is done. It is the only writer of
// the connection after the handshake, and so the only user of out.
func (n *Node) acker(c net.Conn, out *frameCipher, node string, lane uint8, wake chan struct{}, pongs chan [8]byte, closed chan struct{}) {
	sent := make(map[uint64]uint64)
	var buf []byte
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		for epoch, st := range n.streamsOf(node, lane) {
			st.mu.Lock()
			d := st.done
			st.mu.Unlock()
			if d > sent[epoch] {
				var err error
				if buf, err = out.finish(appendAck(buf[:0], epoch, d), 0); err != nil {
					c.Close()
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
				sent[epoch] = d
			}
		}
		select {
		case <-wake:
		case <-t.C:
		case v := <-pongs:
			var err error
			if buf, err = out.finish(appendBytesFrame(buf[:0], framePong, v[:]), 0); err != nil {
				c.Close()
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		case <-closed:
			return
		}
	}
}
