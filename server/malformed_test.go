package server

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// Each row sends bytes after (or instead of) a valid CONNECT and names
// what the broker must answer before it closes the connection: a v5 client
// hears the reason code, a 3.1.1 client gets a silent close.
var badInputs = []struct {
	name    string
	v       codec.Version
	connect bool   // send a valid CONNECT first
	raw     []byte // then these bytes
	want    codec.Type
	code    codec.ReasonCode
}{
	// [MQTT-3.1.0-1] the first packet must be CONNECT.
	{"first packet PUBLISH", codec.V5, false, []byte{0x30, 3, 0, 1, 't'}, 0, 0},
	// [MQTT-3.1.0-2] a second CONNECT is a protocol error.
	{"second CONNECT", codec.V5, true, connectBytes(codec.V5), codec.DISCONNECT, codec.ProtocolError},
	{"second CONNECT 3.1.1", codec.V311, true, connectBytes(codec.V311), 0, 0},
	// [MQTT-3.3.1-4] QoS 3.
	{"PUBLISH QoS 3", codec.V5, true, []byte{0x36, 5, 0, 1, 't', 0, 1}, codec.DISCONNECT, codec.MalformedPacket},
	// [MQTT-2.1.3-1] reserved flags.
	{"PINGREQ with flags", codec.V5, true, []byte{0xc3, 0}, codec.DISCONNECT, codec.MalformedPacket},
	{"SUBSCRIBE flags 0000", codec.V311, true, []byte{0x80, 6, 0, 1, 0, 1, 'a', 0}, 0, 0},
	// [MQTT-1.5.4-1] a topic that is not UTF-8.
	{"topic not UTF-8", codec.V5, true, []byte{0x30, 5, 0, 2, 0xc3, 0x28, 0}, codec.DISCONNECT, codec.MalformedPacket},
	// [MQTT-1.5.5-1] a remaining length of five bytes.
	{"remaining length of 5 bytes", codec.V5, true, []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, codec.DISCONNECT, codec.MalformedPacket},
	// [MQTT-3.3.2-2] a wildcard in a topic name.
	{"wildcard topic", codec.V5, true, []byte{0x30, 6, 0, 3, 'a', '/', '#', 0}, codec.DISCONNECT, codec.TopicNameInvalid},
	// [MQTT-3.2.2-15] a packet larger than the maximum (1 KB here).
	{"packet too large", codec.V5, true, append([]byte{0x30, 0x80, 0x10}, make([]byte, 10)...), codec.DISCONNECT, codec.PacketTooLarge},
	// [MQTT-3.8.3-3] SUBSCRIBE without a filter.
	{"SUBSCRIBE without filters", codec.V5, true, []byte{0x82, 3, 0, 1, 0}, codec.DISCONNECT, codec.ProtocolError},
	// [MQTT-4.12.0-1] AUTH when no authentication method was agreed.
	{"AUTH without method", codec.V5, true, []byte{0xf0, 0}, codec.DISCONNECT, codec.ProtocolError},
	// Packets only a server sends.
	{"PINGRESP from a client", codec.V5, true, []byte{0xd0, 0}, codec.DISCONNECT, codec.ProtocolError},
	{"CONNACK from a client", codec.V311, true, []byte{0x20, 2, 0, 0}, 0, 0},
	// [MQTT-2.2.1-3] packet id 0.
	{"PUBLISH QoS 1 id 0", codec.V5, true, []byte{0x32, 6, 0, 1, 't', 0, 0, 0}, codec.DISCONNECT, codec.ProtocolError},
	// [MQTT-3.3.2-8] topic alias 0.
	{"topic alias 0", codec.V5, true, []byte{0x30, 7, 0, 1, 't', 3, 0x23, 0, 0}, codec.DISCONNECT, codec.TopicAliasInvalid},
	// A topic alias never set, with an empty topic.
	{"unknown topic alias", codec.V5, true, []byte{0x30, 6, 0, 0, 3, 0x23, 0, 1}, codec.DISCONNECT, codec.ProtocolError},
	// Bad CONNECTs: v5 gets CONNACK with the code.
	{"CONNECT reserved flag", codec.V5, false, []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x03, 0, 0, 0, 0, 0}, codec.CONNACK, codec.MalformedPacket},
	{"CONNECT receive maximum 0", codec.V5, false, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x21, 0, 0, 0, 0}, codec.CONNACK, codec.ProtocolError},
	{"CONNECT 3.1.1 will QoS 3", codec.V311, false, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x1e, 0, 0, 0, 0}, 0, 0},
}

