package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/persist"
)

// restartable runs brokers one after another on one data directory.
type restartable struct {
	t      *testing.T
	dir    string
	mutate func(*Config)
	s      *Server
}

func newRestartable(t *testing.T, mutate func(*Config)) *restartable {
	r := &restartable{t: t, dir: t.TempDir(), mutate: mutate}
	r.start()
	return r
}

func (r *restartable) start() *Server {
	r.t.Helper()
	r.s = startBroker(r.t, func(c *Config) {
		c.DataDir = r.dir
		if r.mutate != nil {
			r.mutate(c)
		}
	})
	return r.s
}

// restart stops the broker cleanly and starts a new one on the same data.
func (r *restartable) restart() *Server {
	r.t.Helper()
	r.stop()
	return r.start()
}

func (r *restartable) stop() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.s.Shutdown(ctx); err != nil {
		r.t.Fatalf("shutdown: %v", err)
	}
}

// persistentV5 connects a v5 client that keeps its session for an hour.
func persistentV5(t *testing.T, s *Server, id string) (*rawConn, *codec.Connack) {
	t.Helper()
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect(id, func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 3600
		p.Props.Set(codec.PropSessionExpiry)
	})
	return rc, ca
}

func (rc *rawConn) subscribe(filter string, qos byte) {
	rc.t.Helper()
	rc.send(&codec.Subscribe{PacketID: rc.nextID(), Subs: []codec.Subscription{{Filter: []byte(filter), QoS: qos}}})
	sa, ok := rc.expect().(*codec.Suback)
	if !ok || sa.Codes[0] != codec.ReasonCode(qos) {
		rc.t.Fatalf("SUBACK for %s: %+v", filter, sa)
	}
}

// publishAcked publishes at qos and waits for PUBACK or PUBREC (and
// completes QoS 2 with PUBREL/PUBCOMP).
func (rc *rawConn) publishAcked(topic, payload string, qos byte, retain bool) {
	rc.t.Helper()
	id := rc.nextID()
	rc.send(&codec.Publish{Topic: []byte(topic), Payload: []byte(payload), QoS: qos, Retain: retain, PacketID: id})
	if qos == 0 {
		return
	}
	a, ok := rc.expect().(*codec.Ack)
	if !ok || a.PacketID != id || a.Code.IsError() {
		rc.t.Fatalf("publish %s: got %+v", payload, a)
	}
	if qos == 2 {
		rc.send(&codec.Ack{Kind: codec.PUBREL, PacketID: id})
		if c, ok := rc.expect().(*codec.Ack); !ok || c.Kind != codec.PUBCOMP {
			rc.t.Fatalf("expected PUBCOMP, got %+v", c)
		}
	}
}

func TestRestartKeepsSessionsAndQueues(t *testing.T) {
	r := newRestartable(t, nil)
	s1, _ := persistentV5(t, r.s, "s1")
	s1.subscribe("t/#", 1)
	s1.subscribe("q2/#", 2)
	s1.send(&codec.Disconnect{})
	s1.expectClosed()

	pub := dialRaw(t, r.s, codec.V311)
	pub.connect("pub", nil)
	for i := range 10 {
		pub.publishAcked("t/x", fmt.Sprint("one-", i), 1, false)
	}
	for i := range 5 {
		pub.publishAcked("q2/y", fmt.Sprint("two-", i), 2, false)
	}

	s := r.restart()
	again, ca := persistentV5(t, s, "s1")
	if !ca.SessionPresent {
		t.Fatal("session not present after restart")
	}
	var got []string
	awaiting := 0
	for len(got) < 15 || awaiting > 0 {
		switch p := again.expect().(type) {
		case *codec.Publish:
			got = append(got, string(p.Payload))
			if p.QoS == 1 {
				again.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
			} else {
				awaiting++
				again.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
			}
		case *codec.Ack:
			if p.Kind != codec.PUBREL {
				t.Fatalf("unexpected %+v", p)
			}
			awaiting--
			again.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: p.PacketID})
		default:
			t.Fatalf("unexpected %+v", p)
		}
	}
	for i := range 10 {
		if got[i] != fmt.Sprint("one-", i) {
			t.Fatalf("message %d: got %q; all: %q", i, got[i], got)
		}
	}
	for i := range 5 {
		if got[10+i] != fmt.Sprint("two-", i) {
			t.Fatalf("message %d: got %q; all: %q", 10+i, got[10+i], got)
		}
	}
	// The subscriptions came back too.
	pub2 := dialRaw(t, s, codec.V311)
	pub2.connect("pub", nil)
	pub2.publishAcked("t/after", "after", 1, false)
	if p, ok := again.expect().(*codec.Publish); !ok || string(p.Payload) != "after" {
		t.Fatalf("expected the new message through the restored subscription, got %+v", p)
	}
}

