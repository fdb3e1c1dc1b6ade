package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// A broker killed with SIGKILL in the middle of a load loses no message it
// acknowledged: after a restart on the same data directory, every persistent
// session gets each acknowledged message at least once for QoS 1 and
// exactly once for QoS 2.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--data-dir=" + dir, "--durability=sync", "--max-queued-messages=1000000", "--log-level=warn"}
	b := startGannet(t, args...)

	subscribeSessions(t, b.mqtt)

	// Publishers at QoS 1 and 2 record what the broker acknowledged. The
	// broker is killed once enough is acknowledged, with publishes still
	// in flight.
	pubs := loadPublishers()
	killed, wait, total := runLoad(pubs, b.mqtt, 20_000, 1500, func() { _ = b.cmd.Process.Kill() })
	select {
	case <-killed:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d messages acknowledged in 60s", total.Load())
	}
	<-b.exited
	wait()
	for _, p := range pubs {
		if p.err != nil && !p.lost {
			t.Fatalf("publisher %s: %v", p.id, p.err)
		}
	}
	t.Logf("acknowledged before the kill: %d", total.Load())

	b2 := startGannet(t, args...)
	for _, s := range crashSessions {
		got := receiveAll(t, b2.mqtt, s.id, pubs)
		checkDelivered(t, s, got, pubs)
		if s.qos == 2 {
			// Exactly once holds for every QoS 2 message, acknowledged or
			// caught in flight by the kill.
			for key, n := range got {
				if n > 1 && (strings.HasPrefix(key, "p3/") || strings.HasPrefix(key, "p4/")) {
					t.Errorf("%s got %s %d times at QoS 2", s.id, key, n)
				}
			}
		}
	}
}

// dialSession connects a v5 client with a session that outlives it.
func dialSession(t *testing.T, addr, id string, wantPresent bool) *mqttConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	mc := &mqttConn{t: t, c: c, r: bufio.NewReaderSize(c, 64<<10), v: codec.V5}
	cp := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, KeepAlive: 60, ClientID: []byte(id)}
	cp.Props.SessionExpiry = 3600
	cp.Props.Set(codec.PropSessionExpiry)
	cp.Props.ReceiveMaximum = 1000
	cp.Props.Set(codec.PropReceiveMaximum)
	mc.send(cp)
	p, err := mc.read()
	if err != nil {
		t.Fatalf("%s: no CONNACK: %v", id, err)
	}
	ca, ok := p.(*codec.Connack)
	if !ok || ca.Code != codec.Success || ca.SessionPresent != wantPresent {
		t.Fatalf("%s: got %+v, want CONNACK success with session present %v", id, p, wantPresent)
	}
	return mc
}

// crashSession is a persistent session the crash tests subscribe to
// crash/# at qos before the load.
type crashSession struct {
	id  string
	qos byte
}

var crashSessions = []crashSession{{"keep-q1", 1}, {"keep-q2", 2}}

// subscribeSessions creates the crash sessions on the broker at addr and
// leaves them offline.
func subscribeSessions(t *testing.T, addr string) {
	t.Helper()
	for _, s := range crashSessions {
		mc := dialSession(t, addr, s.id, false)
		mc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("crash/#"), QoS: s.qos}}})
		if p, err := mc.read(); err != nil || p.Type() != codec.SUBACK {
			t.Fatalf("%s: got %v, %v; want SUBACK", s.id, p, err)
		}
		mc.send(&codec.Disconnect{})
		_ = mc.c.Close()
	}
}

// loadPublishers are two QoS 1 and two QoS 2 publishers.
func loadPublishers() []*loadPublisher {
	return []*loadPublisher{{id: "p1", qos: 1}, {id: "p2", qos: 1}, {id: "p3", qos: 2}, {id: "p4", qos: 2}}
}

// runLoad runs pubs against addr, n messages each, and calls kill once
// killAfter messages are acknowledged in all. It returns a channel closed
// after the kill, a wait for every publisher to end, and the count of
// acknowledged messages.
func runLoad(pubs []*loadPublisher, addr string, n int, killAfter int64, kill func()) (<-chan struct{}, func(), *atomic.Int64) {
	total := new(atomic.Int64)
	killed := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for _, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.run(addr, n, func() {
				if total.Add(1) == killAfter {
					once.Do(func() {
						kill()
						close(killed)
					})
				}
			})
		}()
	}
	return killed, wg.Wait, total
}

// checkDelivered fails the test for every acknowledged message the
// session did not get, and for any QoS 2 message a QoS 2 session got more
// than once. It returns how many other messages came more than once.
func checkDelivered(t *testing.T, s crashSession, got map[string]int, pubs []*loadPublisher) (dups int) {
	t.Helper()
	for _, p := range pubs {
		for seq := range p.acked {
			key := p.id + "/" + strconv.Itoa(seq)
			switch n := got[key]; {
			case n == 0:
				t.Errorf("%s lost %s, which the broker acknowledged at QoS %d", s.id, key, p.qos)
			case n > 1 && s.qos == 2 && p.qos == 2:
				t.Errorf("%s got %s %d times at QoS 2", s.id, key, n)
			case n > 1:
				dups++
			}
		}
	}
	return dups
}

