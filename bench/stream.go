package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// stream is a client connection served by a goroutine of its own
// (transport.go): over TLS, WebSocket or both.
//
// The client's frames are binary frames, masked with a random key each
// as RFC 6455 5.3 requires of a client, built whole under wmu and
// written in one call, so that writers on different goroutines never
// interleave inside a frame. A write longer than wsFrameMax becomes
// several frames in that one call: MQTT over WebSocket lets a packet
// span frames.
//
// The broker's frames are read as a stream: a data frame's payload goes
// to the MQTT decoder as it arrives, whatever the read boundaries, so the
// read buffer stays small while idle (readStream).
type stream struct {
	raw net.Conn // the TCP connection, closed to end the stream
	nc  net.Conn // what is read and written: raw, or the tls.Conn over it
	ws  bool

	wmu  sync.Mutex
	wbuf []byte // WebSocket frames being written, under wmu

	// The broker's frame being read, owned by the reading goroutine.
	hdr     [10]byte
	hlen    int    // header bytes gathered
	left    uint64 // payload bytes of the current frame still to come
	inFrame bool   // the header is read and left bytes follow
	op      ws.OpCode
	ctrl    []byte // a control frame's payload so far
}

// wsFrameMax is the most payload the generator puts in one frame.
const wsFrameMax = 64 << 10

// Read buffer sizes: small while a connection is idle; doubled each time
// a read fills it, so that a busy connection reads in fewer calls.
const (
	readMin = 2 << 10
	readMax = 64 << 10
)

// serveStream runs c over its stream until it ends and returns why.
func (c *client) serveStream(d *dialer, addr string, connect []byte) error {
	s := c.stream
	c.connectAt.Store(time.Now().UnixNano())
	rest, err := s.open(d, addr)
	if err != nil {
		return err
	}
	if err := s.write(connect); err != nil {
		return fmt.Errorf("cannot send CONNECT: %w", err)
	}
	if len(rest) > 0 {
		if err := c.streamInput(rest); err != nil {
			return err
		}
	}
	buf := make([]byte, readMin)
	for {
		n, err := s.nc.Read(buf)
		if n > 0 {
			if err := c.streamInput(buf[:n]); err != nil {
				return err
			}
			if n == len(buf) && len(buf) < readMax {
				buf = make([]byte, 2*len(buf))
			}
		}
		if err != nil {
			return fmt.Errorf("connection closed: %w", err)
		}
	}
}

// streamClosed is OnClose for a stream client: err is why it ended.
func (c *client) streamClosed(err error) {
	c.closed.Store(true)
	// A refused client is closed by the broker: counted already.
	if !c.run.stopping.Load() && c.refusal.Load() == 0 {
		c.errs.Add(1)
		c.run.errorf("%s: %v", c.id, err)
	}
	c.ready()
}

// streamInput takes bytes read from the broker: MQTT, or WebSocket frames
// carrying it. Answers (acknowledgements, SUBSCRIBE, pong) are written
// before it returns.
func (c *client) streamInput(raw []byte) error {
	s := c.stream
	if !s.ws {
		out, err := c.input(nil, raw)
		if err == nil && len(out) > 0 {
			err = s.write(out)
		}
		return err
	}
	var out []byte
	// A frame without payload is complete with its header, which may be
	// the last bytes of raw.
	for len(raw) > 0 || (s.inFrame && s.left == 0) {
		if !s.inFrame {
			n, err := s.readHeader(raw)
			if err != nil {
				return err
			}
			raw = raw[n:]
			if !s.inFrame {
				break // the header continues in the next read
			}
		}
		take := int(min(s.left, uint64(len(raw))))
		p := raw[:take]
		raw = raw[take:]
		s.left -= uint64(take)
		if s.op.IsControl() {
			s.ctrl = append(s.ctrl, p...)
		} else if len(p) > 0 {
			var err error
			if out, err = c.input(out, p); err != nil {
				return err
			}
		}
		if s.left > 0 {
			continue
		}
		s.inFrame = false
		if s.op.IsControl() {
			if err := s.control(); err != nil {
				return err
			}
		}
	}
	if len(out) > 0 {
		return s.write(out)
	}
	return nil
}

