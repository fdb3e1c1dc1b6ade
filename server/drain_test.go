package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// drainStatus reads GET /api/v1/node/drain.
func drainStatus(t testing.TB, s *Server, key string) DrainStatus {
	t.Helper()
	code, body, _ := httpDo(t, s, "GET", "/api/v1/node/drain", key, "")
	var st DrainStatus
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("GET /api/v1/node/drain: %d %q", code, body)
	}
	return st
}

// graceGate replaces s's load-balancer grace with a wait the test ends:
// entered is closed when the drain starts waiting, and closing the
// returned channel ends the wait.
func graceGate(s *Server) (entered <-chan struct{}, open chan struct{}) {
	in, gate := make(chan struct{}), make(chan struct{})
	s.drain.waitGrace = func(ctx context.Context, _ time.Duration) bool {
		close(in)
		select {
		case <-gate:
			return true
		case <-ctx.Done():
			return false
		}
	}
	return in, gate
}

// A drain started over the API fails /readyz and refuses new clients
// before it disconnects anyone (clients connected through the grace are
// still served); then it disconnects them at --drain-rate, not at once:
// MQTT 5 clients get DISCONNECT 0x8B with the Server Reference, MQTT 3
// clients are closed; a new MQTT 5 client is sent to the reference
// (CONNACK 0x9C), a new MQTT 3 client told the server is unavailable.
func TestDrainOrderAndRate(t *testing.T) {
	const ref = "mqtt-b.example.com:1883"
	path, _, write := keyFile(t)
	s := startBroker(t, func(c *Config) {
		c.APIKeyFile, c.DrainRate, c.DrainRedirect, c.DrainLBGrace = path, 4, ref, time.Hour
	})
	entered, open := graceGate(s)
	var v5s, v3s []*rawConn
	for i := range 5 {
		rc := dialRaw(t, s, codec.V5)
		if ca := rc.connect(fmt.Sprintf("v5-%d", i), nil); ca.Code != codec.Success {
			t.Fatalf("connect: %v", ca.Code)
		}
		v5s = append(v5s, rc)
	}
	for i := range 3 {
		rc := dialRaw(t, s, codec.V311)
		if ca := rc.connect(fmt.Sprintf("v3-%d", i), nil); ca.Code != codec.Success {
			t.Fatalf("connect: %v", ca.Code)
		}
		v3s = append(v3s, rc)
	}
	all := append(append([]*rawConn{}, v5s...), v3s...)

	code, body, _ := httpDo(t, s, "POST", "/api/v1/node/drain", write, "")
	if code != http.StatusAccepted {
		t.Fatalf("POST /api/v1/node/drain: %d %q", code, body)
	}
	if code, body, _ := httpDo(t, s, "GET", "/readyz", "", ""); code != http.StatusServiceUnavailable || body != "not ready: draining\n" {
		t.Fatalf("/readyz once the drain started: %d %q, want 503", code, body)
	}
	<-entered
	if st := drainStatus(t, s, write); st.Phase != drainWaitingLB || st.ClientsAtStart != 8 || st.Disconnected != 0 {
		t.Fatalf("status in the grace: %+v", st)
	}
	for i, rc := range all {
		if got := rc.ping(); len(got) != 0 {
			t.Fatalf("client %d got %v during the grace", i, got)
		}
	}
	// New clients are refused at once, told where to go.
	nv5 := dialRaw(t, s, codec.V5)
	if ca := nv5.connect("new-v5", nil); ca.Code != codec.UseAnotherServer || string(ca.Props.ServerReference) != ref {
		t.Fatalf("new MQTT 5 client: CONNACK %v reference %q, want 0x9C and %q", ca.Code, ca.Props.ServerReference, ref)
	}
	nv5.expectClosed()
	nv3 := dialRaw(t, s, codec.V311)
	if ca := nv3.connect("new-v3", nil); ca.Code != codec.V3ServerUnavailable {
		t.Fatalf("new MQTT 3 client: CONNACK %v, want 3", ca.Code)
	}
	nv3.expectClosed()

	// The disconnections, watched through the API: at 4 a second the
	// count climbs through the values between, where a drain that
	// disconnected everyone at once would jump from 0 to 8.
	seen := make(map[int64]bool)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			// Not drainStatus: no t.Fatal off the test's goroutine.
			if _, body, _, err := httpTry(s, "GET", "/api/v1/node/drain", write, ""); err == nil {
				var st DrainStatus
				if json.Unmarshal([]byte(body), &st) == nil {
					seen[st.Disconnected] = true
					if st.Disconnected == 8 {
						return
					}
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	close(open)
	for i, rc := range v5s {
		got := rc.expectClosed()
		if len(got) != 1 {
			t.Fatalf("MQTT 5 client %d got %v, want one DISCONNECT", i, got)
		}
		d, ok := got[0].(*codec.Disconnect)
		if !ok || d.Code != codec.ServerShuttingDown || string(d.Props.ServerReference) != ref {
			t.Fatalf("MQTT 5 client %d got %+v, want DISCONNECT 0x8B with reference %q", i, got[0], ref)
		}
	}
	for i, rc := range v3s {
		if got := rc.expectClosed(); len(got) != 0 {
			t.Fatalf("MQTT 3 client %d got %v, want the connection closed", i, got)
		}
	}
	wg.Wait()
	if len(seen) < 5 {
		t.Fatalf("the disconnected count took the values %v: not paced at 4 a second", seen)
	}
	waitFor(t, "the drain to finish", func() bool { return drainStatus(t, s, write).Phase == drainDone })
	st := drainStatus(t, s, write)
	if st.Disconnected != 8 || st.Refused != 2 || st.ClientsConnected != 0 || st.Redirect != ref || st.Rate != 4 {
		t.Fatalf("final status %+v", st)
	}
	// A second POST starts nothing and says where the drain is.
	if code, body, _ := httpDo(t, s, "POST", "/api/v1/node/drain", write, `{"rate": 1000}`); code != http.StatusOK {
		t.Fatalf("second POST: %d %q, want 200", code, body)
	}
	if st := drainStatus(t, s, write); st.Rate != 4 {
		t.Fatalf("a second POST changed the drain: %+v", st)
	}
}

// With no client connected a drain has nobody to disconnect and no grace
// to wait; without --drain-redirect a new MQTT 5 client is told 0x88.
func TestDrainEmptyNode(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.DrainLBGrace = time.Hour })
	select {
	case <-s.Drain():
	case <-time.After(10 * time.Second):
		t.Fatalf("an empty node still draining after 10s: %+v", s.DrainStatus())
	}
	if st := s.DrainStatus(); st.Phase != drainDone || st.Disconnected != 0 {
		t.Fatalf("status %+v", st)
	}
	rc := dialRaw(t, s, codec.V5)
	if ca := rc.connect("late", nil); ca.Code != codec.ServerUnavailable || ca.Props.Has(codec.PropServerReference) {
		t.Fatalf("CONNACK %v %+v, want 0x88 without a reference", ca.Code, ca.Props)
	}
	if code, _, _ := httpDo(t, s, "GET", "/readyz", "", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz of a drained node: %d", code)
	}
}

