package server

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/eclipse/paho.golang/paho"

	"github.com/gannetmq/gannet/codec"
)

// fullDiskBroker starts a broker on a file system whose free space the
// test sets, with the HTTP listener on.
func fullDiskBroker(t *testing.T) (*Server, *diskFS) {
	fs := &diskFS{FS: vfs.NewMem()}
	fs.free.Store(1 << 30)
	s := startBroker(t, func(c *Config) {
		c.storeFS, c.DataDir = fs, "/data"
		c.HTTPListen = "127.0.0.1:0"
	})
	return s, fs
}

// readyz returns /readyz's status code.
func readyz(t *testing.T, s *Server) int {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// delivered publishes a QoS 0 message to each topic from pub, then a
// marker to "keep" (which sub subscribes to throughout), and returns the
// topics sub received before the marker: one publisher's messages arrive
// in order.
func delivered(t *testing.T, pub, sub *rawConn, topics ...string) map[string]bool {
	t.Helper()
	for _, topic := range topics {
		pub.send(&codec.Publish{Topic: []byte(topic), Payload: []byte("m")})
	}
	pub.send(&codec.Publish{Topic: []byte("keep"), Payload: []byte("marker")})
	got := map[string]bool{}
	for {
		p, err := sub.read()
		if err != nil {
			t.Fatalf("no marker on keep: %v", err)
		}
		if m, ok := p.(*codec.Publish); ok {
			if string(m.Topic) == "keep" && string(m.Payload) == "marker" {
				return got
			}
			got[string(m.Topic)] = true
		}
	}
}

// A SUBSCRIBE or UNSUBSCRIBE whose commit fails is refused and undone in
// memory; so is a PUBREL, whose packet id stays until the client sends
// PUBREL again after reconnecting; /readyz says 503 while the store
// refuses writes.
func TestFailedCommitIsUndone(t *testing.T) {
	s, fs := fullDiskBroker(t)
	sub, _ := persistentV5(t, s, "sub")
	sub.subscribe("keep", 0)
	for i := range 100 {
		sub.subscribe("u/"+strconv.Itoa(i), 0)
	}
	pub, _ := persistentV5(t, s, "pub")
	// QoS 2 exchanges left at PUBREC, to be released while the disk is
	// full.
	var qos2 []uint16
	for range 100 {
		id := pub.nextID()
		pub.send(&codec.Publish{Topic: []byte("q2"), Payload: []byte("x"), QoS: 2, PacketID: id})
		if a, ok := pub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBREC || a.Code.IsError() {
			t.Fatalf("PUBREC %d: %+v", id, a)
		}
		qos2 = append(qos2, id)
	}
	if code := readyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz %d before the disk filled", code)
	}

	fs.free.Store(1 << 20) // under the 64 MiB floor
	// SUBSCRIBE new filters until one is refused. The store notices the
	// disk on a commit: the first refusal is that commit's, undone.
	refused := ""
	for i := 0; refused == "" && i < 1000; i++ {
		f := "new/" + strconv.Itoa(i)
		healthy := s.storeUnhealthy() == nil
		sub.send(&codec.Subscribe{PacketID: sub.nextID(), Subs: []codec.Subscription{{Filter: []byte(f)}}})
		sa := sub.expect().(*codec.Suback)
		switch {
		case sa.Codes[0] == codec.QuotaExceeded && healthy:
			refused = f
		case sa.Codes[0] != codec.GrantedQoS0:
			t.Fatalf("SUBACK %v for %s, the store healthy before: %v", sa.Codes[0], f, healthy)
		}
	}
	if refused == "" {
		t.Fatal("no SUBSCRIBE refused while the disk was full")
	}
	if got := delivered(t, pub, sub, refused); got[refused] {
		t.Fatalf("after the refused SUBSCRIBE of %s, it was delivered", refused)
	}
	if code := readyz(t, s); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d while the store refuses writes, want 503", code)
	}
	// Known to be unhealthy now: refused before anything changes.
	sub.send(&codec.Unsubscribe{PacketID: sub.nextID(), Filters: [][]byte{[]byte("keep")}})
	if ua := sub.expect().(*codec.Unsuback); ua.Codes[0] != codec.UnspecifiedError {
		t.Fatalf("UNSUBACK %v while the store refuses writes, want 0x80", ua.Codes)
	}
	delivered(t, pub, sub) // the marker on keep arrives: still subscribed

	// Space back; then full again, and UNSUBSCRIBE until one's commit
	// fails: that subscription stays. The store looks at the disk at most
	// every 250ms, so the attempts are spread over a second (paceSpell).
	fs.free.Store(1 << 30)
	waitFor(t, "the store to take writes again", func() bool {
		sub.send(&codec.Subscribe{PacketID: sub.nextID(), Subs: []codec.Subscription{{Filter: []byte("probe")}}})
		return sub.expect().(*codec.Suback).Codes[0] == codec.GrantedQoS0
	})
	fs.free.Store(1 << 20)
	kept := ""
	for i := 0; kept == "" && i < 100; i++ {
		time.Sleep(paceSpell)
		f := "u/" + strconv.Itoa(i)
		healthy := s.storeUnhealthy() == nil
		sub.send(&codec.Unsubscribe{PacketID: sub.nextID(), Filters: [][]byte{[]byte(f)}})
		code := sub.expect().(*codec.Unsuback).Codes[0]
		switch {
		case code == codec.UnspecifiedError && healthy:
			kept = f
		case code != codec.Success:
			t.Fatalf("UNSUBACK %v for %s, the store healthy before: %v", code, f, healthy)
		}
	}
	if kept == "" {
		t.Fatal("no UNSUBSCRIBE refused while the disk was full")
	}
	if got := delivered(t, pub, sub, kept); !got[kept] {
		t.Fatalf("the refused UNSUBSCRIBE of %s removed it", kept)
	}

	// PUBREL until one's commit fails (the store may have noticed at once,
	// from another commit: then the first PUBREL is refused up front).
	fs.free.Store(1 << 30)
	waitFor(t, "the store to take writes again", func() bool {
		sub.send(&codec.Subscribe{PacketID: sub.nextID(), Subs: []codec.Subscription{{Filter: []byte("probe")}}})
		return sub.expect().(*codec.Suback).Codes[0] == codec.GrantedQoS0
	})
	fs.free.Store(1 << 20)
	var open uint16
	for _, id := range qos2 {
		time.Sleep(paceSpell)
		pub.send(&codec.Ack{Kind: codec.PUBREL, PacketID: id})
		p, err := pub.read()
		if err != nil {
			t.Fatalf("PUBREL %d: %v", id, err)
		}
		if d, ok := p.(*codec.Disconnect); ok {
			if d.Code != codec.QuotaExceeded {
				t.Fatalf("DISCONNECT %v, want 0x97", d.Code)
			}
			open = id
			break
		}
		if a, ok := p.(*codec.Ack); !ok || a.Kind != codec.PUBCOMP || a.Code != codec.Success {
			t.Fatalf("PUBREL %d: %+v", id, p)
		}
	}
	if open == 0 {
		t.Fatal("no PUBREL refused while the disk was full")
	}
	pub.expectClosed()
	fs.free.Store(1 << 30)
	waitFor(t, "the store to take writes again", func() bool {
		sub.send(&codec.Subscribe{PacketID: sub.nextID(), Subs: []codec.Subscription{{Filter: []byte("probe")}}})
		return sub.expect().(*codec.Suback).Codes[0] == codec.GrantedQoS0
	})
	pub, ca := persistentV5(t, s, "pub")
	if !ca.SessionPresent {
		t.Fatal("the publisher's session is gone")
	}
	pub.send(&codec.Ack{Kind: codec.PUBREL, PacketID: open})
	if a, ok := pub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBCOMP || a.Code != codec.Success {
		t.Fatalf("PUBREL %d again: %+v, want PUBCOMP success (the id kept)", open, a)
	}
	if code := readyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz %d after the store recovered", code)
	}
}

