package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

// testACL is the ACL file of the authorization tests, in Mosquitto's
// format.
const testACL = `# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic read public/#
topic deny public/secret
topic write $SYS/alice

user bob
topic readwrite bob/#

pattern readwrite devices/%c/#
`

// authBroker starts a broker whose chain has a password file (alice and
// bob, password "secret"), the ACL file above, and an HTTP source (after
// the file) that makes "root" with password "root" a superuser; unknown
// answers pass through it. extra changes the chain's settings.
func authBroker(t *testing.T, extra func(*auth.ChainConfig)) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	pwPath := writePasswd(t, dir)
	aclPath := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclPath, []byte(testACL), 0o600); err != nil {
		t.Fatal(err)
	}
	pf, err := auth.LoadPasswordFile(pwPath)
	if err != nil {
		t.Fatal(err)
	}
	af, err := auth.LoadACLFile(aclPath)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var q struct{ Username, Password string }
		_ = json.NewDecoder(r.Body).Decode(&q)
		if q.Username == "root" && q.Password == "root" {
			_, _ = w.Write([]byte(`{"result":"allow","is_superuser":true}`))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(hs.Close)
	hsrc, err := auth.NewHTTPSource(auth.HTTPConfig{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	cc := auth.ChainConfig{Sources: []auth.Source{pf, hsrc}, ACLs: []auth.ACLSource{af}, CacheTTL: time.Minute}
	if extra != nil {
		extra(&cc)
	}
	ch, err := auth.NewChain(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	s := startBroker(t, func(c *Config) { c.Auth = ch })
	return s, aclPath
}

// writePasswd writes a password file in dir for alice and bob, both with
// password "secret", and returns its path.
func writePasswd(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	for _, u := range []string{"alice", "bob"} {
		h, err := auth.HashPassword(auth.HashSHA512PBKDF2, []byte("secret"), 0)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u+":"+h)
	}
	path := filepath.Join(dir, "passwd")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// login connects rc with credentials and returns the CONNACK.
func login(rc *rawConn, id, user, pass string) *codec.Connack {
	rc.t.Helper()
	return rc.connect(id, func(p *codec.Connect) {
		if user != "" {
			p.UsernameFlag, p.Username = true, []byte(user)
		}
		if pass != "" {
			p.PasswordFlag, p.Password = true, []byte(pass)
		}
	})
}

func TestAuthConnect(t *testing.T) {
	s, _ := authBroker(t, nil)
	cases := []struct {
		name, user, pass string
		v5, v3           codec.ReasonCode
	}{
		{"right password", "alice", "secret", codec.Success, codec.V3Accepted},
		{"wrong password", "alice", "nope", codec.BadUserNameOrPassword, codec.V3BadUsernameOrPassword},
		{"unknown user", "mallory", "secret", codec.BadUserNameOrPassword, codec.V3BadUsernameOrPassword},
		{"anonymous", "", "", codec.NotAuthorized, codec.V3NotAuthorized},
		{"superuser from the HTTP source", "root", "root", codec.Success, codec.V3Accepted},
	}
	for _, tc := range cases {
		for _, v := range []codec.Version{codec.V311, codec.V5} {
			rc := dialRaw(t, s, v)
			ca := login(rc, "c-"+tc.user, tc.user, tc.pass)
			want := tc.v3
			if v == codec.V5 {
				want = tc.v5
			}
			if ca.Code != want {
				t.Errorf("%s, %s: CONNACK %v, want %v", tc.name, v, ca.Code, want)
			}
			if want != codec.Success {
				rc.expectClosed()
			} else {
				// Packets sent right behind CONNECT waited for the decision.
				rc.ping()
			}
		}
	}
}

// subscribeCodes subscribes rc to filters and returns the SUBACK codes.
func subscribeCodes(rc *rawConn, filters ...string) []codec.ReasonCode {
	rc.t.Helper()
	var subs []codec.Subscription
	for _, f := range filters {
		subs = append(subs, codec.Subscription{Filter: []byte(f), QoS: 1})
	}
	rc.send(&codec.Subscribe{PacketID: rc.nextID(), Subs: subs})
	return rc.expect().(*codec.Suback).Codes
}

func TestACLSubscribe(t *testing.T) {
	s, _ := authBroker(t, nil)
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		rc := dialRaw(t, s, v)
		login(rc, "dev7", "alice", "secret")
		no := codec.NotAuthorized
		if v != codec.V5 {
			no = codec.V3SubackFailure
		}
		got := subscribeCodes(rc, "alice/#", "bob/#", "#", "$share/g/alice/x", "$share/g/bob/x",
			"public/+", "devices/dev7/cmd", "devices/dev8/cmd", "$SYS/#")
		want := []codec.ReasonCode{codec.GrantedQoS1, no, no, codec.GrantedQoS1, no,
			codec.GrantedQoS1, codec.GrantedQoS1, no, no}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: SUBACK code %d = %v, want %v (all: %v)", v, i, got[i], want[i], got)
			}
		}
	}
}

