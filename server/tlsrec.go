package server

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/crypto/chacha20poly1305"
)

// The TLS 1.3 record layer of a connection served on its event loop.
//
// crypto/tls runs the handshake (tls.go); when it negotiated TLS 1.3 with
// one of the suites below, the listener hands the bare socket to a loop
// together with the application traffic secrets and the sequence numbers
// where crypto/tls left off, and from there on the loop opens and seals
// records itself (RFC 8446 section 5):
//
//	+--------+---------+---------+------------------------------------------+
//	| type   | version | length  | encrypted record (length bytes)          |
//	| 23     | 0x0303  | 2 bytes | AEAD(content, type, zero padding) + tag  |
//	+--------+---------+---------+------------------------------------------+
//
// The nonce is the direction's iv XOR the record's sequence number, the
// additional data the five header bytes; the content's true type (23
// application data, 22 handshake, 21 alert) is the last non-zero byte of
// the plaintext. Inbound records are opened in place in gnet's buffer and
// their MQTT bytes decoded from there; only the tail of a packet that a
// later record completes is copied into the connection's own buffer
// (tlsRec.in), which exists while bytes wait in it, as a WebSocket
// connection's does. Each flush is sealed into records of at most 16 KiB of
// plaintext in a buffer taken from a pool for the write, so an idle
// connection holds none: its cost over a plain connection is its two AEAD
// states and secrets, under 2 KiB.
//
// After the handshake a client may send KeyUpdate (answered with our own
// when it asks, RFC 8446 4.6.3) and alerts: close_notify ends the
// connection as end-of-file does on TCP (the will stands), any other alert
// closes it. A record that does not open, is too long or carries anything
// else closes the connection with the matching alert, and is counted in
// gannet_tls_record_errors_total. The broker sends close_notify before it
// closes a connection, and updates its own keys before a direction's
// sequence number nears the AEAD limits of RFC 8446 5.5.

// Record layer constants (RFC 8446 5.1, 5.2, 6, 4).
const (
	recHeader     = 5
	recTagLen     = 16
	recMaxPlain   = 1 << 14           // TLSInnerPlaintext content
	recMaxCipher  = recMaxPlain + 256 // TLSCiphertext.length
	recMaxWritten = recMaxPlain + 1 + recTagLen

	recTypeAlert     = 21
	recTypeHandshake = 22
	recTypeAppData   = 23

	alertCloseNotify       = 0
	alertUnexpectedMessage = 10
	alertBadRecordMAC      = 20
	alertRecordOverflow    = 22
	alertIllegalParameter  = 47
	alertDecodeError       = 50
	alertProtocolVersion   = 70
	alertUserCanceled      = 90

	hsKeyUpdate = 24
)

// tlsRekeyAfter is how many records the broker seals under one key before
// it updates it: RFC 8446 5.5 puts AES-GCM's limit at 2^24.5 full-size
// records. A variable for tests.
var tlsRekeyAfter uint64 = 1 << 24

// tlsOutChunk is the size of the buffers flushes are sealed in: four whole
// records, written with one call each.
const tlsOutChunk = 4 * (recHeader + recMaxWritten)

var tlsOutBufs = sync.Pool{New: func() any { b := make([]byte, 0, tlsOutChunk); return &b }}

// tlsSuite is a TLS 1.3 cipher suite the loops serve.
type tlsSuite struct {
	id     uint16
	keyLen int
	hash   func() hash.Hash
	aead   func(key []byte) (cipher.AEAD, error)
}

func aesGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

var tlsSuites = []*tlsSuite{
	{tls.TLS_AES_128_GCM_SHA256, 16, sha256.New, aesGCM},
	{tls.TLS_AES_256_GCM_SHA384, 32, sha512.New384, aesGCM},
	{tls.TLS_CHACHA20_POLY1305_SHA256, 32, sha256.New, chacha20poly1305.New},
}

// tlsSuiteOf returns the suite with id, or nil when the loops do not
// serve it.
func tlsSuiteOf(id uint16) *tlsSuite {
	for _, s := range tlsSuites {
		if s.id == id {
			return s
		}
	}
	return nil
}

