package server

import (
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

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