func TestRestartRedeliversInflightWithDup(t *testing.T) {
	r := newRestartable(t, nil)
	s1, _ := persistentV5(t, r.s, "s1")
	s1.subscribe("a", 1)
	s1.subscribe("b", 2)
	pub := dialRaw(t, r.s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("a", "qos1", 1, false)
	p1, ok := s1.expect().(*codec.Publish)
	if !ok || p1.Dup {
		t.Fatalf("first delivery: %+v", p1)
	}
	pub.publishAcked("b", "qos2", 2, false)
	p2, ok := s1.expect().(*codec.Publish)
	if !ok {
		t.Fatal("expected the QoS 2 PUBLISH")
	}
	// QoS 2 half done: PUBREC sent, PUBREL received, no PUBCOMP.
	s1.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p2.PacketID})
	if rel, ok := s1.expect().(*codec.Ack); !ok || rel.Kind != codec.PUBREL {
		t.Fatalf("expected PUBREL, got %+v", rel)
	}
	// The PUBREL came after the broker recorded PUBREC as received only if
	// the record is in the same commit order; a ping makes sure the store
	// saw it before the restart.
	s1.ping()

	s := r.restart()
	again, ca := persistentV5(t, s, "s1")
	if !ca.SessionPresent {
		t.Fatal("session not present after restart")
	}
	got := again.ping()
	if len(got) != 2 {
		t.Fatalf("got %d packets after reconnect, want the QoS 1 PUBLISH and a PUBREL: %+v", len(got), got)
	}
	re, ok := got[0].(*codec.Publish)
	if !ok || !re.Dup || re.PacketID != p1.PacketID || string(re.Payload) != "qos1" {
		t.Fatalf("redelivery: %+v, want DUP with id %d", got[0], p1.PacketID)
	}
	if rel, ok := got[1].(*codec.Ack); !ok || rel.Kind != codec.PUBREL || rel.PacketID != p2.PacketID {
		t.Fatalf("second packet: %+v, want PUBREL %d", got[1], p2.PacketID)
	}
}