// paceSpell spaces attempts that wait for the store's next look at the
// disk, which it takes at most every 250ms: 100 attempts span it four
// times.
const paceSpell = 10 * time.Millisecond

// A disk that fails the store's writes faster than the free-space check
// sees it coming (ENOSPC on every write and fsync) does not end the
// broker: while it fails, QoS 1 publishes get 0x97, QoS 0 messages flow and
// /readyz says 503; once it heals the store reopens, QoS 1 publishes are
// acknowledged again, and every acknowledged message reaches the
// persistent session.
func TestFailingDiskIsSurvived(t *testing.T) {
	fs := &stallFS{FS: vfs.NewMem()}
	s := startBroker(t, func(c *Config) {
		c.storeFS, c.DataDir = fs, "/data"
		c.HTTPListen = "127.0.0.1:0"
	})
	// An offline persistent session gives every QoS 1 publish a write.
	sub, _ := persistentV5(t, s, "sub")
	sub.subscribe("d", 1)
	sub.send(&codec.Disconnect{})
	_ = sub.c.Close()
	watcher, _ := dialV5(t, s, &paho.Connect{ClientID: "watcher", CleanStart: true})
	watcher.subscribe(t, paho.SubscribeOptions{Topic: "q", QoS: 0})
	pub, _ := dialV5(t, s, &paho.Connect{ClientID: "pub", CleanStart: true})
	publish := func(topic, payload string, qos byte) (byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := pub.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)})
		if r == nil {
			return 0, err
		}
		return r.ReasonCode, nil
	}
	acked := map[string]bool{}
	if rc, err := publish("d", "before", 1); err != nil || rc != 0 {
		t.Fatalf("QoS 1 publish before the failure: %#x, %v", rc, err)
	}
	acked["before"] = true

	fs.failWith(syscall.ENOSPC)
	refused := false
	for i := 0; !refused && i < 100; i++ {
		p := "during/" + strconv.Itoa(i)
		rc, err := publish("d", p, 1)
		switch {
		case err != nil:
			t.Fatalf("QoS 1 publish while the disk fails: %v", err)
		case rc == byte(codec.QuotaExceeded):
			refused = true
		case rc == 0:
			acked[p] = true // written before the failure struck
		default:
			t.Fatalf("PUBACK %#x while the disk fails, want 0x97", rc)
		}
	}
	if !refused {
		t.Fatal("no QoS 1 publish refused while the disk failed")
	}
	if code := readyz(t, s); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d while the store cannot write, want 503", code)
	}
	if _, err := publish("q", "qos0", 0); err != nil {
		t.Fatal(err)
	}
	if m := watcher.expect(t); string(m.Payload) != "qos0" {
		t.Fatalf("QoS 0 subscriber got %q", m.Payload)
	}

	fs.failWith(nil)
	waitFor(t, "QoS 1 publishes to be acknowledged again", func() bool {
		rc, err := publish("d", "after", 1)
		if err != nil {
			t.Fatal(err)
		}
		return rc == 0
	})
	acked["after"] = true
	if code := readyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz %d after the store reopened", code)
	}

	sub, _ = persistentV5(t, s, "sub")
	for len(acked) > 0 {
		p, ok := sub.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected PUBLISH; acknowledged and not delivered: %v", acked)
		}
		delete(acked, string(p.Payload))
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
}