// Shutdown during a drain stops it and disconnects whoever is left, as
// any shutdown does.
func TestShutdownDuringDrain(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.DrainRedirect = "elsewhere:1883" })
	entered, _ := graceGate(s)
	rc := dialRaw(t, s, codec.V5)
	rc.connect("stays", nil)
	done := s.Drain()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	got := rc.expectClosed()
	if len(got) != 1 {
		t.Fatalf("got %v, want one DISCONNECT", got)
	}
	if d, ok := got[0].(*codec.Disconnect); !ok || d.Code != codec.ServerShuttingDown || d.Props.Has(codec.PropServerReference) {
		t.Fatalf("got %+v, want the shutdown's DISCONNECT 0x8B", got[0])
	}
}

// In a cluster a drained client's persistent session waits on the
// draining node until the client reconnects to a peer, which takes it
// over with what was queued meanwhile; the drain is over only then. A
// clean session is not waited for.
func TestDrainHandsSessionsToPeer(t *testing.T) {
	nodes := startCluster(t, 2, func(i int, c *Config) { c.DrainLBGrace, c.DrainRate = 0, 0 })
	n1, n2 := nodes[0], nodes[1]
	dev, _ := persistentV5(t, n1, "dev")
	dev.subscribe("dev/cmd", 1)
	clean := dialRaw(t, n1, codec.V5)
	clean.connect("clean", nil)
	waitRoutes(t, n2, 1)
	pub := dialRaw(t, n2, codec.V5)
	pub.connect("pub", nil)

	done := n1.Drain()
	for _, rc := range []*rawConn{dev, clean} {
		got := rc.expectClosed()
		if d, ok := got[0].(*codec.Disconnect); len(got) != 1 || !ok || d.Code != codec.ServerShuttingDown {
			t.Fatalf("got %v, want DISCONNECT 0x8B", got)
		}
	}
	// Published while the client moves: queued in its session on n1.
	pub.publishAcked("dev/cmd", "while moving", 1, false)
	waitFor(t, "the drain waiting for the session", func() bool {
		st := n1.DrainStatus()
		return st.Phase == drainHandingOver && st.SessionsToHandOver == 1
	})
	select {
	case <-done:
		t.Fatal("the drain ended before the session moved")
	default:
	}
	if again := dialRaw(t, n1, codec.V5); again.connect("dev", nil).Code != codec.ServerUnavailable {
		t.Fatal("the draining node took the client back")
	}

	moved, ca := persistentV5(t, n2, "dev")
	if !ca.SessionPresent {
		t.Fatal("CONNACK on n2 without the session: it did not move")
	}
	p, ok := moved.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "while moving" {
		t.Fatalf("got %+v, want the message published while the client moved", p)
	}
	moved.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the drain did not end after the session moved: %+v", n1.DrainStatus())
	}
	if st := n1.DrainStatus(); st.Phase != drainDone || st.SessionsToHandOver != 0 || st.Disconnected != 2 || st.Refused != 1 {
		t.Fatalf("status %+v", st)
	}
	// The session lives on n2 now: a new message reaches the client there.
	pub.publishAcked("dev/cmd", "after", 1, false)
	if p, ok := moved.expect().(*codec.Publish); !ok || string(p.Payload) != "after" {
		t.Fatalf("got %+v, want the next message on n2", p)
	}
}
