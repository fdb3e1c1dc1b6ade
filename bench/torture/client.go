package torture

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/gannetmq/gannet/bench"
	"github.com/gannetmq/gannet/codec"
)

// client is one MQTT connection with a goroutine that reads it. The
// scenarios need what bench's event-loop client does not do: resume a
// session and keep its ledger across a broker kill, read at a set pace or
// not at all, stop half-way through a packet, or send packets no
// well-behaved client sends. At the sizes here (10,000 connections at
// most, modest rates) a goroutine per connection costs the test process
// little, and the broker under test cannot tell.
type client struct {
	id string
	v  codec.Version
	nc net.Conn
	br *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte

	mu      sync.Mutex
	nextID  uint16
	acks    map[uint16]func(codec.ReasonCode)
	subacks map[uint16]chan []codec.ReasonCode
	credit  chan struct{}

	// onPublish sees each PUBLISH on the reader goroutine; the packet's
	// slices live until it returns. Set before serve.
	onPublish func(p *codec.Publish)
	// pace, when set, is waited for before each packet is read: a slow
	// consumer.
	pace func() bool

	serving    bool          // serve was called
	done       chan struct{} // closed when the reader stops
	err        error         // why it stopped; read after done
	disconnect codec.ReasonCode
	body       []byte
	pub        codec.Publish
}

// clientConfig is how a client connects.
type clientConfig struct {
	id         string
	version    codec.Version // default MQTT 5
	cleanStart bool
	// expiry is the session expiry the client asks for (MQTT 5), or with
	// MQTT 3.1.1 anything but 0 connects with clean session 0.
	expiry     time.Duration
	keepAlive  uint16 // seconds; default 600
	receiveMax uint16 // MQTT 5; default 65535
	// rcvBuf, when set, is the socket's receive buffer, set before the
	// connection is made so that the window the broker sees is small.
	rcvBuf   int
	timeout  time.Duration // dial plus CONNACK; default 30 s
	inflight int           // QoS 1 publishes awaiting PUBACK at most; default 100
}

// errRefused is a CONNACK that did not accept the client.
type errRefused struct{ code codec.ReasonCode }

func (e errRefused) Error() string { return fmt.Sprintf("CONNACK 0x%02x %v", byte(e.code), e.code) }

// connect dials addr, sends CONNECT and waits for the CONNACK; it does
// not start reading further (see serve).
func connect(ctx context.Context, addr string, cfg clientConfig) (*client, *codec.Connack, error) {
	if cfg.version == 0 {
		cfg.version = codec.V5
	}
	if cfg.keepAlive == 0 {
		cfg.keepAlive = 600
	}
	if cfg.timeout == 0 {
		cfg.timeout = 30 * time.Second
	}
	if cfg.inflight == 0 {
		cfg.inflight = 100
	}
	c, err := dialRaw(ctx, addr, cfg.rcvBuf, cfg.timeout)
	if err != nil {
		return nil, nil, err
	}
	c.id, c.v = cfg.id, cfg.version
	c.credit = make(chan struct{}, cfg.inflight)
	for range cfg.inflight {
		c.credit <- struct{}{}
	}
	p := codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: cfg.version, CleanStart: cfg.cleanStart,
		KeepAlive: cfg.keepAlive, ClientID: []byte(cfg.id)}
	if cfg.version == codec.V5 {
		p.Props.ReceiveMaximum = cfg.receiveMax
		if p.Props.ReceiveMaximum == 0 {
			p.Props.ReceiveMaximum = 65535
		}
		p.Props.Set(codec.PropReceiveMaximum)
		if cfg.expiry > 0 {
			p.Props.SessionExpiry = uint32(cfg.expiry / time.Second)
			p.Props.Set(codec.PropSessionExpiry)
		}
	} else if cfg.expiry > 0 {
		p.CleanStart = false
	}
	_ = c.nc.SetDeadline(time.Now().Add(cfg.timeout))
	if err := c.write(p.Append(nil, cfg.version)); err != nil {
		c.nc.Close()
		return nil, nil, fmt.Errorf("%s: cannot send CONNECT: %w", cfg.id, err)
	}
	fh, body, err := c.readPacket()
	if err != nil {
		c.nc.Close()
		return nil, nil, fmt.Errorf("%s: no CONNACK: %w", cfg.id, err)
	}
	var ca codec.Connack
	if fh.Type != codec.CONNACK {
		c.nc.Close()
		return nil, nil, fmt.Errorf("%s: %v instead of CONNACK", cfg.id, fh.Type)
	}
	if err := ca.Decode(fh, body, cfg.version); err != nil {
		c.nc.Close()
		return nil, nil, fmt.Errorf("%s: CONNACK: %w", cfg.id, err)
	}
	_ = c.nc.SetDeadline(time.Time{})
	if ca.Code != codec.Success {
		c.nc.Close()
		return nil, &ca, errRefused{ca.Code}
	}
	return c, &ca, nil
}

// dialRaw makes the TCP connection of a client that has not spoken yet.
func dialRaw(ctx context.Context, addr string, rcvBuf int, timeout time.Duration) (*client, error) {
	d := net.Dialer{Timeout: timeout}
	if rcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w", addr, err)
	}
	return &client{nc: nc, br: bufio.NewReaderSize(nc, 2048), done: make(chan struct{}),
		acks: map[uint16]func(codec.ReasonCode){}, subacks: map[uint16]chan []codec.ReasonCode{}}, nil
}

