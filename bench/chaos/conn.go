package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gannetmq/gannet/bench"
	"github.com/gannetmq/gannet/codec"
)

// mqttConn is one MQTT 5 connection of a chaos client. One goroutine
// reads it (read), any may write (send). The checker depends on knowing
// exactly what crossed the wire, so the clients speak MQTT themselves on
// top of codec rather than through a library that retries, reorders or
// acknowledges on its own.
type mqttConn struct {
	nc net.Conn
	br *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte

	body []byte
}

// appender is a packet codec can encode.
type appender interface {
	Append(dst []byte, v codec.Version) []byte
}

// connectOpts are how a chaos client connects: always MQTT 5, never
// clean, with a session that outlives any run.
type connectOpts struct {
	id         string
	keepAlive  uint16 // seconds
	receiveMax uint16
	timeout    time.Duration // dial plus CONNACK
}

// sessionExpiry is the session expiry every chaos client asks for: far
// longer than a run, so that no session ends for a reason of its own.
const sessionExpiry = 24 * time.Hour

// errRefused is a CONNACK that did not accept the client.
type errRefused struct{ code codec.ReasonCode }

func (e errRefused) Error() string { return fmt.Sprintf("CONNACK 0x%02x %v", byte(e.code), e.code) }

// dialMQTT connects to addr and waits for the CONNACK.
func dialMQTT(ctx context.Context, addr string, o connectOpts) (*mqttConn, *codec.Connack, error) {
	d := net.Dialer{Timeout: o.timeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot connect to %s: %w", addr, err)
	}
	c := &mqttConn{nc: nc, br: bufio.NewReaderSize(nc, 16<<10)}
	p := codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, KeepAlive: o.keepAlive, ClientID: []byte(o.id)}
	p.Props.SessionExpiry = uint32(sessionExpiry / time.Second)
	p.Props.Set(codec.PropSessionExpiry)
	p.Props.ReceiveMaximum = o.receiveMax
	p.Props.Set(codec.PropReceiveMaximum)
	deadline := time.Now().Add(o.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = nc.SetDeadline(deadline)
	if err := c.send(&p); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("cannot send CONNECT to %s: %w", addr, err)
	}
	fh, body, err := c.read(time.Until(deadline))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("no CONNACK from %s: %w", addr, err)
	}
	if fh.Type != codec.CONNACK {
		nc.Close()
		return nil, nil, fmt.Errorf("%v instead of CONNACK from %s", fh.Type, addr)
	}
	var ca codec.Connack
	if err := ca.Decode(fh, body, codec.V5); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("bad CONNACK from %s: %w", addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	if ca.Code != codec.Success {
		nc.Close()
		return nil, &ca, errRefused{ca.Code}
	}
	return c, &ca, nil
}

// send writes p whole; writes from several goroutines do not interleave.
func (c *mqttConn) send(p appender) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = p.Append(c.wbuf[:0], codec.V5)
	_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.nc.Write(c.wbuf)
	return err
}

// read returns the next packet, failing when none whole arrives within
// timeout. The body lives until the next call.
func (c *mqttConn) read(timeout time.Duration) (codec.FixedHeader, []byte, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	return bench.ReadPacket(c.br, &c.body)
}

func (c *mqttConn) close() { _ = c.nc.Close() }

// why names the reason a connection ended, for the history.
func why(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, io.EOF):
		return "closed by the broker"
	case errors.As(err, &ne) && ne.Timeout():
		return "silent (keepalive)"
	default:
		return err.Error()
	}
}