// receiveAll reconnects a persistent session and takes everything it holds,
// acknowledging as a receiver that keeps QoS 2 exactly once: a PUBLISH whose
// packet id awaits PUBREL is the same message again. It returns how many
// times each message was delivered to the application.
func receiveAll(t *testing.T, addr, id string, pubs []*loadPublisher) map[string]int {
	t.Helper()
	mc := dialSession(t, addr, id, true)
	got := make(map[string]int)
	awaitingRel := make(map[uint16]bool)
	want := 0
	for _, p := range pubs {
		want += len(p.acked)
	}
	have := func() int {
		n := 0
		for _, p := range pubs {
			for seq := range p.acked {
				if got[p.id+"/"+strconv.Itoa(seq)] > 0 {
					n++
				}
			}
		}
		return n
	}
	pinged, sincePing := false, 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d acknowledged messages after 60s", id, have(), want)
		}
		p, err := mc.read()
		if err != nil {
			t.Fatalf("%s: %v (have %d of %d)", id, err, have(), want)
		}
		switch p := p.(type) {
		case *codec.Publish:
			sincePing++
			switch p.QoS {
			case 1:
				got[string(p.Payload)]++
				mc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
			case 2:
				if !awaitingRel[p.PacketID] {
					awaitingRel[p.PacketID] = true
					got[string(p.Payload)]++
				}
				mc.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
			default:
				t.Fatalf("%s: QoS 0 delivery of %s to a persistent QoS 1/2 subscription", id, p.Payload)
			}
		case *codec.Ack:
			if p.Kind == codec.PUBREL {
				delete(awaitingRel, p.PacketID)
				mc.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: p.PacketID})
			}
		case *codec.Pingresp:
			pinged = false
			if sincePing == 0 && len(awaitingRel) == 0 && have() == want {
				return got
			}
		}
		if !pinged && have() == want {
			// Everything acknowledged is here; a ping answered with nothing
			// before it shows the queue is empty too.
			pinged, sincePing = true, 0
			mc.send(&codec.Pingreq{})
		}
	}
}

// loadPublisher publishes numbered messages with a window of unacknowledged
// ones and records which the broker acknowledged.
type loadPublisher struct {
	id    string
	qos   byte
	acked map[int]bool
	err   error
	lost  bool // the connection ended (the broker was killed)
}

func (lp *loadPublisher) run(addr string, n int, onAck func()) {
	lp.acked = make(map[int]bool)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		lp.err = err
		return
	}
	defer c.Close()
	w := bufio.NewWriter(c)
	r := bufio.NewReaderSize(c, 64<<10)
	cp := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, KeepAlive: 60, ClientID: []byte(lp.id)}
	_, _ = w.Write(cp.Append(nil, codec.V311))
	_ = w.Flush()
	if p, err := readPacket(r, codec.V311); err != nil || p.Type() != codec.CONNACK {
		lp.err = fmt.Errorf("no CONNACK: %v", err)
		return
	}
	const window = 32
	pending := make(map[uint16]int) // packet id -> sequence number
	next := 0
	for next < n || len(pending) > 0 {
		for next < n && len(pending) < window {
			pid := uint16(next%60000 + 1)
			pending[pid] = next
			pub := &codec.Publish{Topic: []byte("crash/" + lp.id), QoS: lp.qos, PacketID: pid,
				Payload: []byte(lp.id + "/" + strconv.Itoa(next))}
			_, _ = w.Write(pub.Append(nil, codec.V311))
			next++
		}
		if err := w.Flush(); err != nil {
			lp.lost = true
			lp.err = err
			return
		}
		p, err := readPacket(r, codec.V311)
		if err != nil {
			lp.lost = true
			lp.err = err
			return
		}
		a, ok := p.(*codec.Ack)
		if !ok {
			lp.err = fmt.Errorf("unexpected %s", p.Type())
			return
		}
		switch a.Kind {
		case codec.PUBACK, codec.PUBREC:
			seq, ok := pending[a.PacketID]
			if !ok {
				lp.err = fmt.Errorf("%s for unknown id %d", a.Kind, a.PacketID)
				return
			}
			lp.acked[seq] = true
			onAck()
			if a.Kind == codec.PUBACK {
				delete(pending, a.PacketID)
			} else {
				_, _ = w.Write((&codec.Ack{Kind: codec.PUBREL, PacketID: a.PacketID}).Append(nil, codec.V311))
			}
		case codec.PUBCOMP:
			delete(pending, a.PacketID)
		}
	}
}

// readPacket reads one whole packet.
func readPacket(r *bufio.Reader, v codec.Version) (codec.Packet, error) {
	var hdr [5]byte
	n := 0
	for {
		b, err := r.ReadByte()
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
	if _, err := io.ReadFull(r, buf[hn:]); err != nil {
		return nil, err
	}
	p, _, err := codec.Decode(buf, v, 0)
	return p, err
}