func TestRestartKeepsRetained(t *testing.T) {
	r := newRestartable(t, nil)
	pub := dialRaw(t, r.s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("r/keep", "kept", 1, true)
	pub.publishAcked("r/gone", "gone", 1, true)
	pub.publishAcked("r/gone", "", 1, true) // clears it

	s := r.restart()
	sub := dialRaw(t, s, codec.V5)
	sub.connect("sub", nil)
	sub.subscribe("r/#", 1)
	got := sub.ping()
	if len(got) != 1 {
		t.Fatalf("got %d retained messages, want 1: %+v", len(got), got)
	}
	p := got[0].(*codec.Publish)
	if string(p.Topic) != "r/keep" || string(p.Payload) != "kept" || !p.Retain {
		t.Fatalf("retained: %+v", p)
	}
}

func TestRestartHonoursExpiry(t *testing.T) {
	r := newRestartable(t, nil)
	short := dialRaw(t, r.s, codec.V5)
	short.connect("short", func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 1
		p.Props.Set(codec.PropSessionExpiry)
	})
	short.subscribe("x", 1)
	short.send(&codec.Disconnect{})
	short.expectClosed()

	long, _ := persistentV5(t, r.s, "long")
	long.subscribe("m/#", 1)
	long.send(&codec.Disconnect{})
	long.expectClosed()
	pub := dialRaw(t, r.s, codec.V5)
	pub.connect("pub", nil)
	id := pub.nextID()
	exp := &codec.Publish{Topic: []byte("m/expiring"), Payload: []byte("expiring"), QoS: 1, PacketID: id}
	exp.Props.MessageExpiry = 1
	exp.Props.Set(codec.PropMessageExpiry)
	pub.send(exp)
	pub.expect()
	pub.publishAcked("m/lasting", "lasting", 1, false)
	r.stop()

	// Let the one-second expiries pass while the broker is down.
	time.Sleep(1100 * time.Millisecond)

	s := r.start()
	_, ca := persistentV5(t, s, "short")
	if ca.SessionPresent {
		t.Fatal("a session whose expiry passed while the broker was down came back")
	}
	again, ca := persistentV5(t, s, "long")
	if !ca.SessionPresent {
		t.Fatal("long session lost")
	}
	got := again.ping()
	if len(got) != 1 || string(got[0].(*codec.Publish).Payload) != "lasting" {
		t.Fatalf("got %+v, want only the message without expiry", got)
	}
}

func TestRestartKeepsInboundQoS2(t *testing.T) {
	r := newRestartable(t, nil)
	sub := dialRaw(t, r.s, codec.V5)
	sub.connect("watcher", nil)
	sub.subscribe("once", 0)

	pub, _ := persistentV5(t, r.s, "pub")
	pub.send(&codec.Publish{Topic: []byte("once"), Payload: []byte("one"), QoS: 2, PacketID: 7})
	if rec, ok := pub.expect().(*codec.Ack); !ok || rec.Kind != codec.PUBREC {
		t.Fatalf("expected PUBREC, got %+v", rec)
	}
	if p, ok := sub.expect().(*codec.Publish); !ok || string(p.Payload) != "one" {
		t.Fatalf("first delivery: %+v", p)
	}

	s := r.restart()
	sub = dialRaw(t, s, codec.V5)
	sub.connect("watcher", nil)
	sub.subscribe("once", 0)
	pub, _ = persistentV5(t, s, "pub")
	// The publisher did not see PUBCOMP, so it sends the PUBLISH again with
	// DUP; the broker remembers id 7 and must not deliver it twice.
	pub.send(&codec.Publish{Topic: []byte("once"), Payload: []byte("one"), QoS: 2, PacketID: 7, Dup: true})
	if rec, ok := pub.expect().(*codec.Ack); !ok || rec.Kind != codec.PUBREC || rec.Code.IsError() {
		t.Fatalf("expected PUBREC, got %+v", rec)
	}
	pub.send(&codec.Ack{Kind: codec.PUBREL, PacketID: 7})
	if c, ok := pub.expect().(*codec.Ack); !ok || c.Kind != codec.PUBCOMP || c.Code != codec.Success {
		t.Fatalf("expected PUBCOMP success, got %+v", c)
	}
	marker := dialRaw(t, s, codec.V5)
	marker.connect("marker", nil)
	if got := drain(marker, sub, "once"); len(got) != 0 {
		t.Fatalf("the resent QoS 2 message was delivered again: %+v", got)
	}
}

func TestRestartFiresStoredWill(t *testing.T) {
	r := newRestartable(t, nil)
	wc := dialRaw(t, r.s, codec.V5)
	wc.connect("dying", func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 3600
		p.Props.Set(codec.PropSessionExpiry)
		p.WillFlag = true
		p.WillTopic = []byte("wills/dying")
		p.WillPayload = []byte("gone")
		p.WillQoS = 1
		p.WillProps.WillDelay = 1
		p.WillProps.Set(codec.PropWillDelay)
	})
	// The broker stopping is not the client's doing: the will stands, with
	// its delay, and must outlive the restart.
	s := r.restart()
	sub := dialRaw(t, s, codec.V5)
	sub.connect("sub", nil)
	sub.subscribe("wills/#", 1)
	p, ok := sub.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "gone" {
		t.Fatalf("expected the will, got %+v", p)
	}
}

