package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/server"
)

// authBroker starts a broker that authenticates users u0 ... u<users-1>
// (password "right") from a password file of $7$ hashes and, when acl is
// not empty, authorizes by that ACL file. It is shut down at the test's
// cleanup.
func authBroker(t *testing.T, users int, acl string) string {
	t.Helper()
	dir := t.TempDir()
	var lines strings.Builder
	for i := range users {
		h, err := auth.HashPassword(auth.HashSHA512PBKDF2, []byte("right"), 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&lines, "u%d:%s\n", i, h)
	}
	pwPath := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pwPath, []byte(lines.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	pf, err := auth.LoadPasswordFile(pwPath)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := auth.ChainConfig{Sources: []auth.Source{pf}}
	if acl != "" {
		aclPath := filepath.Join(dir, "acl")
		if err := os.WriteFile(aclPath, []byte(acl), 0o600); err != nil {
			t.Fatal(err)
		}
		af, err := auth.LoadACLFile(aclPath)
		if err != nil {
			t.Fatal(err)
		}
		ccfg.ACLs = []auth.ACLSource{af}
	}
	ch, err := auth.NewChain(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close) // after the broker's shutdown
	return startBroker(t, func(c *server.Config) { c.Auth = ch }).Addr()
}

// The conn scenario sends every client's credentials, reports the
// CONNECT-to-CONNACK latency and the rate, and counts refusals by code:
// any refusal fails the run.
func TestConnCredentials(t *testing.T) {
	addr := authBroker(t, 5, "")
	const clients = 20
	run := func(v codec.Version, user, password string) *Result {
		t.Helper()
		res, err := Run(context.Background(), Config{Scenario: "conn", Addr: addr, Clients: clients, Version: v,
			Username: user, Users: 5, Password: password, ConnectWindow: 4})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	res := run(codec.V311, "u%d", "right")
	if res.Connected != clients || res.Refused != 0 || res.Unanswered != 0 || res.Failed() {
		t.Fatalf("right password: connected %d, refused %d %v, unanswered %d, errors %v",
			res.Connected, res.Refused, res.RefusedBy, res.Unanswered, res.FirstErrors)
	}
	if res.ConnectRate <= 0 || res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max || res.Window <= 0 {
		t.Fatalf("rate %.0f/s in %v, latency p50 %v p99 %v max %v", res.ConnectRate, res.Window, res.P50, res.P99, res.Max)
	}

	for _, c := range []struct {
		v              codec.Version
		user, password string
		code           string
	}{
		{codec.V311, "u%d", "wrong", "0x04 bad user name or password"},
		{codec.V5, "u%d", "wrong", "0x86 bad user name or password"},
		{codec.V311, "nobody-%d", "right", "0x04 bad user name or password"},
		{codec.V5, "", "", "0x87 not authorized"}, // no credentials
	} {
		res := run(c.v, c.user, c.password)
		if res.Refused != clients || res.RefusedBy[c.code] != clients || res.Connected != 0 || !res.Failed() {
			t.Fatalf("MQTT %d, user %q, password %q: refused %d %v, connected %d, failed %v; want %d refused with %s",
				c.v, c.user, c.password, res.Refused, res.RefusedBy, res.Connected, res.Failed(), clients, c.code)
		}
		if res.Unanswered != 0 {
			t.Fatalf("%d refused clients counted as unanswered too", res.Unanswered)
		}
		if got, want := res.Refusals(), fmt.Sprintf("%d with %s", clients, c.code); got != want {
			t.Fatalf("Refusals() = %q, want %q", got, want)
		}
	}
}

// fakeBroker accepts connections and answers each CONNECT, after delay,
// with CONNACK code; it records what the CONNECTs carried and the most
// CONNECTs it held unanswered at once.
type fakeBroker struct {
	addr  string
	delay time.Duration
	code  byte

	outstanding, most atomic.Int64

	mu       sync.Mutex
	ids      []string
	users    []string
	password map[string]bool
}

func startFakeBroker(t *testing.T, delay time.Duration, code byte) *fakeBroker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeBroker{addr: l.Addr().String(), delay: delay, code: code, password: map[string]bool{}}
	var wg sync.WaitGroup
	var cmu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			cmu.Lock()
			conns = append(conns, c)
			cmu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	return f
}

func (f *fakeBroker) serve(c net.Conn) {
	var buf []byte
	tmp := make([]byte, 512)
	for {
		n, err := c.Read(tmp)
		if err != nil {
			return
		}
		buf = append(buf, tmp[:n]...)
		fh, hn, err := codec.DecodeFixedHeader(buf)
		if err == codec.ErrIncomplete || (err == nil && len(buf) < hn+fh.Remaining) {
			continue
		}
		if err != nil || fh.Type != codec.CONNECT {
			return
		}
		var p codec.Connect
		if err := p.Decode(fh, buf[hn:hn+fh.Remaining], 0); err != nil {
			return
		}
		if now := f.outstanding.Add(1); now > f.most.Load() {
			for m := f.most.Load(); now > m && !f.most.CompareAndSwap(m, now); m = f.most.Load() {
			}
		}
		f.mu.Lock()
		f.ids = append(f.ids, string(p.ClientID))
		f.users = append(f.users, string(p.Username))
		f.password[string(p.Password)] = p.PasswordFlag
		f.mu.Unlock()
		time.Sleep(f.delay)
		f.outstanding.Add(-1)
		_, _ = c.Write([]byte{0x20, 0x02, 0x00, f.code})
		// Stay connected (idle) until the client or the test closes.
		_, _ = c.Read(tmp)
		return
	}
}

// --connect-window bounds the CONNECTs awaiting their CONNACK; the client
// id, username and password templates reach the wire.
func TestConnWindowAndNames(t *testing.T) {
	f := startFakeBroker(t, 2*time.Millisecond, 0)
	const clients, window = 60, 5
	res, err := Run(context.Background(), Config{Scenario: "conn", Addr: f.addr, Clients: clients, ConnectWindow: window,
		ClientID: "dev-%d-x", Username: "user-%d", Users: 7, Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != clients || res.Failed() {
		t.Fatalf("connected %d, refused %d, unanswered %d", res.Connected, res.Refused, res.Unanswered)
	}
	if m := f.most.Load(); m > window || m < 1 {
		t.Fatalf("the broker held %d CONNECTs unanswered at once; the window is %d", m, window)
	}
	// Each CONNECT waits 2 ms: with the window at most 5 in flight, 60
	// take at least 24 ms.
	if res.Window < clients/window*2*time.Millisecond*9/10 {
		t.Fatalf("%d connections in %v: faster than the window allows", clients, res.Window)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ids, users := map[string]bool{}, map[string]int{}
	for i := range f.ids {
		ids[f.ids[i]] = true
		users[f.users[i]]++
	}
	for i := range clients {
		if !ids[fmt.Sprintf("dev-%d-x", i)] {
			t.Fatalf("no client id dev-%d-x among %d", i, len(ids))
		}
	}
	if len(users) != 7 || users["user-0"] != 9 || users["user-6"] != 8 {
		t.Fatalf("usernames: %v; want user-0 ... user-6, client i being user i mod 7", users)
	}
	if len(f.password) != 1 || !f.password["pw"] {
		t.Fatalf("passwords: %v", f.password)
	}
}

// A broker that refuses during a traffic scenario's setup stops the run
// with an error that names the code and counts the refusals.
func TestTrafficRefused(t *testing.T) {
	addr := authBroker(t, 3, "")
	_, err := Run(context.Background(), Config{Scenario: "p2p", Addr: addr, Clients: 3, Username: "u%d",
		Password: "wrong", Count: 10})
	if err == nil || !strings.Contains(err.Error(), "refused 3 CONNECTs") ||
		!strings.Contains(err.Error(), "0x04 bad user name or password") {
		t.Fatalf("got %v, want the 3 subscribers' refusals with 0x04", err)
	}
}

// --topic puts the username into each pair's topic, so that an ACL of
// %u patterns lets every publisher publish to its own topic only.
func TestTopicTemplateACL(t *testing.T) {
	addr := authBroker(t, 4, "pattern readwrite devices/%u/telemetry\n")
	const pairs, each = 4, 50
	cfg := Config{Scenario: "p2p", Addr: addr, Clients: pairs, QoS: 1, Username: "u%d", Password: "right",
		Topic: "devices/%u/telemetry", Count: each, Drain: 5 * time.Second}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != pairs*each || res.Received != pairs*each || res.Failed() {
		t.Fatalf("allowed topics: sent %d, received %d, lost %d; want %d", res.Sent, res.Received, res.Lost, pairs*each)
	}
	// A topic the ACL does not grant: the broker acknowledges (MQTT 3) and
	// drops every message.
	cfg.Topic, cfg.Drain = "devices/%u/other", 200*time.Millisecond
	res, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Received != 0 || res.Lost != pairs*each || !res.Failed() {
		t.Fatalf("denied topics: received %d, lost %d; want none received", res.Received, res.Lost)
	}
}

func TestNameTemplates(t *testing.T) {
	cfg := Config{Username: "dev-%d", Users: 3}
	for i, want := range []string{"dev-0", "dev-1", "dev-2", "dev-0"} {
		if got := cfg.username(i); got != want {
			t.Fatalf("username(%d) = %q, want %q", i, got, want)
		}
	}
	if got := (&Config{Username: "fixed"}).username(5); got != "fixed" {
		t.Fatalf("a username without %%d: %q", got)
	}
	if got := (&Config{}).username(5); got != "" {
		t.Fatalf("no username: %q", got)
	}
	if got := expand("devices/%u/t/%d", 12, "dev-2"); got != "devices/dev-2/t/12" {
		t.Fatalf("expand: %q", got)
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Scenario: "conn", ClientID: "fixed"}, "--client-id must hold %d"},
		{Config{Scenario: "p2p", ClientID: "c-%d"}, "--client-id applies to the conn scenario only"},
		{Config{Scenario: "fanin", Topic: "t/%d"}, "--topic applies to"},
		{Config{Scenario: "p2p", Topic: "t/%u"}, "no --username"},
		{Config{Scenario: "conn", Users: -1}, "--users must not be negative"},
		{Config{Scenario: "conn", ConnectWindow: -1}, "--connect-window must not be negative"},
	} {
		if err := c.cfg.fill(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%+v: got %v, want %q", c.cfg, err, c.want)
		}
	}
	// Two pairs on one topic cannot be told apart.
	r := &runner{cfg: Config{Scenario: "p2p", Clients: 2, Topic: "t/%u", Username: "same"}}
	if _, _, err := r.plan(); err == nil || !strings.Contains(err.Error(), "same topic") {
		t.Fatalf("shared topic: got %v", err)
	}
}

// The conn scenario's --subscribe and --disconnect: every client
// subscribes, then disconnects once measured, leaving its persistent
// session with the broker; the run counts no error for the closes it
// makes itself.
func TestConnSubscribeDisconnect(t *testing.T) {
	s := startBroker(t, nil)

	res, err := Run(context.Background(), Config{Scenario: "conn", Addr: s.Addr(), Clients: 20, QoS: 1,
		ConnSubscribe: "bench/conn/%d", SessionExpiry: time.Hour, Disconnect: true,
		KeepAlive: 60 * time.Second, BrokerPID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != 20 || res.Errors != 0 || res.Refused != 0 {
		t.Fatalf("connected %d, errors %d (%v), refused %d; want 20, 0, 0", res.Connected, res.Errors, res.FirstErrors, res.Refused)
	}

	// The session of client 7 outlived its connection: resuming it says
	// so in CONNACK.
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p := codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, KeepAlive: 60, ClientID: []byte("bench-conn-7")}
	if _, err := nc.Write(p.Append(nil, codec.V311)); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(nc, buf); err != nil {
		t.Fatal(err)
	}
	if buf[0] != byte(codec.CONNACK)<<4 || buf[2]&1 != 1 || buf[3] != 0 {
		t.Fatalf("CONNACK % x, want session present and accepted", buf)
	}
}