// expandLabel is HKDF-Expand-Label (RFC 8446 7.1) with an empty context.
func (s *tlsSuite) expandLabel(secret []byte, label string, n int) []byte {
	info := make([]byte, 0, 4+6+len(label))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0) // no context
	out, err := hkdf.Expand(s.hash, secret, string(info), n)
	if err != nil {
		panic("BUG: HKDF-Expand-Label of " + label + ": " + err.Error()) // only for lengths over 255 hashes
	}
	return out
}

// tlsKeys is one direction's traffic protection.
type tlsKeys struct {
	aead   cipher.AEAD
	iv     [12]byte
	seq    uint64
	secret []byte
}

// set derives the key and iv of secret (RFC 8446 7.3); the sequence
// number starts over.
func (k *tlsKeys) set(s *tlsSuite, secret []byte) error {
	a, err := s.aead(s.expandLabel(secret, "key", s.keyLen))
	if err != nil {
		return fmt.Errorf("cannot make the record cipher: %w", err)
	}
	k.aead, k.secret, k.seq = a, secret, 0
	copy(k.iv[:], s.expandLabel(secret, "iv", len(k.iv)))
	return nil
}

// update moves to the next traffic secret (RFC 8446 7.2).
func (k *tlsKeys) update(s *tlsSuite) error {
	return k.set(s, s.expandLabel(k.secret, "traffic upd", s.hash().Size()))
}

// nonce is the per-record nonce (RFC 8446 5.3).
func (k *tlsKeys) nonce() [12]byte {
	n := k.iv
	for i := range 8 {
		n[4+i] ^= byte(k.seq >> (56 - 8*i))
	}
	return n
}

// errTLSIncomplete says the buffer does not hold a whole record yet.
var errTLSIncomplete = errors.New("server: incomplete TLS record")

// tlsAlertError is a TLS protocol error of the client's: the alert to send
// it and what happened.
type tlsAlertError struct {
	alert byte
	msg   string
}

func (e *tlsAlertError) Error() string { return "TLS: " + e.msg }

func tlsFail(alert byte, format string, args ...any) error {
	return &tlsAlertError{alert: alert, msg: fmt.Sprintf(format, args...)}
}

// open opens the record at the start of b in place (b is the caller's to
// change) and returns its content type, its content (a sub-slice of b)
// and its length on the wire; errTLSIncomplete when b does not hold all
// of it yet, or a *tlsAlertError.
func (k *tlsKeys) open(b []byte) (byte, []byte, int, error) {
	if len(b) < recHeader {
		return 0, nil, 0, errTLSIncomplete
	}
	n := int(binary.BigEndian.Uint16(b[3:]))
	switch {
	case b[0] != recTypeAppData:
		// Past the handshake every record is protected, and a
		// ChangeCipherSpec is allowed only before the client's Finished
		// (RFC 8446 5, 5.1).
		return 0, nil, 0, tlsFail(alertUnexpectedMessage, "record of type %d after the handshake", b[0])
	case b[1] != 3 || b[2] != 3:
		return 0, nil, 0, tlsFail(alertProtocolVersion, "record version %#04x", binary.BigEndian.Uint16(b[1:]))
	case n > recMaxCipher:
		return 0, nil, 0, tlsFail(alertRecordOverflow, "record of %d bytes", n)
	case len(b) < recHeader+n:
		return 0, nil, 0, errTLSIncomplete
	case n < recTagLen+1:
		return 0, nil, 0, tlsFail(alertBadRecordMAC, "record of %d bytes", n)
	}
	nonce := k.nonce()
	ct := b[recHeader : recHeader+n]
	pt, err := k.aead.Open(ct[:0], nonce[:], ct, b[:recHeader])
	if err != nil {
		return 0, nil, 0, tlsFail(alertBadRecordMAC, "record %d does not open", k.seq)
	}
	k.seq++
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	switch {
	case i < 0:
		return 0, nil, 0, tlsFail(alertUnexpectedMessage, "record without a content type")
	case i > recMaxPlain:
		return 0, nil, 0, tlsFail(alertRecordOverflow, "record content of %d bytes", i)
	}
	return pt[i], pt[:i], recHeader + n, nil
}