// diskFS reports a free-space figure the test controls.
type diskFS struct {
	vfs.FS
	free atomic.Uint64
}

func (d *diskFS) GetDiskUsage(path string) (vfs.DiskUsage, error) {
	f := d.free.Load()
	return vfs.DiskUsage{AvailBytes: f, TotalBytes: 1 << 40, UsedBytes: 1<<40 - f}, nil
}

func TestDiskFullRefusesAndRecovers(t *testing.T) {
	fs := &diskFS{FS: vfs.NewMem()}
	fs.free.Store(1 << 30)
	s := startBroker(t, func(c *Config) { c.storeFS = fs; c.DataDir = "/data" })
	s1, _ := persistentV5(t, s, "s1")
	s1.subscribe("d", 1)

	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("d", "before", 1, false)
	if p, ok := s1.expect().(*codec.Publish); !ok || string(p.Payload) != "before" {
		t.Fatalf("delivery before the disk filled: %+v", p)
	}
	s1.send(&codec.Ack{Kind: codec.PUBACK, PacketID: 1})

	fs.free.Store(1 << 20) // under the 64 MiB floor
	// The store notices on its next write; until then a publish may still
	// go through. Publish until one is refused.
	refused := false
	for deadline := time.Now().Add(5 * time.Second); !refused && time.Now().Before(deadline); {
		id := pub.nextID()
		pub.send(&codec.Publish{Topic: []byte("d"), Payload: []byte("during"), QoS: 1, PacketID: id})
		a, ok := pub.expect().(*codec.Ack)
		if !ok || a.PacketID != id {
			t.Fatalf("expected PUBACK %d, got %+v", id, a)
		}
		refused = a.Code == codec.QuotaExceeded
	}
	if !refused {
		t.Fatal("no publish was refused with 0x97 while the disk was full")
	}
	if got := s.stats.storeRefused.Get(); got == 0 {
		t.Fatal("refusals not counted")
	}

	fs.free.Store(1 << 30)
	ok := false
	for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
		id := pub.nextID()
		pub.send(&codec.Publish{Topic: []byte("d"), Payload: []byte("after"), QoS: 1, PacketID: id})
		a, isAck := pub.expect().(*codec.Ack)
		if !isAck || a.PacketID != id {
			t.Fatalf("expected PUBACK %d, got %+v", id, a)
		}
		ok = a.Code == codec.Success
	}
	if !ok {
		t.Fatal("publishes still refused after space returned")
	}
}