// write sends b whole; writes from several goroutines do not interleave.
func (c *client) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// readPacket reads the next whole packet; the body lives until the next
// call.
func (c *client) readPacket() (codec.FixedHeader, []byte, error) {
	return bench.ReadPacket(c.br, &c.body)
}

// serve starts the reader goroutine: PUBLISHes go to onPublish and are
// acknowledged, acknowledgements reach the calls that wait for them.
func (c *client) serve() {
	c.serving = true
	go c.readLoop()
}

func (c *client) readLoop() {
	defer close(c.done)
	var ack codec.Ack
	var suback codec.Suback
	var out []byte
	for {
		if c.pace != nil && !c.pace() {
			c.err = errors.New("stopped")
			return
		}
		fh, body, err := c.readPacket()
		if err != nil {
			c.err = err
			return
		}
		switch fh.Type {
		case codec.PUBLISH:
			if err := c.pub.Decode(fh, body, c.v); err != nil {
				c.err = err
				return
			}
			if c.onPublish != nil {
				c.onPublish(&c.pub)
			}
			if c.pub.QoS == 1 {
				out = (&codec.Ack{Kind: codec.PUBACK, PacketID: c.pub.PacketID}).Append(out[:0], c.v)
				if err := c.write(out); err != nil {
					c.err = err
					return
				}
			}
		case codec.PUBACK:
			if ack.Decode(fh, body, c.v) != nil {
				continue
			}
			c.mu.Lock()
			f := c.acks[ack.PacketID]
			delete(c.acks, ack.PacketID)
			c.mu.Unlock()
			if f != nil {
				c.credit <- struct{}{}
				f(ack.Code)
			}
		case codec.SUBACK:
			if suback.Decode(fh, body, c.v) != nil {
				continue
			}
			c.mu.Lock()
			ch := c.subacks[suback.PacketID]
			delete(c.subacks, suback.PacketID)
			c.mu.Unlock()
			if ch != nil {
				ch <- append([]codec.ReasonCode(nil), suback.Codes...)
			}
		case codec.DISCONNECT:
			var d codec.Disconnect
			if d.Decode(fh, body, c.v) == nil {
				c.disconnect = d.Code
			}
			c.err = fmt.Errorf("DISCONNECT 0x%02x %v", byte(d.Code), d.Code)
			return
		}
	}
}

// allocID returns a packet id not waiting for an answer.
// REQUIRES: c.mu held.
func (c *client) allocIDLocked() uint16 {
	for {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		_, a := c.acks[c.nextID]
		_, s := c.subacks[c.nextID]
		if !a && !s {
			return c.nextID
		}
	}
}

// errClosed is a call on a connection whose reader has stopped.
var errClosed = errors.New("connection closed")

// subscribe sends one SUBSCRIBE with subs and waits for its SUBACK.
func (c *client) subscribe(ctx context.Context, subs ...codec.Subscription) ([]codec.ReasonCode, error) {
	ch := make(chan []codec.ReasonCode, 1)
	c.mu.Lock()
	id := c.allocIDLocked()
	c.subacks[id] = ch
	c.mu.Unlock()
	if err := c.write((&codec.Subscribe{PacketID: id, Subs: subs}).Append(nil, c.v)); err != nil {
		return nil, err
	}
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case codes := <-ch:
		return codes, nil
	case <-c.done:
		return nil, fmt.Errorf("%s: no SUBACK: %w (%v)", c.id, errClosed, c.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%s: no SUBACK within a minute", c.id)
	}
}

// publish sends p. At QoS 1 it first waits for a free slot of the
// inflight window, and onAck runs on the reader goroutine with the
// PUBACK's code; a message whose PUBACK never comes (the connection
// ended) never sees onAck.
func (c *client) publish(p *codec.Publish, onAck func(codec.ReasonCode)) error {
	if p.QoS > 0 {
		select {
		case <-c.credit:
		case <-c.done:
			return errClosed
		}
		c.mu.Lock()
		p.PacketID = c.allocIDLocked()
		c.acks[p.PacketID] = onAck
		c.mu.Unlock()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = p.Append(c.wbuf[:0], c.v)
	_, err := c.nc.Write(c.wbuf)
	return err
}

// close ends the connection without a DISCONNECT and waits for the reader.
func (c *client) close() {
	_ = c.nc.Close()
	if c.serving {
		<-c.done
	}
}

// hangUp sends DISCONNECT (normal) and closes.
func (c *client) hangUp() {
	_ = c.write((&codec.Disconnect{}).Append(nil, c.v))
	c.close()
}

// closed reports whether the reader has stopped (serve was called).
func (c *client) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Payloads carry a sequence number and the send time, so that receivers
// can keep a ledger and measure latency.
const stampSize = 16

func stamp(b []byte, seq uint64, now time.Time) {
	binary.BigEndian.PutUint64(b, seq)
	binary.BigEndian.PutUint64(b[8:], uint64(now.UnixNano()))
}

func readStamp(b []byte) (seq uint64, sent time.Time, ok bool) {
	if len(b) < stampSize {
		return 0, time.Time{}, false
	}
	return binary.BigEndian.Uint64(b), time.Unix(0, int64(binary.BigEndian.Uint64(b[8:]))), true
}