// A broker restarted on a full disk starts on its data: the persistent
// session is there, QoS 1 publishes get 0x97 and /readyz says 503 until
// space returns, QoS 0 flows meanwhile, and then QoS 1 is acknowledged.
func TestStartOnAFullDisk(t *testing.T) {
	fs := &diskFS{FS: vfs.NewMem()}
	fs.free.Store(1 << 30)
	onDisk := func(c *Config) {
		c.storeFS, c.DataDir = fs, "/data"
		c.HTTPListen = "127.0.0.1:0"
	}
	s := startBroker(t, onDisk)
	sub, _ := persistentV5(t, s, "sub")
	sub.subscribe("d", 1)
	sub.send(&codec.Disconnect{})
	_ = sub.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	fs.free.Store(1 << 20) // under the 64 MiB floor
	s = startBroker(t, onDisk)
	if code := readyz(t, s); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d on a full disk, want 503", code)
	}
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.send(&codec.Publish{Topic: []byte("d"), Payload: []byte("refused"), QoS: 1, PacketID: pub.nextID()})
	if a, ok := pub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBACK || a.Code != codec.QuotaExceeded {
		t.Fatalf("QoS 1 publish on a full disk: %+v, want PUBACK 0x97", a)
	}
	watcher := dialRaw(t, s, codec.V5)
	watcher.connect("watcher", nil)
	watcher.subscribe("keep", 0)
	watcher.subscribe("q", 0)
	if got := delivered(t, pub, watcher, "q"); !got["q"] {
		t.Fatal("a QoS 0 message did not flow while the disk was full")
	}

	fs.free.Store(1 << 30)
	waitFor(t, "QoS 1 publishes to be acknowledged again", func() bool {
		pub.send(&codec.Publish{Topic: []byte("d"), Payload: []byte("after"), QoS: 1, PacketID: pub.nextID()})
		a, ok := pub.expect().(*codec.Ack)
		return ok && a.Code == codec.Success
	})
	if code := readyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz %d after space returned", code)
	}
	sub, ca := persistentV5(t, s, "sub")
	if !ca.SessionPresent {
		t.Fatal("the session stored before the restart is gone")
	}
	for {
		p, ok := sub.expect().(*codec.Publish)
		if !ok {
			t.Fatal("the acknowledged message did not reach the session")
		}
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		if string(p.Payload) == "after" {
			break
		}
	}
}
