package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
)

// MQTT over WebSocket (MQTT 5, section 6), on the event loops like plain
// TCP: a connection from the WebSocket listener starts with an HTTP
// upgrade (path /mqtt, subprotocol mqtt or mqttv3.1), then carries MQTT in
// binary frames. An MQTT packet may span frames and a frame may hold
// several packets, so the unmasked payloads are gathered in the
// connection's own buffer (wsConn.in), which the MQTT decoder reads as it
// reads gnet's buffer for plain connections; it exists only while bytes
// wait in it. Outgoing bytes are written as one binary frame per flush:
// a header of 2-10 bytes in front of the writev.
//
//	0                   1                   2                   3
//	0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-------+-+-------------+-------------------------------+
//	|F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//	|I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//	|N|V|V|V|       |S|             |   (if payload len==126/127)   |
//	| |1|2|3|       |K|             |                               |
//	+-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//	|     Extended payload length continued, if payload len == 127  |
//	+ - - - - - - - - - - - - - - - +-------------------------------+
//	|                               |Masking-key, if MASK set to 1  |
//	+-------------------------------+-------------------------------+
//	| Masking-key (continued)       |          Payload Data         |
//	+-------------------------------- - - - - - - - - - - - - - - - +
//
// Clients must mask their frames (RFC 6455 5.1); the broker's are not
// masked. Ping is answered with pong, close with close.

// wsPath is where the upgrade is accepted.
const wsPath = "/mqtt"

// wsMaxRequest bounds the HTTP upgrade request: a client that sends more
// without finishing its headers is refused.
const wsMaxRequest = 8 << 10

// wsConn is a WebSocket connection's state, owned by its event loop.
type wsConn struct {
	upgraded bool
	in       []byte   // unmasked payload bytes the MQTT decoder has not taken
	ctrl     [][]byte // pong frames to write before the next data frame
	close    []byte   // the close frame, written after the last data frame
	closing  bool     // a close frame is queued or sent
	iov      [][]byte
	hdr      [10]byte
}

// Errors that end a WebSocket connection.
var (
	errWSIncomplete = errors.New("server: incomplete WebSocket data")
	errWSProtocol   = errors.New("server: WebSocket protocol error")
)

// wsUpgrader checks an upgrade request and writes the answer. Its
// callbacks run inside Upgrade only.
var wsUpgrader = ws.Upgrader{
	Protocol: func(p []byte) bool {
		return string(p) == "mqtt" || string(p) == "mqttv3.1"
	},
	OnRequest: func(uri []byte) error {
		path := uri
		if i := bytes.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
		if string(path) != wsPath {
			return ws.RejectConnectionError(ws.RejectionStatus(404), ws.RejectionReason("no MQTT endpoint at this path"))
		}
		return nil
	},
}

// rw is the reader and writer Upgrade works on: the request bytes in, the
// answer out.
type rw struct {
	io.Reader
	io.Writer
}