// seal turns dst[start:] into one record: dst[start:start+5] is room for
// its header and the content follows. dst grows when it lacks room for
// the type byte and the tag.
func (k *tlsKeys) seal(dst []byte, start int, typ byte) []byte {
	dst = slices.Grow(dst, 1+recTagLen)
	dst = append(dst, typ)
	n := len(dst) - start - recHeader + recTagLen
	hdr := dst[start : start+recHeader]
	hdr[0], hdr[1], hdr[2] = recTypeAppData, 3, 3
	binary.BigEndian.PutUint16(hdr[3:], uint16(n))
	nonce := k.nonce()
	pt := dst[start+recHeader:]
	k.aead.Seal(pt[:0], nonce[:], pt, hdr)
	k.seq++
	return dst[:start+recHeader+n]
}

// sealMsg appends a record of type typ holding msg to dst.
func (k *tlsKeys) sealMsg(dst []byte, typ byte, msg ...byte) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0) // the header's room
	dst = append(dst, msg...)
	return k.seal(dst, start, typ)
}

// tlsRec is a connection's record layer, owned by its event loop.
type tlsRec struct {
	suite  *tlsSuite
	rd, wr tlsKeys
	// in holds application data the MQTT decoder has not taken (for
	// MQTT over WebSocket, the WebSocket bytes wsInput has not taken);
	// nil while none waits.
	in []byte
	// hs holds a KeyUpdate message split across records (hsN bytes).
	hs  [5]byte
	hsN uint8
	// updateDue: our KeyUpdate goes out before the next data (the client
	// asked for it, or our sequence number reached tlsRekeyAfter).
	updateDue bool
	// alertDue: alert goes out after the data of the next flush; done:
	// nothing more is written (an alert was sent or received).
	alertDue bool
	alert    byte
	done     bool
}

// newTLSRec sets up the record layer from the application traffic
// secrets of a handshake: the client's records start at 0, ours at sent,
// the number crypto/tls wrote under its key (session tickets).
func newTLSRec(s *tlsSuite, client, server []byte, sent uint64) (*tlsRec, error) {
	r := &tlsRec{suite: s}
	if err := r.rd.set(s, client); err != nil {
		return nil, err
	}
	if err := r.wr.set(s, server); err != nil {
		return nil, err
	}
	r.wr.seq = sent
	return r, nil
}

// tlsInMax bounds tlsRec.in: a whole MQTT packet, or a whole WebSocket frame
// carrying one (readWSFrame: payload of MaxPacketSize+4, 14 header bytes).
func (c *client) tlsInMax() int {
	if c.ws != nil {
		return c.srv.cfg.MaxPacketSize + 4 + 14
	}
	return c.srv.cfg.MaxPacketSize
}