func TestCorruptDataDirFailsStart(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Listen, cfg.HTTPListen, cfg.DataDir = "127.0.0.1:0", "", dir
	if err := os.WriteFile(dir+"/notes.txt", []byte("not a store"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil {
		t.Fatal("started on a directory of another program")
	}
	if !errors.Is(err, persist.ErrForeign) {
		t.Fatalf("error %v does not say the directory is foreign", err)
	}
}

// A message queued by one loop (its publisher's) and let out by another
// (its subscriber's, on an acknowledgement) before the first has handed
// its writes to the store waits for them: were it sent at once, its
// acknowledgement's deletion could reach the store before its creation,
// and a completed delivery would come back after a restart.
func TestQueuedEntryCreatedBeforeItsDeletion(t *testing.T) {
	r := newRestartable(t, func(c *Config) { c.WriteDelay = 0 })
	s := r.s
	sub := dialRaw(t, s, codec.V5)
	sub.connect("pq-sub", func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 3600
		p.Props.ReceiveMaximum = 1
		p.Props.Set(codec.PropSessionExpiry)
		p.Props.Set(codec.PropReceiveMaximum)
	})
	sub.subscribe("pq/t", 1)
	pub := publisherElsewhere(t, s, "pq-sub", "pq-pub")
	pub.publishAcked("pq/t", "m1", 1, false)
	p1, ok := sub.expect().(*codec.Publish)
	if !ok || string(p1.Payload) != "m1" {
		t.Fatalf("got %+v, want m1", p1)
	}

	// m2 is queued (the window of 1 is full) by the publisher's loop,
	// which then takes the PINGREQ behind it: before its writes go to
	// the store, the subscriber acknowledges m1 and, should m2 come out
	// of the queue now, m2 too.
	ss := s.lookupSession("pq-sub")
	hookErr := make(chan error, 1)
	tookM2 := false // in the hook, before it reports
	f := func(c *client, h codec.FixedHeader) {
		if h.Type != codec.PINGREQ || !strings.HasPrefix(c.id, "pq-pub") {
			return
		}
		hookErr <- func() error {
			if err := ackTaken(sub, ss, p1.PacketID, "m1"); err != nil {
				return err
			}
			ss.mu.Lock()
			var sent *outMsg
			for _, om := range ss.mu.inflight {
				sent = om
			}
			ss.mu.Unlock()
			if sent == nil {
				return nil // m2 waits in the queue
			}
			p2, ok := sub.expect().(*codec.Publish)
			if !ok || string(p2.Payload) != "m2" {
				return fmt.Errorf("got %+v, want m2", p2)
			}
			tookM2 = true
			return ackTaken(sub, ss, p2.PacketID, "m2")
		}()
	}
	testBeforePacket.Store(&f)
	t.Cleanup(func() { testBeforePacket.Store(nil) })
	b := (&codec.Publish{QoS: 1, PacketID: 200, Topic: []byte("pq/t"), Payload: []byte("m2")}).Append(nil, codec.V5)
	pub.write((&codec.Pingreq{}).Append(b, codec.V5))
	select {
	case err := <-hookErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the publisher's loop never took the PINGREQ")
	}
	testBeforePacket.Store(nil)
	if !tookM2 {
		// m2 comes once the publisher's loop has committed; acknowledged,
		// it is done.
		p2, ok := sub.expect().(*codec.Publish)
		if !ok || string(p2.Payload) != "m2" {
			t.Fatalf("got %+v, want m2", p2)
		}
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p2.PacketID})
	}
	sub.ping()
	pub.ping()

	s = r.restart()
	again, ca := persistentV5(t, s, "pq-sub")
	if !ca.SessionPresent {
		t.Fatal("session not present after the restart")
	}
	if got := again.ping(); len(got) != 0 {
		t.Fatalf("after the restart the subscriber got %d packets, want none (m2 was done): %+v", len(got), got)
	}
}

// A new persistent session's record needs no fsync of its own: sessions
// connecting one after another share fsyncs, and the first commit that
// is fsynced (here a SUBACK's) makes every record before it durable, so a
// machine crash after it loses none of them.
func TestNewSessionRecordNeedsNoFsyncOfItsOwn(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s := startBroker(t, func(c *Config) { c.storeFS, c.DataDir = fs, "/data" })
	st := s.store.st
	const n = 50
	before := st.Stats().Syncs
	var last *rawConn
	for i := range n {
		rc, ca := persistentV5(t, s, fmt.Sprint("lazy-", i))
		if ca.SessionPresent {
			t.Fatalf("lazy-%d: session present on first connect", i)
		}
		last = rc
	}
	// Each CONNECT was answered before the next was sent: with an fsync
	// per record there would be n.
	if got := st.Stats().Syncs - before; got >= n {
		t.Fatalf("%d fsyncs for %d new sessions", got, n)
	}
	last.subscribe("lazy/#", 1)

	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 1))})
	s2 := startBroker(t, func(c *Config) { c.storeFS, c.DataDir = crashed, "/data" })
	for i := range n {
		if _, ca := persistentV5(t, s2, fmt.Sprint("lazy-", i)); !ca.SessionPresent {
			t.Fatalf("lazy-%d: session lost in a crash after a later fsync", i)
		}
	}
}