func TestACLPublishAndDeliver(t *testing.T) {
	s, _ := authBroker(t, nil)
	root := dialRaw(t, s, codec.V5)
	login(root, "root-sub", "root", "root")
	subscribeCodes(root, "#")

	// A retained message alice may not read is not sent to her on
	// subscribe; one she may read is.
	root.send(&codec.Publish{QoS: 1, PacketID: root.nextID(), Retain: true, Topic: []byte("public/secret"), Payload: []byte("s")})
	root.expect()
	root.send(&codec.Publish{QoS: 1, PacketID: root.nextID(), Retain: true, Topic: []byte("public/news"), Payload: []byte("n")})
	root.expect()
	root.ping() // its own copies

	alice := dialRaw(t, s, codec.V5)
	login(alice, "alice-1", "alice", "secret")
	if c := subscribeCodes(alice, "public/#"); c[0] != codec.GrantedQoS1 {
		t.Fatalf("public/# refused: %v", c)
	}
	got := alice.ping()
	if len(got) != 1 || string(got[0].(*codec.Publish).Topic) != "public/news" {
		t.Fatalf("retained on subscribe: %v, want public/news alone", got)
	}
	alice.send(&codec.Ack{Kind: codec.PUBACK, PacketID: got[0].(*codec.Publish).PacketID})

	// Live: the deny rule inside her subscription holds per message.
	for _, topic := range []string{"public/secret", "public/a"} {
		root.send(&codec.Publish{Topic: []byte(topic), Payload: []byte("live")})
	}
	for range 2 {
		root.expect() // its own copies, as it subscribed to #
	}
	// One publisher's messages arrive in order: the first alice gets is
	// public/a only if public/secret was held back.
	if p := alice.expect().(*codec.Publish); string(p.Topic) != "public/a" {
		t.Fatalf("live delivery %q, want public/a (public/secret held back)", p.Topic)
	}

	// A denied publish: MQTT 5 QoS 1 gets 0x87 and nothing is routed;
	// MQTT 3 gets its PUBACK and nothing is routed either.
	alice.send(&codec.Publish{QoS: 1, PacketID: 40, Topic: []byte("bob/x"), Payload: []byte("no")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.NotAuthorized || a.PacketID != 40 {
		t.Fatalf("denied publish: %+v, want PUBACK 0x87", a)
	}
	a3 := dialRaw(t, s, codec.V311)
	login(a3, "alice-3", "alice", "secret")
	a3.send(&codec.Publish{QoS: 1, PacketID: 41, Topic: []byte("bob/y"), Payload: []byte("no")})
	if a := a3.expect().(*codec.Ack); a.Kind != codec.PUBACK || a.PacketID != 41 {
		t.Fatalf("MQTT 3 denied publish: %+v, want its PUBACK", a)
	}
	// Nobody publishes to $SYS, not even with a rule that allows it, nor a
	// superuser; a retained publish that is denied is not retained.
	alice.send(&codec.Publish{QoS: 1, PacketID: 42, Topic: []byte("$SYS/alice"), Payload: []byte("no")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.NotAuthorized {
		t.Fatalf("$SYS publish by alice: %+v", a)
	}
	root.send(&codec.Publish{QoS: 1, PacketID: root.nextID(), Retain: true, Topic: []byte("$SYS/x"), Payload: []byte("no")})
	if a := root.expect().(*codec.Ack); a.Code != codec.NotAuthorized {
		t.Fatalf("$SYS publish by a superuser: %+v", a)
	}
	alice.send(&codec.Publish{QoS: 1, PacketID: 43, Topic: []byte("alice/ok"), Payload: []byte("yes")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.Success {
		t.Fatalf("allowed publish: %+v", a)
	}
	// The denied publishes never arrive: the next message is alice/ok.
	if p := root.expect().(*codec.Publish); string(p.Topic) != "alice/ok" {
		t.Fatalf("superuser got %q, want alice/ok (the denied publishes dropped)", p.Topic)
	}
	if n := s.stats.publishDenied.Get(); n != 4 {
		t.Fatalf("gannet_acl_denied_total{action=publish} = %d, want 4", n)
	}
	if n := s.retained.len(); n != 2 {
		t.Fatalf("%d retained messages, want 2", n)
	}
}

// A will goes only to subscribers allowed to read its topic.
func TestACLWill(t *testing.T) {
	s, _ := authBroker(t, nil)
	alice := dialRaw(t, s, codec.V311)
	login(alice, "alice-w", "alice", "secret")
	subscribeCodes(alice, "public/#")
	root := dialRaw(t, s, codec.V311)
	login(root, "root-w", "root", "root")
	subscribeCodes(root, "public/#")

	for _, topic := range []string{"public/secret", "public/gone"} {
		w := dialRaw(t, s, codec.V311)
		w.connect("will-"+topic, func(p *codec.Connect) {
			p.UsernameFlag, p.Username, p.PasswordFlag, p.Password = true, []byte("root"), true, []byte("root")
			p.WillFlag, p.WillTopic, p.WillPayload = true, []byte(topic), []byte("bye")
		})
		_ = w.c.Close() // not a DISCONNECT: the will goes
		if p := root.expect().(*codec.Publish); string(p.Topic) != topic {
			t.Fatalf("root got %q, want %q", p.Topic, topic)
		}
	}
	// Both wills were routed to alice's loop in order: the first she
	// gets is public/gone only if public/secret was held back.
	if p := alice.expect().(*codec.Publish); string(p.Topic) != "public/gone" {
		t.Fatalf("alice got the will on %q, want public/gone alone", p.Topic)
	}
}

// A client id belongs to the user whose connection holds its session.
func TestClientIDOwnership(t *testing.T) {
	s, _ := authBroker(t, nil)
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		id := "owned-" + v.String()
		alice := dialRaw(t, s, v)
		if ca := connectAsUser(alice, id, "alice", "secret", false); ca.Code != codec.Success {
			t.Fatalf("alice: %v", ca.Code)
		}
		subscribeCodes(alice, "alice/#")

		bob := dialRaw(t, s, v)
		want := codec.V3IdentifierRejected
		if v == codec.V5 {
			want = codec.ClientIdentifierNotValid
		}
		if ca := connectAsUser(bob, id, "bob", "secret", false); ca.Code != want {
			t.Fatalf("%s: bob taking alice's client id: %v, want %v", v, ca.Code, want)
		}
		bob.expectClosed()
		// Alice is still connected, her session untouched.
		alice.ping()

		// Offline, the session still belongs to her.
		alice.send(&codec.Disconnect{})
		alice.expectClosed()
		bob = dialRaw(t, s, v)
		if ca := connectAsUser(bob, id, "bob", "secret", true); ca.Code != want {
			t.Fatalf("%s: bob taking alice's offline session: %v, want %v", v, ca.Code, want)
		}
		// She gets it back; a superuser may take it.
		alice = dialRaw(t, s, v)
		if ca := connectAsUser(alice, id, "alice", "secret", false); ca.Code != codec.Success || !ca.SessionPresent {
			t.Fatalf("%s: alice back: %+v", v, ca)
		}
		root := dialRaw(t, s, v)
		if ca := connectAsUser(root, id, "root", "root", false); ca.Code != codec.Success {
			t.Fatalf("%s: superuser takeover: %v", v, ca.Code)
		}
		alice.expectClosed()
	}
	if n := s.stats.connRefusedOwner.Get(); n != 4 {
		t.Fatalf("gannet_connections_refused_total{reason=client_id_owned} = %d, want 4", n)
	}
}

// connectAsUser is connectAs with credentials.
func connectAsUser(rc *rawConn, id, user, pass string, clean bool) *codec.Connack {
	rc.t.Helper()
	return connectWith(rc, id, clean, func(p *codec.Connect) {
		p.UsernameFlag, p.Username, p.PasswordFlag, p.Password = true, []byte(user), true, []byte(pass)
	})
}

// A backend that cannot answer refuses new clients with 0x88 / 3 (never
// "not authorized", never in) and leaves connected clients alone; logins
// work again once it answers.
func TestAuthBackendDown(t *testing.T) {
	var down atomic.Bool
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "database on fire", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"result":"allow"}`))
	}))
	t.Cleanup(hs.Close)
	src, err := auth.NewHTTPSource(auth.HTTPConfig{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := auth.NewChain(auth.ChainConfig{Sources: []auth.Source{src}, BreakerFailures: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	s := startBroker(t, func(c *Config) { c.Auth = ch })

	in := dialRaw(t, s, codec.V5)
	if ca := login(in, "in", "u", "p"); ca.Code != codec.Success {
		t.Fatalf("before the outage: %v", ca.Code)
	}
	down.Store(true)
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		for i := range 5 {
			rc := dialRaw(t, s, v)
			want := codec.V3ServerUnavailable
			if v == codec.V5 {
				want = codec.ServerUnavailable
			}
			if ca := login(rc, "storm", "u", "p"); ca.Code != want {
				t.Fatalf("%s #%d during the outage: %v, want %v", v, i, ca.Code, want)
			}
			rc.expectClosed()
		}
	}
	in.ping() // still served
	down.Store(false)
	rc := dialRaw(t, s, codec.V5)
	if ca := login(rc, "after", "u", "p"); ca.Code != codec.Success {
		t.Fatalf("after the outage: %v", ca.Code)
	}
	if n := s.stats.connRefusedUnavailable.Get(); n != 10 {
		t.Fatalf("gannet_connections_refused_total{reason=auth_unavailable} = %d, want 10", n)
	}
}

// A reload applies a changed ACL file to connected clients: subscriptions
// it no longer allows go, publishes it now allows pass.
func TestACLReload(t *testing.T) {
	s, aclPath := authBroker(t, nil)
	alice := dialRaw(t, s, codec.V5)
	login(alice, "alice-r", "alice", "secret")
	subscribeCodes(alice, "alice/#")
	alice.send(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("shared/x"), Payload: []byte("1")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.NotAuthorized {
		t.Fatalf("before: %+v", a)
	}
	alice.send(&codec.Publish{QoS: 1, PacketID: 4, Topic: []byte("alice/a"), Payload: []byte("4")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.Success {
		t.Fatalf("before, her own topic: %+v", a)
	}
	if p := alice.expect().(*codec.Publish); string(p.Topic) != "alice/a" {
		t.Fatalf("her copy: %q", p.Topic) // she is subscribed to alice/#
	}
	changed := strings.Replace(testACL, "topic readwrite alice/#", "topic write shared/#", 1)
	if err := os.WriteFile(aclPath, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.RefreshAuth(); err != nil {
		t.Fatal(err)
	}
	s.sessions.Lock()
	sess := s.sessions.m["alice-r"]
	s.sessions.Unlock()
	waitFor(t, "alice's subscription to go", func() bool {
		sess.mu.Lock()
		defer sess.mu.Unlock()
		_, ok := sess.mu.subs["alice/#"]
		return !ok
	})
	alice.send(&codec.Publish{QoS: 1, PacketID: 2, Topic: []byte("shared/x"), Payload: []byte("2")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.Success {
		t.Fatalf("after: %+v", a)
	}
	// The topic she last published to under the old rules is checked
	// again under the new ones.
	alice.send(&codec.Publish{QoS: 1, PacketID: 5, Topic: []byte("alice/a"), Payload: []byte("5")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.NotAuthorized {
		t.Fatalf("after, the topic the new rules no longer allow: %+v", a)
	}
	// A file that does not parse keeps the rules in force.
	if err := os.WriteFile(aclPath, []byte("topic bogus bogus bogus\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.RefreshAuth(); err == nil {
		t.Fatal("a broken ACL file reloaded without an error")
	}
	alice.send(&codec.Publish{QoS: 1, PacketID: 3, Topic: []byte("shared/y"), Payload: []byte("3")})
	if a := alice.expect().(*codec.Ack); a.Code != codec.Success {
		t.Fatalf("after a failed reload: %+v", a)
	}
}

// A client id belongs to its user across the cluster: a CONNECT on
// another node by another user is refused and the session stays where it
// is; the owner takes it over from any node.
func TestClusterClientIDOwnership(t *testing.T) {
	pw := writePasswd(t, t.TempDir())
	nodes := startCluster(t, 3, func(i int, c *Config) {
		pf, err := auth.LoadPasswordFile(pw)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := auth.NewChain(auth.ChainConfig{Sources: []auth.Source{pf}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ch.Close)
		c.Auth = ch
	})
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		id := "cl-owned-" + v.String()
		alice := dialRaw(t, nodes[0], v)
		if ca := connectAsUser(alice, id, "alice", "secret", false); ca.Code != codec.Success {
			t.Fatalf("alice: %v", ca.Code)
		}
		want := codec.V3IdentifierRejected
		if v == codec.V5 {
			want = codec.ClientIdentifierNotValid
		}
		for _, n := range nodes[1:] {
			bob := dialRaw(t, n, v)
			if ca := connectAsUser(bob, id, "bob", "secret", false); ca.Code != want {
				t.Fatalf("%s: bob on another node: %v, want %v", v, ca.Code, want)
			}
			bob.expectClosed()
		}
		alice.ping() // untouched
		again := dialRaw(t, nodes[2], v)
		if ca := connectAsUser(again, id, "alice", "secret", false); ca.Code != codec.Success || !ca.SessionPresent {
			t.Fatalf("%s: alice on node 3: %+v", v, ca)
		}
		alice.expectClosed()
	}
}

// memACL is an ACL source whose rules a test changes while clients are
// connected, as a database's rows change.
type memACL struct{ rules atomic.Pointer[[]auth.Rule] }

func (m *memACL) Name() string { return "mem" }
func (m *memACL) Rules(context.Context, *auth.Request, string) ([]auth.Rule, error) {
	return *m.rules.Load(), nil
}

// Rules that change in a backend reach connected clients once the cached
// answer expires, without a reload.
func TestACLFollowsBackendWithinTTL(t *testing.T) {
	src := &memACL{}
	src.rules.Store(&[]auth.Rule{{Filter: "x/#", Access: auth.ReadWrite}})
	ch, err := auth.NewChain(auth.ChainConfig{ACLs: []auth.ACLSource{src}, CacheTTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	s := startBroker(t, func(c *Config) { c.Auth = ch })
	rc := dialRaw(t, s, codec.V5)
	rc.connect("ttl", nil)
	if c := subscribeCodes(rc, "x/#"); c[0] != codec.GrantedQoS1 {
		t.Fatalf("x/# refused: %v", c)
	}
	src.rules.Store(&[]auth.Rule{{Filter: "y/#", Access: auth.ReadWrite}})
	s.sessions.Lock()
	sess := s.sessions.m["ttl"]
	s.sessions.Unlock()
	waitFor(t, "the subscription the backend no longer allows to go", func() bool {
		sess.mu.Lock()
		defer sess.mu.Unlock()
		_, ok := sess.mu.subs["x/#"]
		return !ok
	})
	rc.send(&codec.Publish{QoS: 1, PacketID: 9, Topic: []byte("y/1"), Payload: []byte("ok")})
	if a := rc.expect().(*codec.Ack); a.Code != codec.Success {
		t.Fatalf("publish the new rules allow: %+v", a)
	}
}

// The same rules seen through the Paho clients: paho.golang (MQTT 5) gets
// 0x87 for a denied publish and in SUBACK; paho.mqtt.golang (3.1.1) is
// refused with a wrong password and gets 0x80 for a denied filter.
func TestACLWithPahoClients(t *testing.T) {
	s, _ := authBroker(t, nil)
	v5, ca := dialV5(t, s, &paho.Connect{ClientID: "paho5", UsernameFlag: true, Username: "alice",
		PasswordFlag: true, Password: []byte("secret"), CleanStart: true})
	if ca.ReasonCode != 0 {
		t.Fatalf("CONNACK %d", ca.ReasonCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// paho.golang reports a refused filter as an error beside the SUBACK.
	sa, _ := v5.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "alice/#", QoS: 1}, {Topic: "bob/#", QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 2 || sa.Reasons[0] != 1 || sa.Reasons[1] != byte(codec.NotAuthorized) {
		t.Fatalf("SUBACK %v, want [1 0x87]", sa.Reasons)
	}
	// paho.golang reports the 0x87 PUBACK as an error naming it.
	if r, err := v5.Publish(ctx, &paho.Publish{Topic: "bob/x", QoS: 1, Payload: []byte("no")}); err == nil ||
		!strings.Contains(err.Error(), "not authorized") || (r != nil && r.ReasonCode != byte(codec.NotAuthorized)) {
		t.Fatalf("denied publish: %+v, %v; want PUBACK 0x87", r, err)
	}
	v5.publish(t, &paho.Publish{Topic: "alice/y", QoS: 1, Payload: []byte("yes")})
	if m := v5.expect(t); m.Topic != "alice/y" {
		t.Fatalf("got %q", m.Topic)
	}

	o := paho3.NewClientOptions().AddBroker("tcp://" + s.Addr()).SetClientID("paho3-bad").
		SetUsername("alice").SetPassword("wrong").SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4)
	bad := paho3.NewClient(o)
	if tok := bad.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() == nil {
		t.Fatal("paho.mqtt.golang connected with a wrong password")
	}
	v3 := dialV3(t, s, "paho3", true, func(o *paho3.ClientOptions) { o.SetUsername("alice").SetPassword("secret") })
	tok := v3.SubscribeMultiple(map[string]byte{"alice/#": 1, "bob/#": 1}, nil)
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("no SUBACK")
	}
	res := tok.(*paho3.SubscribeToken).Result()
	if res["alice/#"] != 1 || res["bob/#"] != 0x80 {
		t.Fatalf("SUBACK codes %v, want alice/# 1 and bob/# 0x80", res)
	}
}