func connectBytes(v codec.Version) []byte {
	return (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: v, CleanStart: true, ClientID: []byte("again")}).Append(nil, v)
}

func TestBadInput(t *testing.T) {
	var logs syncBuffer
	s := startBroker(t, func(c *Config) {
		c.MaxPacketSize = 1024
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	for _, bi := range badInputs {
		rc := dialRaw(t, s, bi.v)
		id := "bad-" + strings.ReplaceAll(bi.name, " ", "-")
		if bi.connect {
			if ca := rc.connect(id, nil); ca.Code != codec.Success {
				t.Fatalf("%s: connect %v", bi.name, ca.Code)
			}
		}
		rc.write(bi.raw)
		got := rc.expectClosed()
		switch {
		case bi.want == 0 && len(got) != 0:
			t.Errorf("%s: got %v, want a silent close", bi.name, got)
		case bi.want == codec.DISCONNECT && (len(got) != 1 || got[0].Type() != codec.DISCONNECT || got[0].(*codec.Disconnect).Code != bi.code):
			t.Errorf("%s: got %v, want DISCONNECT %v", bi.name, got, bi.code)
		case bi.want == codec.CONNACK && (len(got) != 1 || got[0].Type() != codec.CONNACK || got[0].(*codec.Connack).Code != bi.code):
			t.Errorf("%s: got %v, want CONNACK %v", bi.name, got, bi.code)
		}
		// The log names the client and the cause.
		if bi.connect && bi.want == codec.DISCONNECT {
			line := logs.lineWith("client=" + id)
			if line == "" || !strings.Contains(line, "closing connection") || !strings.Contains(line, bi.code.String()) {
				t.Errorf("%s: no log line naming the client and %q; got %q", bi.name, bi.code, line)
			}
		}
	}
}

// A PUBREL for an id the broker does not hold is answered with PUBCOMP
// 0x92 in v5, not a disconnect [MQTT-4.3.3-?]: the client may be resending
// after a reconnect.
func TestPubrelUnknownID(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	rc.connect("rel", nil)
	rc.send(&codec.Ack{Kind: codec.PUBREL, PacketID: 42})
	a := rc.expect().(*codec.Ack)
	if a.Kind != codec.PUBCOMP || a.PacketID != 42 || a.Code != codec.PacketIdentifierNotFound {
		t.Fatalf("got %+v", a)
	}
}

// syncBuffer is a log sink safe for the broker's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lineWith(sub string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range strings.Split(s.b.String(), "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// mutate returns a corrupted copy of a valid packet stream: flipped,
// inserted, deleted and duplicated bytes.
func mutate(r *rand.Rand, valid []byte) []byte {
	b := append([]byte(nil), valid...)
	for range 1 + r.IntN(4) {
		if len(b) == 0 {
			b = append(b, byte(r.Uint32()))
			continue
		}
		i := r.IntN(len(b))
		switch r.IntN(4) {
		case 0:
			b[i] ^= byte(1 << r.IntN(8))
		case 1:
			b = append(b[:i], append([]byte{byte(r.Uint32())}, b[i:]...)...)
		case 2:
			b = append(b[:i], b[i+1:]...)
		case 3:
			b = append(b, b[i:min(len(b), i+1+r.IntN(8))]...)
		}
	}
	return b
}

// validStream is a plausible session after CONNECT: subscribe, publish at
// every QoS, acknowledge, ping, unsubscribe, disconnect.
func validStream(v codec.Version) []byte {
	var b []byte
	b = (&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("f/+"), QoS: 2}}}).Append(b, v)
	for q := byte(0); q <= 2; q++ {
		p := &codec.Publish{QoS: q, Topic: []byte("f/x"), Payload: []byte("payload")}
		if q > 0 {
			p.PacketID = uint16(10 + q)
		}
		if v == codec.V5 {
			p.Props.User = []codec.UserProperty{{Key: []byte("k"), Value: []byte("v")}}
			p.Props.TopicAlias = 1
			p.Props.Set(codec.PropTopicAlias)
		}
		b = p.Append(b, v)
	}
	b = (&codec.Ack{Kind: codec.PUBREL, PacketID: 12}).Append(b, v)
	b = (&codec.Ack{Kind: codec.PUBACK, PacketID: 1}).Append(b, v)
	b = (&codec.Pingreq{}).Append(b, v)
	b = (&codec.Unsubscribe{PacketID: 2, Filters: [][]byte{[]byte("f/+")}}).Append(b, v)
	return (&codec.Disconnect{}).Append(b, v)
}

