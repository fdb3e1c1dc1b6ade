package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/codec"
)

// startBroker runs a broker on loopback ports chosen by the kernel and stops
// it when the test ends.
func startBroker(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.EventLoops = 2
	cfg.SysInterval = 0
	level := slog.LevelWarn
	if os.Getenv("DEBUG_GANNET_TESTS") != "" {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// testWriter sends log output to the test log so that it shows with the
// failing test only.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

// v5client is a paho.golang client with every received PUBLISH on a
// channel.
type v5client struct {
	*paho.Client
	msgs         chan *paho.Publish
	disconnected chan *paho.Disconnect
}

func dialV5(t testing.TB, s *Server, cp *paho.Connect) (*v5client, *paho.Connack) {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	vc := &v5client{msgs: make(chan *paho.Publish, 1000), disconnected: make(chan *paho.Disconnect, 1)}
	vc.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			vc.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { vc.disconnected <- d },
		OnClientError:      func(error) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	ca, err := vc.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %q: %v", cp.ClientID, err)
	}
	t.Cleanup(func() { _ = vc.Disconnect(&paho.Disconnect{}) })
	return vc, ca
}

func (vc *v5client) subscribe(t testing.TB, subs ...paho.SubscribeOptions) *paho.Suback {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := vc.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return sa
}

func (vc *v5client) publish(t testing.TB, p *paho.Publish) *paho.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := vc.Publish(ctx, p)
	if err != nil {
		t.Fatalf("publish %s: %v", p.Topic, err)
	}
	return r
}

// expect waits for the next message.
func (vc *v5client) expect(t testing.TB) *paho.Publish {
	t.Helper()
	select {
	case m := <-vc.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

// dialV3 connects a paho.mqtt.golang (3.1.1) client.
func dialV3(t testing.TB, s *Server, id string, clean bool, opt func(*paho3.ClientOptions)) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + s.Addr()).SetClientID(id).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetProtocolVersion(4).SetConnectTimeout(5 * time.Second)
	if opt != nil {
		opt(o)
	}
	c := paho3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %q: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func wait(t testing.TB, tok paho3.Token) {
	t.Helper()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("token: %v", tok.Error())
	}
}

// rawConn speaks MQTT byte by byte, for what client libraries cannot say.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	r  *bufio.Reader
	v  codec.Version
	id uint16
}

func dialRaw(t testing.TB, s *Server, v codec.Version) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c), v: v}
}

func (rc *rawConn) send(p codec.Packet) {
	rc.t.Helper()
	rc.write(p.Append(nil, rc.v))
}

func (rc *rawConn) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// read returns the next packet, or an error when the connection ends first.
func (rc *rawConn) read() (codec.Packet, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [5]byte
	n := 0
	for {
		b, err := rc.r.ReadByte()
		if err != nil {
			return nil, err
		}
		hdr[n] = b
		n++
		if n >= 2 && hdr[n-1]&0x80 == 0 || n == 5 {
			break
		}
	}
	h, hn, err := codec.DecodeFixedHeader(hdr[:n])
	if err != nil {
		return nil, err
	}
	buf := make([]byte, hn+h.Remaining)
	copy(buf, hdr[:hn])
	if _, err := io.ReadFull(rc.r, buf[hn:]); err != nil {
		return nil, err
	}
	p, _, err := codec.Decode(buf, rc.v, 0)
	return p, err
}

func (rc *rawConn) expect() codec.Packet {
	rc.t.Helper()
	p, err := rc.read()
	if err != nil {
		rc.t.Fatalf("read: %v", err)
	}
	return p
}

// expectClosed asserts that the broker closes the connection, after
// optionally sending packets first, which are returned.
func (rc *rawConn) expectClosed() []codec.Packet {
	rc.t.Helper()
	var got []codec.Packet
	for {
		p, err := rc.read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				rc.t.Fatalf("connection still open after 5s; got %d packets", len(got))
			}
			return got
		}
		got = append(got, p)
	}
}

func (rc *rawConn) connect(id string, mutate func(*codec.Connect)) *codec.Connack {
	rc.t.Helper()
	name := "MQTT"
	if rc.v == codec.V31 {
		name = "MQIsdp"
	}
	p := &codec.Connect{ProtocolName: []byte(name), ProtocolVersion: rc.v, CleanStart: true, KeepAlive: 30, ClientID: []byte(id)}
	if mutate != nil {
		mutate(p)
	}
	rc.send(p)
	ca, ok := rc.expect().(*codec.Connack)
	if !ok {
		rc.t.Fatal("expected CONNACK")
	}
	return ca
}

func (rc *rawConn) nextID() uint16 {
	rc.id++
	if rc.id == 0 {
		rc.id = 1
	}
	return rc.id
}

// ping sends PINGREQ and reads until PINGRESP, returning what came before:
// everything the broker queued for this connection before the ping.
func (rc *rawConn) ping() []codec.Packet {
	rc.t.Helper()
	rc.send(&codec.Pingreq{})
	var got []codec.Packet
	for {
		p := rc.expect()
		if _, ok := p.(*codec.Pingresp); ok {
			return got
		}
		got = append(got, p)
	}
}

// waitFor polls cond until it holds, for state that offers no signal to
// wait on (timers inside the broker).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// drain publishes a marker on topic from pub and returns what rc receives
// before the marker. Messages from one publisher reach a subscriber in
// order [MQTT-4.6.0-5], so the marker arrives after everything pub sent
// before it, whichever event loops the two connections are on.
func drain(pub, rc *rawConn, topic string) []*codec.Publish {
	rc.t.Helper()
	marker := []byte("\x00marker")
	pub.send(&codec.Publish{Topic: []byte(topic), Payload: marker})
	var got []*codec.Publish
	for {
		p, ok := rc.expect().(*codec.Publish)
		if !ok {
			rc.t.Fatal("expected PUBLISH")
		}
		if string(p.Payload) == string(marker) {
			return got
		}
		got = append(got, p)
	}
}