// readHeader gathers the header of the broker's next frame from the start
// of b and returns how many bytes of b it took. s.inFrame is set once the
// header is complete.
func (s *stream) readHeader(b []byte) (int, error) {
	used := 0
	need := 2
	for {
		for s.hlen < need && used < len(b) {
			s.hdr[s.hlen] = b[used]
			s.hlen++
			used++
		}
		if s.hlen < need {
			return used, nil
		}
		if need == 2 {
			switch s.hdr[1] & 0x7f {
			case 126:
				need = 4
			case 127:
				need = 10
			}
			if need > 2 {
				continue
			}
		}
		break
	}
	h := s.hdr[:s.hlen]
	s.hlen = 0
	fin, op := h[0]&0x80 != 0, ws.OpCode(h[0]&0x0f)
	n := uint64(h[1] & 0x7f)
	switch len(h) {
	case 4:
		n = uint64(binary.BigEndian.Uint16(h[2:]))
	case 10:
		n = binary.BigEndian.Uint64(h[2:])
	}
	switch {
	case h[0]&0x70 != 0:
		return used, errors.New("WebSocket: the broker set reserved bits in a frame")
	case h[1]&0x80 != 0:
		return used, errors.New("WebSocket: the broker masked a frame (RFC 6455 5.1 forbids it)")
	case op == ws.OpText:
		return used, errors.New("WebSocket: the broker sent a text frame; MQTT travels in binary frames")
	case op.IsControl() && (!fin || n > 125):
		return used, errors.New("WebSocket: the broker sent a fragmented or long control frame")
	case op.IsReserved():
		return used, fmt.Errorf("WebSocket: the broker sent a frame of reserved opcode %#x", byte(op))
	}
	if !op.IsControl() {
		// Continuation frames carry on the binary message: for MQTT, the
		// frames' payloads are one byte stream.
		op = ws.OpBinary
	}
	s.op, s.left, s.inFrame = op, n, true
	s.ctrl = s.ctrl[:0]
	return used, nil
}

// control answers the control frame just read: pong to ping, close to
// close (which ends the stream).
func (s *stream) control() error {
	switch s.op {
	case ws.OpPing:
		return s.writeFrame(ws.OpPong, s.ctrl)
	case ws.OpClose:
		code := "none"
		if len(s.ctrl) >= 2 {
			code = fmt.Sprint(binary.BigEndian.Uint16(s.ctrl))
		}
		reply := s.ctrl[:min(len(s.ctrl), 2)]
		_ = s.writeFrame(ws.OpClose, reply)
		return fmt.Errorf("connection closed: the broker closed the WebSocket (status %s)", code)
	}
	return nil
}

// write sends MQTT bytes: as they are, or in WebSocket frames.
func (s *stream) write(p []byte) error {
	if !s.ws {
		_, err := s.nc.Write(p)
		return err
	}
	return s.writeFrame(ws.OpBinary, p)
}

// writeFrame writes p in frames of op (several of wsFrameMax at most,
// for a data frame), in one write.
func (s *stream) writeFrame(op ws.OpCode, p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b := s.wbuf[:0]
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), wsFrameMax)
		b = appendWSFrame(b, op, p[:n])
		p = p[n:]
	}
	s.wbuf = b
	if cap(s.wbuf) > 4*wsFrameMax {
		s.wbuf = nil // a burst's buffer is not kept for the idle time after it
	}
	_, err := s.nc.Write(b)
	return err
}

// appendWSFrame appends one final frame of op carrying p, masked with a
// random key.
func appendWSFrame(dst []byte, op ws.OpCode, p []byte) []byte {
	dst = append(dst, 0x80|byte(op))
	switch n := len(p); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32())
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, p...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}
