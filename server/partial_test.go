package server

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// visitClients runs f on every client, on the client's loop, one loop
// after another, and returns once it has run everywhere.
func visitClients(t *testing.T, s *Server, f func(c *client)) {
	t.Helper()
	for _, l := range s.loopList() {
		done := make(chan struct{})
		err := l.el.Execute(context.Background(), runFunc(func() {
			for _, c := range l.conns {
				f(c)
			}
			close(done)
		}))
		if err != nil {
			t.Fatal(err)
		}
		<-done
	}
}

// A connection stalled half-way through a packet holds the bytes it sent
// in a buffer of its own, none of gnet's (whose pooled buffers keep what
// they grew to for other connections), and the packet is handled once
// the rest comes.
func TestStalledPacketHoldsNoSharedBuffer(t *testing.T) {
	s := startBroker(t, nil)
	half := dialRaw(t, s, codec.V5)
	connect := (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, CleanStart: true,
		KeepAlive: 60, ClientID: []byte("half")}).Append(nil, codec.V5)
	half.write(connect[:len(connect)/2])

	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.subscribe("big", 0)
	payload := bytes.Repeat([]byte("0123456789"), 20_000)
	publish := (&codec.Publish{Topic: []byte("big"), Payload: payload}).Append(nil, codec.V5)
	pub.write(publish[:1000])

	type kept struct {
		gnet, partial, capacity int
	}
	state := func() map[string]kept {
		got := map[string]kept{}
		visitClients(t, s, func(c *client) {
			k := kept{gnet: c.gc.InboundBuffered()}
			if c.rare != nil {
				k.partial, k.capacity = len(c.rare.partial), cap(c.rare.partial)
			}
			name := c.id
			if name == "" {
				name = "half"
			}
			got[name] = k
		})
		return got
	}
	waitFor(t, "both connections' bytes read", func() bool {
		st := state()
		return st["half"].gnet+st["half"].partial == len(connect)/2 && st["pub"].gnet+st["pub"].partial == 1000
	})
	st := state()
	if st["half"].gnet != 0 || st["half"].partial != len(connect)/2 {
		t.Errorf("half a CONNECT: %+v, want the bytes kept by the client, none in gnet's buffer", st["half"])
	}
	if want := (kept{0, 1000, 1 << bits.Len(uint(len(publish)-1))}); st["pub"] != want {
		t.Errorf("the start of a PUBLISH: %+v, want %+v (a buffer of the packet's size class)", st["pub"], want)
	}

	half.write(connect[len(connect)/2:])
	if ack, ok := half.expect().(*codec.Connack); !ok || ack.Code != codec.Success {
		t.Fatalf("the completed CONNECT: got %v, want CONNACK success", ack)
	}
	pub.write(publish[1000:])
	got, ok := pub.expect().(*codec.Publish)
	if !ok || !bytes.Equal(got.Payload, payload) {
		t.Fatal("the completed PUBLISH did not come back whole")
	}
	if k := state()["pub"]; k.partial != 0 || k.capacity != 0 {
		t.Errorf("after the PUBLISH was handled the client still keeps %d bytes (capacity %d)", k.partial, k.capacity)
	}
}

// Packets that arrive over many reads, large and small, back to back with
// packet boundaries anywhere in a read, are handled in order and whole.
func TestPacketsSplitAcrossReads(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V311)
	rc.connect("split", nil)
	rc.subscribe("t/#", 0)
	var stream []byte
	var want [][]byte
	for i, size := range []int{300_000, 5, 70_000, 1, 64 << 10, 200, 0, 127, 128, 16_383, 16_384, 3} {
		payload := bytes.Repeat([]byte{byte('a' + i)}, size)
		want = append(want, payload)
		stream = (&codec.Publish{Topic: []byte(fmt.Sprintf("t/%d", i)), Payload: payload}).Append(stream, codec.V311)
	}
	// Writes of 1 to 9,000 bytes (a fixed seed): packet boundaries, and
	// the boundaries of the reads that take them, fall anywhere, inside
	// fixed headers too.
	rng := rand.New(rand.NewPCG(1, 2))
	for len(stream) > 0 {
		n := min(len(stream), 1+rng.IntN(9000))
		rc.write(stream[:n])
		stream = stream[n:]
	}
	for i, w := range want {
		p, ok := rc.expect().(*codec.Publish)
		if !ok || string(p.Topic) != fmt.Sprintf("t/%d", i) || !bytes.Equal(p.Payload, w) {
			t.Fatalf("message %d did not arrive whole and in order", i)
		}
	}
}

// A packet whose fixed header itself arrives in pieces is kept too, and
// once its size is known it gets a buffer of that size class at once.
func TestPacketWithSplitHeader(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V311)
	rc.connect("hdr", nil)
	rc.subscribe("h", 0)
	payload := bytes.Repeat([]byte("z"), 100_000)
	publish := (&codec.Publish{Topic: []byte("h"), Payload: payload}).Append(nil, codec.V311)
	kept := func() (n, capacity int) {
		visitClients(t, s, func(c *client) {
			if c.id == "hdr" && c.rare != nil {
				n, capacity = len(c.rare.partial), cap(c.rare.partial)
			}
		})
		return n, capacity
	}
	rc.write(publish[:2]) // the type and the first byte of the remaining length
	waitFor(t, "two bytes kept", func() bool { n, _ := kept(); return n == 2 })
	rc.write(publish[2:10])
	waitFor(t, "ten bytes kept", func() bool { n, _ := kept(); return n == 10 })
	if _, capacity := kept(); capacity != 1<<bits.Len(uint(len(publish)-1)) {
		t.Errorf("kept in a buffer of %d bytes, want the packet's size class %d", capacity, 1<<bits.Len(uint(len(publish)-1)))
	}
	rc.write(publish[10:])
	if p, ok := rc.expect().(*codec.Publish); !ok || !bytes.Equal(p.Payload, payload) {
		t.Fatal("the PUBLISH did not come back whole")
	}
}