// onTLSTraffic is onTraffic for a TLS connection served on its loop: raw
// is gnet's buffer. Records are opened while the decoder takes their
// bytes; a client whose packets wait (CONNECT being decided, input held
// back) leaves the rest in gnet's buffer once in holds a packet's worth.
func (c *client) onTLSTraffic(ob *outbox, raw []byte) gnet.Action {
	r := c.tls.rec
	var err error
	if len(r.in) > 0 || c.ws != nil && len(c.ws.in) > 0 { // left by an earlier call: they come first
		err = c.tlsDecode(ob, nil)
	}
	n := 0
	for err == nil && !c.closed && n < len(raw) && len(r.in) < c.tlsInMax() {
		if n > 0 && c.srv.cl != nil && c.srv.cl.holdBack(c, false) {
			break // the rest once the lanes to peers catch up (pace.go)
		}
		typ, pt, size, rerr := r.rd.open(raw[n:])
		if rerr == errTLSIncomplete {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
		n += size
		if r.hsN != 0 && typ != recTypeHandshake {
			// A split handshake message goes on in the next record
			// (RFC 8446 5.1).
			err = tlsFail(alertUnexpectedMessage, "record of type %d inside a split handshake message", typ)
			break
		}
		switch typ {
		case recTypeAppData:
			err = c.tlsDecode(ob, pt)
		case recTypeHandshake:
			err = c.tlsHandshake(ob, pt)
		case recTypeAlert:
			err = c.tlsAlert(pt)
		default:
			err = tlsFail(alertUnexpectedMessage, "content of type %d", typ)
		}
	}
	if n > 0 {
		_, _ = c.gc.Discard(n)
	}
	var ae *tlsAlertError
	switch {
	case err == nil:
	case errors.As(err, &ae):
		c.srv.tlsl.recordErrors.Inc()
		c.srv.stats.protocolErrors.Add(1)
		c.logger().Warn("closing connection", "reason", "TLS record", "err", err)
		if !r.done {
			r.alertDue, r.alert = true, ae.alert
		}
		c.close()
	case errors.Is(err, errWSProtocol):
		c.logger().Warn("closing connection", "reason", "WebSocket", "err", err)
		c.srv.stats.protocolErrors.Add(1)
		c.close()
	default:
		c.fail(ob, err)
	}
	return gnet.None
}

// tlsDecode hands application data to the decoder: pt (a record's content
// in gnet's buffer) straight when nothing waits before it, else behind
// what waits in in. What the decoder does not take yet is kept in in.
func (c *client) tlsDecode(ob *outbox, pt []byte) error {
	r := c.tls.rec
	if c.ws != nil {
		r.in = append(r.in, pt...)
		return c.tlsWS(ob)
	}
	if len(r.in) == 0 {
		used, err := c.decode(ob, pt, 0)
		if err == nil && used < len(pt) && !c.closed {
			r.in = append(r.in, pt[used:]...)
		}
		return err
	}
	r.in = append(r.in, pt...)
	used, err := c.decode(ob, r.in, 0)
	r.consume(used)
	return err
}

// tlsWS runs the WebSocket layer (ws.go) over the application data in in,
// for MQTT over WebSocket over TLS: frames are taken, and their MQTT bytes
// decoded, while both make progress.
func (c *client) tlsWS(ob *outbox) error {
	r := c.tls.rec
	for !c.closed {
		n, in, err := c.wsInput(ob, r.in)
		r.consume(n)
		if err != nil {
			return err
		}
		used, err := c.decode(ob, in, 0)
		c.ws.consume(used)
		if err != nil || n == 0 || used == 0 {
			return err
		}
	}
	return nil
}

// consume drops the n bytes of in that were taken.
func (r *tlsRec) consume(n int) {
	if n == 0 {
		return
	}
	rest := copy(r.in, r.in[n:])
	r.in = r.in[:rest]
	if rest == 0 {
		r.in = nil // an idle connection holds no buffer
	}
}

// tlsHandshake takes a handshake record's content. Past the handshake a
// client may send KeyUpdate only: it updates the client's key and, when
// it asks, ours after our own KeyUpdate (RFC 8446 4.6.3). A KeyUpdate must
// end its record, since the next record is under the new key (5.1).
func (c *client) tlsHandshake(ob *outbox, pt []byte) error {
	r := c.tls.rec
	if len(pt) == 0 {
		return tlsFail(alertUnexpectedMessage, "empty handshake record")
	}
	for len(pt) > 0 {
		k := copy(r.hs[r.hsN:], pt)
		r.hsN += uint8(k)
		pt = pt[k:]
		if r.hs[0] != hsKeyUpdate {
			return tlsFail(alertUnexpectedMessage, "handshake message of type %d after the handshake", r.hs[0])
		}
		if r.hsN >= 4 && (r.hs[1] != 0 || r.hs[2] != 0 || r.hs[3] != 1) {
			return tlsFail(alertDecodeError, "KeyUpdate of %d bytes", int(r.hs[1])<<16|int(r.hs[2])<<8|int(r.hs[3]))
		}
		if r.hsN < 5 {
			return nil // the rest in the next record
		}
		requested := r.hs[4]
		r.hsN = 0
		switch {
		case requested > 1:
			return tlsFail(alertIllegalParameter, "KeyUpdate request_update %d", requested)
		case len(pt) > 0:
			return tlsFail(alertUnexpectedMessage, "KeyUpdate not at the end of its record")
		}
		if err := r.rd.update(r.suite); err != nil {
			return err
		}
		if requested == 1 && !r.updateDue {
			r.updateDue = true
			ob.add(c, nil) // written with this unit of work
		}
	}
	return nil
}

// tlsAlert takes an alert record's content: close_notify ends the
// connection as end-of-file does on TCP, user_canceled is waited past,
// any other alert closes the connection.
func (c *client) tlsAlert(pt []byte) error {
	r := c.tls.rec
	if len(pt) != 2 {
		return tlsFail(alertDecodeError, "alert of %d bytes", len(pt))
	}
	switch pt[1] {
	case alertUserCanceled:
		return nil // a close_notify follows (RFC 8446 6.1)
	case alertCloseNotify:
		if c.connected && !c.disconnected() {
			c.logger().Info("connection lost", "err", "TLS close_notify without DISCONNECT")
		}
		// Done with the session now, as on end-of-file: our answering
		// close_notify may find the socket gone, and OnClose must not
		// tell of the loss again.
		c.detach()
		return fmt.Errorf("%w: TLS close_notify", errClose)
	}
	r.done = true // nothing more after a fatal alert (RFC 8446 6.2)
	c.logger().Info("closing connection", "reason", "TLS alert", "alert", pt[1])
	return fmt.Errorf("%w: TLS alert %d from the client", errClose, pt[1])
}

// tlsCloseNotify queues close_notify after the last bytes, unless an
// alert was sent or is due already.
func (c *client) tlsCloseNotify() {
	if r := c.tls.rec; !r.done && !r.alertDue {
		r.alertDue, r.alert = true, alertCloseNotify
	}
}

// owes reports whether a flush would write something besides pending
// data: our KeyUpdate or an alert.
func (r *tlsRec) owes() bool {
	return !r.done && (r.updateDue || r.alertDue)
}

// writeTLS seals what flush writes: our KeyUpdate when due, the bytes of
// p in records of at most 16 KiB, and a due alert, through buffers of
// tlsOutChunk bytes taken for the call only.
func (c *client) writeTLS(p [][]byte) {
	r := c.tls.rec
	if r.done || len(p) == 0 && !r.owes() {
		return
	}
	bp := tlsOutBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		*bp = buf[:0]
		tlsOutBufs.Put(bp)
	}()
	write := func() bool {
		if len(buf) == 0 {
			return true
		}
		_, err := c.gc.Write(buf)
		c.srv.stats.writes.Inc()
		buf = buf[:0]
		return err == nil && !c.closed
	}
	if r.wr.seq >= tlsRekeyAfter {
		r.updateDue = true
	}
	if r.updateDue {
		buf = r.wr.sealMsg(buf, recTypeHandshake, hsKeyUpdate, 0, 0, 1, 0) // update_not_requested
		r.updateDue = false
		if err := r.wr.update(r.suite); err != nil {
			panic("BUG: " + err.Error()) // the suite's own key length
		}
	}
	start := -1 // where the record being filled starts
	plain := 0
	for _, b := range p {
		plain += len(b)
		for len(b) > 0 {
			if start < 0 {
				if cap(buf)-len(buf) < recHeader+recMaxWritten && !write() {
					return
				}
				start = len(buf)
				buf = buf[:start+recHeader]
			}
			k := copy(buf[len(buf):start+recHeader+recMaxPlain], b)
			buf = buf[:len(buf)+k]
			b = b[k:]
			if len(buf)-start-recHeader == recMaxPlain {
				buf = r.wr.seal(buf, start, recTypeAppData)
				start = -1
			}
		}
	}
	if start >= 0 {
		buf = r.wr.seal(buf, start, recTypeAppData)
	}
	c.srv.stats.bytesOut.Add(plain)
	if r.alertDue {
		if cap(buf)-len(buf) < recHeader+2+1+recTagLen && !write() {
			return
		}
		buf = r.wr.sealMsg(buf, recTypeAlert, alertLevel(r.alert), r.alert)
		r.alertDue, r.done = false, true
	}
	write()
}

// alertLevel is the level an alert is sent at: warning for close_notify,
// fatal for errors (RFC 8446 6).
func alertLevel(alert byte) byte {
	if alert == alertCloseNotify {
		return 1
	}
	return 2
}

// closeNotifyRecord returns close_notify sealed, for a connection closed
// before its first flush (OnOpen).
func (r *tlsRec) closeNotifyRecord() []byte {
	r.done = true
	return r.wr.sealMsg(nil, recTypeAlert, 1, alertCloseNotify)
}