func openFDs(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(es)
}

// Garbage and mutated streams from many connections at once: the broker
// keeps serving a well-behaved pair throughout, and afterwards holds no
// more goroutines or file descriptors than before.
func TestGarbageDoesNotDisturbOthers(t *testing.T) {
	s := startBroker(t, nil)
	good := sub(t, s, codec.V5, "good-sub", codec.Subscription{Filter: []byte("good"), QoS: 1})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("good-pub", nil)
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	var wg sync.WaitGroup
	for w := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range 10 {
				c, err := net.Dial("tcp", s.Addr())
				if err != nil {
					t.Error(err)
					return
				}
				v := []codec.Version{codec.V311, codec.V5}[r.IntN(2)]
				var stream []byte
				switch r.IntN(3) {
				case 0: // random bytes
					stream = make([]byte, r.IntN(300))
					for i := range stream {
						stream[i] = byte(r.Uint32())
					}
				case 1: // a valid CONNECT, then a mutated session
					stream = append(connectBytes(v)[:0:0], connectBytes(v)...)
					stream = append(stream, mutate(r, validStream(v))...)
				default: // a mutated CONNECT and session
					stream = mutate(r, append(connectBytes(v), validStream(v)...))
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				_, _ = c.Write(stream)
				_ = c.Close()
			}
		}()
	}
	// Meanwhile the good pair keeps exchanging messages.
	for i := range 200 {
		pub.send(&codec.Publish{QoS: 1, PacketID: uint16(i + 1), Topic: []byte("good"), Payload: []byte{byte(i)}})
		if a := pub.expect().(*codec.Ack); a.PacketID != uint16(i+1) {
			t.Fatalf("PUBACK %d", a.PacketID)
		}
		p := good.expect().(*codec.Publish)
		if p.Payload[0] != byte(i) {
			t.Fatalf("good subscriber got %d, want %d", p.Payload[0], i)
		}
		good.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	wg.Wait()
	waitFor(t, "connections to close", func() bool { return s.stats.connections.Load() == 2 })
	waitFor(t, "goroutines and descriptors to return to baseline", func() bool {
		return runtime.NumGoroutine() <= baseG && openFDs(t) <= baseFD
	})
}

// FuzzServer sends the fuzz input as a stream on a fresh connection to a
// running broker, optionally after a valid CONNECT. The broker must not
// crash, and must still serve a well-behaved client afterwards.
func FuzzServer(f *testing.F) {
	f.Add(uint8(1), validStream(codec.V5))
	f.Add(uint8(0), validStream(codec.V311))
	f.Add(uint8(5), []byte{0x30, 0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(4), append(connectBytes(codec.V311), 0x82, 6, 0, 1, 0, 1, '#', 3))
	for _, bi := range badInputs {
		f.Add(uint8(bi.v), bi.raw)
	}
	// The broker logs every bad packet; the fuzzing engine forbids f.Logf
	// inside the target, so its log goes nowhere.
	s := startBroker(f, func(c *Config) { c.Logger = slog.New(slog.DiscardHandler) })
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		v := codec.V311
		if mode&1 == 1 {
			v = codec.V5
		}
		if mode&2 == 2 {
			data = append(connectBytes(v), data...)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(data)
		// Half-close: the broker handles every byte, reads EOF and closes,
		// so the read below ends as soon as the input is processed.
		_ = c.(*net.TCPConn).CloseWrite()
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		rc := dialRaw(t, s, codec.V5)
		if ca := rc.connect("", nil); ca.Code != codec.Success {
			t.Fatalf("broker refused a good client after the input: %v", ca.Code)
		}
		rc.ping()
	})
}