// wsUpgrade answers an HTTP upgrade request (the bytes up to and with the
// blank line that ends its headers): 101 Switching Protocols, or an HTTP
// error and an error wrapping errWSProtocol.
func wsUpgrade(req []byte) ([]byte, error) {
	var out bytes.Buffer
	_, err := wsUpgrader.Upgrade(rw{bytes.NewReader(req), &out})
	if err != nil {
		if out.Len() == 0 {
			out.WriteString("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		}
		return out.Bytes(), fmt.Errorf("%w: upgrade refused: %v", errWSProtocol, err)
	}
	return out.Bytes(), nil
}

// onWSTraffic is onTraffic for a WebSocket connection: raw is gnet's
// buffer after any PROXY header.
func (c *client) onWSTraffic(ob *outbox, raw []byte) gnet.Action {
	n, in, err := c.wsInput(ob, raw)
	if n > 0 {
		_, _ = c.gc.Discard(n)
	}
	if err == nil {
		full := len(in) >= c.srv.cfg.MaxPacketSize && n < len(raw)
		var used int
		used, err = c.decode(ob, in, 0)
		c.ws.consume(used)
		if err == nil && full && used > 0 && !c.parked && !c.closed {
			// Frames were left in gnet's buffer while the decoder's was
			// full: take them now.
			_ = c.gc.Wake(nil)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, errWSProtocol):
		c.logger().Warn("closing connection", "reason", "WebSocket", "err", err)
		c.srv.stats.protocolErrors.Add(1)
		c.close()
	default:
		c.fail(ob, err)
	}
	return gnet.None
}

// wsInput takes what arrived in raw (gnet's buffer) for a WebSocket
// connection: the upgrade request, then frames. It returns how many raw
// bytes it consumed and the MQTT bytes now waiting (c.ws.in). A non-nil
// error ends the connection; the answer (an HTTP error, a close frame) is
// already queued.
func (c *client) wsInput(ob *outbox, raw []byte) (int, []byte, error) {
	w := c.ws
	used := 0
	if !w.upgraded {
		end := bytes.Index(raw, []byte("\r\n\r\n"))
		if end < 0 {
			if len(raw) > wsMaxRequest {
				c.writeNow(ob, []byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
				return 0, nil, fmt.Errorf("%w: upgrade request over %d bytes", errWSProtocol, wsMaxRequest)
			}
			return 0, nil, nil
		}
		used = end + 4
		answer, err := wsUpgrade(raw[:used])
		if len(answer) > 0 {
			c.writeNow(ob, answer)
		}
		if err != nil {
			return used, nil, err
		}
		w.upgraded = true
	}
	// Frames are taken while the decoder lacks bytes: a client whose
	// packets wait (CONNECT being decided, input held back) leaves the rest
	// in gnet's buffer, so this one stays bounded.
	for used < len(raw) && len(w.in) < c.srv.cfg.MaxPacketSize {
		n, err := c.wsFrame(ob, raw[used:])
		if err == errWSIncomplete {
			break
		}
		used += n
		if err != nil {
			return used, w.in, err
		}
	}
	return used, w.in, nil
}

// wsFrame is one frame read from a client, its payload unmasked in place.
type wsFrame struct {
	fin     bool
	op      ws.OpCode
	payload []byte
}

// readWSFrame reads the frame at the start of b, unmasking its payload in
// place (b is the caller's to change). It returns the frame and its length
// on the wire, errWSIncomplete when b does not hold all of it yet, or an
// error wrapping errWSProtocol with the close code to send: a frame that
// is not masked, sets reserved bits, is longer than max, or is a control
// frame that is fragmented or longer than 125 bytes.
func readWSFrame(b []byte, max int) (wsFrame, int, ws.StatusCode, error) {
	if len(b) < 2 {
		return wsFrame{}, 0, 0, errWSIncomplete
	}
	f := wsFrame{fin: b[0]&0x80 != 0, op: ws.OpCode(b[0] & 0x0f)}
	rsv, masked := b[0]&0x70, b[1]&0x80 != 0
	n := uint64(b[1] & 0x7f)
	off := 2
	switch n {
	case 126:
		if len(b) < 4 {
			return wsFrame{}, 0, 0, errWSIncomplete
		}
		n, off = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return wsFrame{}, 0, 0, errWSIncomplete
		}
		n, off = binary.BigEndian.Uint64(b[2:]), 10
	}
	switch {
	case rsv != 0 || !masked:
		return wsFrame{}, 0, ws.StatusProtocolError, fmt.Errorf("%w: unmasked frame or reserved bits set", errWSProtocol)
	case f.op.IsControl() && (!f.fin || n > 125):
		return wsFrame{}, 0, ws.StatusProtocolError, fmt.Errorf("%w: fragmented or long control frame", errWSProtocol)
	case n > uint64(max):
		return wsFrame{}, 0, ws.StatusMessageTooBig, fmt.Errorf("%w: frame of %d bytes", errWSProtocol, n)
	}
	end := off + 4 + int(n)
	if len(b) < end {
		return wsFrame{}, 0, 0, errWSIncomplete
	}
	var mask [4]byte
	copy(mask[:], b[off:])
	f.payload = b[off+4 : end]
	ws.Cipher(f.payload, mask, 0)
	return f, end, 0, nil
}

// wsFrame handles one frame at the start of b and returns its length.
func (c *client) wsFrame(ob *outbox, b []byte) (int, error) {
	f, size, code, err := readWSFrame(b, c.srv.cfg.MaxPacketSize+4)
	if err == errWSIncomplete {
		return 0, err
	}
	if err != nil {
		c.wsClose(ob, code)
		return 0, err
	}
	switch f.op {
	case ws.OpBinary, ws.OpContinuation:
		c.ws.in = append(c.ws.in, f.payload...)
	case ws.OpPing:
		c.ws.ctrl = append(c.ws.ctrl, wsControl(ws.OpPong, f.payload))
		ob.add(c, nil) // flushed with this unit of work
	case ws.OpPong:
	case ws.OpClose:
		c.wsClose(ob, ws.StatusNormalClosure)
		return size, fmt.Errorf("%w: the client closed the WebSocket", errClose)
	default: // text and reserved opcodes: MQTT travels in binary frames only
		return size, c.wsFail(ob, ws.StatusUnsupportedData, "frame opcode "+fmt.Sprint(f.op))
	}
	return size, nil
}

// wsFail sends a close frame with code and returns the error that ends the
// connection.
func (c *client) wsFail(ob *outbox, code ws.StatusCode, why string) error {
	c.wsClose(ob, code)
	return fmt.Errorf("%w: %s", errWSProtocol, why)
}

// wsClose queues the close frame, once, and flushes.
func (c *client) wsClose(ob *outbox, code ws.StatusCode) {
	if c.ws.closing {
		return
	}
	c.ws.closing = true
	c.ws.close = wsControl(ws.OpClose, ws.NewCloseFrameBody(code, ""))
	c.writeNow(ob, nil)
}

// wsControl encodes a control frame (its payload at most 125 bytes).
func wsControl(op ws.OpCode, payload []byte) []byte {
	f := make([]byte, 0, 2+len(payload))
	f = append(f, 0x80|byte(op), byte(len(payload)))
	return append(f, payload...)
}

// consume drops the MQTT bytes the decoder took.
func (w *wsConn) consume(n int) {
	if n == 0 {
		return
	}
	rest := copy(w.in, w.in[n:])
	w.in = w.in[:rest]
	if rest == 0 && cap(w.in) > 4<<10 {
		w.in = nil // give a large buffer back once idle
	}
}

// frames returns what goes on the wire for the pending slices: queued
// pongs, then the MQTT bytes as one binary frame behind its header, then
// the close frame if one is due (once).
func (w *wsConn) frames(pend [][]byte) [][]byte {
	out := append(w.iov[:0], w.ctrl...)
	clear(w.ctrl)
	w.ctrl = w.ctrl[:0]
	n := 0
	for _, b := range pend {
		n += len(b)
	}
	if n > 0 {
		out = append(out, wsHeader(w.hdr[:0], n))
		out = append(out, pend...)
	}
	if w.close != nil {
		out = append(out, w.close)
		w.close = nil
	}
	w.iov = out
	return out
}

// wsHeader appends an unmasked final binary frame header for n bytes.
func wsHeader(dst []byte, n int) []byte {
	switch {
	case n < 126:
		return append(dst, 0x80|byte(ws.OpBinary), byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, 0x80|byte(ws.OpBinary), 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(dst, 0x80|byte(ws.OpBinary), 127), uint64(n))
	}
}

// WSAddr returns the WebSocket listener's address, or "" when it is off.
func (s *Server) WSAddr() string {
	if s.wsAddr == nil {
		return ""
	}
	return s.wsAddr.String()
}

// pickPort returns addr with its port chosen when it is 0: the kernel's
// pick for a socket bound and closed here.
func pickPort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != "0" {
		return addr, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("cannot listen for MQTT over WebSocket on %s: %w", addr, err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// portOf is the port of a listen address, 0 when it has none yet (":0").
func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
