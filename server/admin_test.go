package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/gannetmq/gannet/codec"
)

// apiCheck sends requests to a broker's admin API and checks each
// request and answer against the OpenAPI document the broker serves.
type apiCheck struct {
	t      *testing.T
	s      *Server
	key    string // sent as the bearer token unless empty
	router routers.Router
}

// newAPICheck fetches and validates the document s serves.
func newAPICheck(t *testing.T, s *Server, key string) *apiCheck {
	t.Helper()
	code, body, hdr := httpDo(t, s, "GET", "/api/v1/openapi.json", key, "")
	if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /api/v1/openapi.json: %d %s", code, hdr.Get("Content-Type"))
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData([]byte(body))
	if err != nil {
		t.Fatalf("the OpenAPI document does not load: %v", err)
	}
	ctx := context.Background()
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: "http://" + s.HTTPAddr()}}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &apiCheck{t: t, s: s, key: key, router: r}
}

// do sends method path with body (JSON, or none when empty), checks that
// the answer has status want and that request and answer are what the
// document describes, and returns the answer's body. route, when not
// empty, is the path to look the operation up by (for a topic holding
// '/', which the document's router takes as one level only).
func (a *apiCheck) do(method, path, body string, want int, route ...string) []byte {
	a.t.Helper()
	return a.doKey(a.key, method, path, body, want, route...)
}

func (a *apiCheck) doKey(key, method, path, body string, want int, route ...string) []byte {
	a.t.Helper()
	u := "http://" + a.s.HTTPAddr() + path
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		a.t.Fatal(err)
	}
	if resp.StatusCode != want {
		a.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, got)
	}
	if resp.StatusCode >= 400 {
		apiErrorOf(a.t, string(got))
	}

	vreq, _ := http.NewRequest(method, u, strings.NewReader(body))
	vreq.Header = req.Header.Clone()
	if len(route) > 0 {
		vreq.URL.Path, vreq.URL.RawPath = route[0], ""
	}
	rt, params, err := a.router.FindRoute(vreq)
	if err != nil {
		a.t.Fatalf("%s %s is not in the OpenAPI document: %v", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: rt,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	ctx := context.Background()
	if want < 400 {
		// Requests refused for their content are meant not to match.
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			a.t.Fatalf("%s %s: the request does not match the document: %v", method, path, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode,
		Header: resp.Header, Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(got)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		a.t.Fatalf("%s %s: the answer does not match the document: %v\n%s", method, path, err, got)
	}
	return got
}

// decode unmarshals b into a new T.
func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}

// subscribeRaw subscribes rc to filter at qos and waits for the SUBACK.
func subscribeRaw(t *testing.T, rc *rawConn, filter string, qos byte) {
	t.Helper()
	rc.send(&codec.Subscribe{PacketID: rc.nextID(), Subs: []codec.Subscription{{Filter: []byte(filter), QoS: qos}}})
	if _, ok := rc.expect().(*codec.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
}

// expectKicked asserts that rc is disconnected, with DISCONNECT code
// first when it speaks MQTT 5.
func expectKicked(t *testing.T, rc *rawConn, code codec.ReasonCode) {
	t.Helper()
	got := rc.expectClosed()
	if rc.v != codec.V5 {
		if len(got) != 0 {
			t.Fatalf("MQTT 3 client got %d packets before the close", len(got))
		}
		return
	}
	if len(got) == 0 {
		t.Fatal("closed without DISCONNECT")
	}
	d, ok := got[len(got)-1].(*codec.Disconnect)
	if !ok || d.Code != code {
		t.Fatalf("got %#v, want DISCONNECT %v", got[len(got)-1], code)
	}
}

// Every route of the admin API answers as the OpenAPI document the
// broker serves says, for successes and errors alike, and does what it
// says to real clients.
func TestAdminAPI(t *testing.T) {
	path, read, write := keyFile(t)
	var reloads atomic.Int32
	s := startBroker(t, func(c *Config) {
		c.APIKeyFile = path
		c.Reload = func() error {
			if reloads.Add(1) > 1 {
				return errors.New("--listen needs a restart")
			}
			return nil
		}
	})
	a := newAPICheck(t, s, write)

	// Two connected clients, one offline persistent session.
	alice := dialRaw(t, s, codec.V5)
	if ca := alice.connect("adm-alice", func(p *codec.Connect) {
		p.UsernameFlag, p.Username = true, []byte("alice")
		p.Props.SessionExpiry = 300
		p.Props.Set(codec.PropSessionExpiry)
	}); ca.Code != 0 {
		t.Fatalf("CONNACK %v", ca.Code)
	}
	subscribeRaw(t, alice, "a/#", 1)
	bob := dialRaw(t, s, codec.V311)
	if ca := bob.connect("adm-bob", func(p *codec.Connect) { p.UsernameFlag, p.Username = true, []byte("bob") }); ca.Code != 0 {
		t.Fatalf("CONNACK %v", ca.Code)
	}
	off := dialRaw(t, s, codec.V311)
	off.connect("adm-offline", func(p *codec.Connect) { p.CleanStart = false })
	subscribeRaw(t, off, "x/y", 0)
	off.send(&codec.Disconnect{})
	off.expectClosed()
	waitFor(t, "the offline session", func() bool {
		sess := s.lookupSession("adm-offline")
		if sess == nil {
			return false
		}
		d, ok := s.detail(sess, false)
		return ok && !d.Connected
	})

	// Clients: filters and pagination.
	type clientList struct {
		Clients []clientSummary `json:"clients"`
		Next    string          `json:"next_cursor"`
	}
	ids := func(l clientList) string {
		var out []string
		for _, c := range l.Clients {
			out = append(out, c.ClientID)
		}
		return strings.Join(out, ",")
	}
	all := decode[clientList](t, a.do("GET", "/api/v1/clients", "", 200))
	if got := ids(all); got != "adm-alice,adm-bob" || all.Next != "" {
		t.Fatalf("clients %q next %q", got, all.Next)
	}
	if c := all.Clients[0]; c.Protocol != "5.0" || c.Username != "alice" || c.IP != "127.0.0.1" {
		t.Fatalf("alice: %+v", c)
	}
	for q, want := range map[string]string{
		"?prefix=adm-b":       "adm-bob",
		"?username=alice":     "adm-alice",
		"?ip=127.0.0.0/8":     "adm-alice,adm-bob",
		"?ip=10.0.0.0/8":      "",
		"?ip=127.0.0.1":       "adm-alice,adm-bob",
		"?node=elsewhere":     "",
		"?prefix=nobody-here": "",
	} {
		if got := ids(decode[clientList](t, a.do("GET", "/api/v1/clients"+q, "", 200))); got != want {
			t.Errorf("clients%s: %q, want %q", q, got, want)
		}
	}
	p1 := decode[clientList](t, a.do("GET", "/api/v1/clients?limit=1", "", 200))
	if ids(p1) != "adm-alice" || p1.Next == "" {
		t.Fatalf("page 1: %q next %q", ids(p1), p1.Next)
	}
	p2 := decode[clientList](t, a.do("GET", "/api/v1/clients?limit=1&cursor="+p1.Next, "", 200))
	if ids(p2) != "adm-bob" {
		t.Fatalf("page 2: %q next %q", ids(p2), p2.Next)
	}
	if p2.Next != "" {
		if p3 := decode[clientList](t, a.do("GET", "/api/v1/clients?limit=1&cursor="+p2.Next, "", 200)); len(p3.Clients) != 0 {
			t.Fatalf("page 3: %q", ids(p3))
		}
	}
	a.do("GET", "/api/v1/clients?limit=0", "", 400)
	a.do("GET", "/api/v1/clients?cursor=%21%21", "", 400)
	a.do("GET", "/api/v1/clients?ip=not-an-ip", "", 400)

	// One client.
	d := decode[clientDetail](t, a.do("GET", "/api/v1/clients/adm-alice", "", 200))
	if !d.Connected || d.Protocol != "5.0" || d.KeepAlive != 30 || d.SessionExpiry != 300 ||
		len(d.Subscriptions) != 1 || d.Subscriptions[0].Filter != "a/#" || d.Subscriptions[0].QoS != 1 || d.ConnectedAt == nil {
		t.Fatalf("alice: %+v", d)
	}
	if d := decode[clientDetail](t, a.do("GET", "/api/v1/clients/adm-offline", "", 200)); d.Connected || len(d.Subscriptions) != 1 {
		t.Fatalf("offline: %+v", d)
	}
	a.do("GET", "/api/v1/clients/nobody", "", 404)

	// Sessions and subscriptions.
	type sessionList struct {
		Sessions []sessionSummary `json:"sessions"`
	}
	sl := decode[sessionList](t, a.do("GET", "/api/v1/sessions?connected=false", "", 200))
	if len(sl.Sessions) != 1 || sl.Sessions[0].ClientID != "adm-offline" || sl.Sessions[0].Subscriptions != 1 {
		t.Fatalf("offline sessions: %+v", sl)
	}
	if sl := decode[sessionList](t, a.do("GET", "/api/v1/sessions", "", 200)); len(sl.Sessions) != 3 {
		t.Fatalf("sessions: %+v", sl)
	}
	a.do("GET", "/api/v1/sessions?connected=maybe", "", 400)
	type subList struct {
		Subscriptions []subscriptionView `json:"subscriptions"`
	}
	if sl := decode[subList](t, a.do("GET", "/api/v1/subscriptions?filter=x/y", "", 200)); len(sl.Subscriptions) != 1 || sl.Subscriptions[0].ClientID != "adm-offline" {
		t.Fatalf("subscriptions to x/y: %+v", sl)
	}
	if sl := decode[subList](t, a.do("GET", "/api/v1/subscriptions?client_id=adm-alice", "", 200)); len(sl.Subscriptions) != 1 || sl.Subscriptions[0].Filter != "a/#" {
		t.Fatalf("alice's subscriptions: %+v", sl)
	}
	if sl := decode[subList](t, a.do("GET", "/api/v1/subscriptions?limit=1", "", 200)); len(sl.Subscriptions) != 1 {
		t.Fatalf("one subscription: %+v", sl)
	}

	// Publish over HTTP: a subscriber gets it, with its properties, and
	// it is retained.
	res := decode[struct{ Receivers int }](t, a.do("POST", "/api/v1/publish",
		`{"topic":"a/b/c","payload":"hello","qos":1,"retain":true,"properties":{"content_type":"text/plain","user_properties":[{"key":"k","value":"v"}]}}`, 200))
	if res.Receivers != 1 {
		t.Fatalf("receivers %d", res.Receivers)
	}
	pub, ok := alice.expect().(*codec.Publish)
	if !ok || string(pub.Topic) != "a/b/c" || string(pub.Payload) != "hello" || pub.QoS != 1 ||
		string(pub.Props.ContentType) != "text/plain" || len(pub.Props.User) != 1 {
		t.Fatalf("alice got %#v", pub)
	}
	alice.send(&codec.Ack{Kind: codec.PUBACK, PacketID: pub.PacketID})
	a.do("POST", "/api/v1/publish", `{"topic":"a/bin","payload":"AP8=","payload_encoding":"base64","retain":true}`, 200)
	if p, ok := alice.expect().(*codec.Publish); !ok || !bytes.Equal(p.Payload, []byte{0, 0xff}) {
		t.Fatalf("alice got %#v", p)
	}
	a.do("POST", "/api/v1/publish", `{"topic":"a/b",`, 400)
	a.do("POST", "/api/v1/publish", `{"topic":"a/b","colour":"blue"}`, 400)
	a.do("POST", "/api/v1/publish", `{"topic":"a/+","payload":"x"}`, 400)
	a.do("POST", "/api/v1/publish", `{"topic":"a/b","qos":3}`, 400)
	a.do("POST", "/api/v1/publish", `{"topic":"a/b","payload":"%%","payload_encoding":"base64"}`, 400)

	// Retained messages.
	type retList struct {
		Retained []retainedView `json:"retained"`
		Next     string         `json:"next_cursor"`
	}
	rl := decode[retList](t, a.do("GET", "/api/v1/retained?filter=a/%23", "", 200))
	if len(rl.Retained) != 2 || rl.Retained[0].Topic != "a/b/c" || rl.Retained[1].PayloadEncoding != "base64" {
		t.Fatalf("retained: %+v", rl)
	}
	if rl := decode[retList](t, a.do("GET", "/api/v1/retained?limit=1", "", 200)); len(rl.Retained) != 1 || rl.Next == "" {
		t.Fatalf("retained page: %+v", rl)
	}
	a.do("GET", "/api/v1/retained?filter=a/%23/b", "", 400)
	one := decode[retainedView](t, a.do("GET", "/api/v1/retained/a/b/c", "", 200, "/api/v1/retained/x"))
	if one.Payload != "hello" || one.Properties == nil || one.Properties.ContentType != "text/plain" {
		t.Fatalf("a/b/c: %+v", one)
	}
	if one := decode[retainedView](t, a.do("GET", "/api/v1/retained/"+url.PathEscape("a/b/c"), "", 200)); one.Topic != "a/b/c" {
		t.Fatalf("a%%2Fb%%2Fc: %+v", one)
	}
	a.do("DELETE", "/api/v1/retained/a/b/c", "", 204, "/api/v1/retained/x")
	a.do("GET", "/api/v1/retained/a/b/c", "", 404, "/api/v1/retained/x")
	a.do("DELETE", "/api/v1/retained/a/b/c", "", 404, "/api/v1/retained/x")
	if m := s.retained.get([]byte("a/b/c")); m != nil {
		t.Fatal("a/b/c still retained")
	}

	// Stats, cluster, reload.
	st := decode[adminStats](t, a.do("GET", "/api/v1/stats", "", 200))
	if st.Clients != 2 || st.Sessions != 3 || st.Retained != 1 || st.MessagesIn < 2 {
		t.Fatalf("stats: %+v", st)
	}
	a.do("GET", "/api/v1/cluster", "", 200)
	if r := decode[struct{ Reloaded bool }](t, a.do("POST", "/api/v1/reload", "", 200)); !r.Reloaded || reloads.Load() != 1 {
		t.Fatalf("reload: %+v after %d", r, reloads.Load())
	}
	if e := apiErrorOf(t, string(a.do("POST", "/api/v1/reload", "", 422))); !strings.Contains(e, "--listen") {
		t.Fatalf("reload error %q", e)
	}

	// Keys: none is 401, a read key on a change 403; unknown routes 404.
	a.doKey("", "GET", "/api/v1/stats", "", 401)
	a.doKey(read, "GET", "/api/v1/stats", "", 200)
	a.doKey(read, "DELETE", "/api/v1/clients/adm-bob", "", 403)
	code, body, _ := httpDo(t, s, "GET", "/api/v1/nothing", read, "")
	if code != 404 || !strings.Contains(apiErrorOf(t, body), "no such endpoint") {
		t.Fatalf("unknown route: %d %s", code, body)
	}
	if code, body, _ := httpDo(t, s, "PUT", "/api/v1/stats", write, ""); code != 404 {
		t.Fatalf("PUT stats: %d %s", code, body)
	}

	// Kicking: bob is disconnected; alice too, her session discarded.
	a.do("DELETE", "/api/v1/clients/adm-bob", "", 204)
	expectKicked(t, bob, 0)
	a.do("DELETE", "/api/v1/clients/adm-alice?discard_session=true", "", 204)
	expectKicked(t, alice, codec.AdministrativeAction)
	a.do("GET", "/api/v1/clients/adm-alice", "", 404)
	a.do("DELETE", "/api/v1/clients/adm-offline", "", 404) // offline: nothing to disconnect
	a.do("DELETE", "/api/v1/clients/adm-offline?discard_session=yes", "", 400)
	a.do("DELETE", "/api/v1/clients/adm-offline?discard_session=true", "", 204)
	a.do("GET", "/api/v1/clients/adm-offline", "", 404)
	if st := decode[adminStats](t, a.do("GET", "/api/v1/stats", "", 200)); st.Sessions != 0 {
		t.Fatalf("sessions left: %+v", st)
	}

	// Drain last: it refuses clients from then on.
	a.do("GET", "/api/v1/node/drain", "", 200)
	a.do("POST", "/api/v1/node/drain", `{"lb_grace":"0s","rate":0}`, 202)
	a.do("POST", "/api/v1/node/drain", `{"lb_grace":"x"}`, 400)
}

// Bans refuse CONNECT (0x8A, or 5 for MQTT 3) by client id, username and
// address, disconnect connected clients they match (0x98), are listed,
// lifted, counted, and kept across a restart.
func TestAdminBans(t *testing.T) {
	path, _, write := keyFile(t)
	dir := t.TempDir()
	s := startBroker(t, func(c *Config) { c.APIKeyFile, c.DataDir = path, dir })
	a := newAPICheck(t, s, write)

	victim := dialRaw(t, s, codec.V5)
	victim.connect("ban-me", nil)
	bystander := dialRaw(t, s, codec.V5)
	bystander.connect("keep-me", nil)

	b := decode[banView](t, a.do("POST", "/api/v1/bans", `{"client_id":"ban-me","reason":"abuse","expires_in":"1h"}`, 201))
	if b.ID == "" || b.Reason != "abuse" || b.Expires == nil || time.Until(*b.Expires) < 59*time.Minute {
		t.Fatalf("ban: %+v", b)
	}
	expectKicked(t, victim, codec.AdministrativeAction)
	if ca := dialRaw(t, s, codec.V5).connect("ban-me", nil); ca.Code != codec.Banned {
		t.Fatalf("banned v5 CONNACK %v", ca.Code)
	}
	if ca := dialRaw(t, s, codec.V311).connect("ban-me", nil); ca.Code != codec.V3NotAuthorized {
		t.Fatalf("banned v3 CONNACK %v", ca.Code)
	}
	if got := bystander.ping(); len(got) != 0 {
		t.Fatalf("bystander got %v", got)
	}

	u := decode[banView](t, a.do("POST", "/api/v1/bans", `{"username":"mallory"}`, 201))
	if ca := dialRaw(t, s, codec.V311).connect("any", func(p *codec.Connect) { p.UsernameFlag, p.Username = true, []byte("mallory") }); ca.Code != codec.V3NotAuthorized {
		t.Fatalf("banned username CONNACK %v", ca.Code)
	}
	a.do("POST", "/api/v1/bans", `{"client_id":"x","username":"y"}`, 400)
	a.do("POST", "/api/v1/bans", `{"reason":"nobody"}`, 400)
	a.do("POST", "/api/v1/bans", `{"cidr":"300.1.2.3"}`, 400)
	a.do("POST", "/api/v1/bans", `{"client_id":"x","expires_in":"-1h"}`, 400)
	a.do("POST", "/api/v1/bans", `{"client_id":"x","expires":"2001-01-01T00:00:00Z"}`, 400)
	a.do("POST", "/api/v1/bans", `not json`, 400)

	list := decode[struct{ Bans []banView }](t, a.do("GET", "/api/v1/bans", "", 200))
	if len(list.Bans) != 2 || list.Bans[0].ID != b.ID || list.Bans[1].ID != u.ID {
		t.Fatalf("bans: %+v", list)
	}
	a.do("DELETE", "/api/v1/bans/"+u.ID, "", 204)
	a.do("DELETE", "/api/v1/bans/"+u.ID, "", 404)
	if ca := dialRaw(t, s, codec.V311).connect("any", func(p *codec.Connect) { p.UsernameFlag, p.Username = true, []byte("mallory") }); ca.Code != 0 {
		t.Fatalf("lifted ban still refuses: %v", ca.Code)
	}

	// An address range bans everyone from it, the bystander included.
	r := decode[banView](t, a.do("POST", "/api/v1/bans", `{"cidr":"127.0.0.1"}`, 201))
	if r.CIDR != "127.0.0.1/32" {
		t.Fatalf("cidr %q", r.CIDR)
	}
	expectKicked(t, bystander, codec.AdministrativeAction)
	if ca := dialRaw(t, s, codec.V5).connect("keep-me", nil); ca.Code != codec.Banned {
		t.Fatalf("banned address CONNACK %v", ca.Code)
	}
	a.do("DELETE", "/api/v1/bans/"+r.ID, "", 204)
	a.do("POST", "/api/v1/reload", "", 501) // started without Config.Reload
	if got := s.bans.refused.Get(); got != 4 {
		t.Fatalf("refused %d, want 4", got)
	}
	code, metrics, _ := httpDo(t, s, "GET", "/metrics", "", "")
	if code != 200 || !strings.Contains(metrics, `gannet_connections_refused_total{reason="banned"} 4`) {
		t.Fatalf("metric missing: %d", code)
	}

	// Across a restart: the client id ban holds, the lifted ones stay
	// lifted.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := startBroker(t, func(c *Config) { c.APIKeyFile, c.DataDir = path, dir })
	a2 := newAPICheck(t, s2, write)
	list = decode[struct{ Bans []banView }](t, a2.do("GET", "/api/v1/bans", "", 200))
	if len(list.Bans) != 1 || list.Bans[0].ID != b.ID || list.Bans[0].Reason != "abuse" {
		t.Fatalf("bans after restart: %+v", list)
	}
	if ca := dialRaw(t, s2, codec.V5).connect("ban-me", nil); ca.Code != codec.Banned {
		t.Fatalf("after restart CONNACK %v", ca.Code)
	}
	if ca := dialRaw(t, s2, codec.V5).connect("keep-me", nil); ca.Code != 0 {
		t.Fatalf("after restart a lifted ban refuses: %v", ca.Code)
	}
}

// A ban made on one node holds on the others: a client connected there
// is disconnected and refused, a node that links later learns it, and
// lifting it on another node lifts it everywhere.
func TestAdminBansReplicated(t *testing.T) {
	path, _, write := keyFile(t)
	nodes := startCluster(t, 2, func(_ int, c *Config) { c.APIKeyFile = path })
	a1 := newAPICheck(t, nodes[0], write)
	a2 := newAPICheck(t, nodes[1], write)

	there := dialRaw(t, nodes[1], codec.V5)
	there.connect("roamer", nil)
	b := decode[banView](t, a1.do("POST", "/api/v1/bans", `{"client_id":"roamer","reason":"test"}`, 201))
	expectKicked(t, there, codec.AdministrativeAction)
	if ca := dialRaw(t, nodes[1], codec.V5).connect("roamer", nil); ca.Code != codec.Banned {
		t.Fatalf("node 2 CONNACK %v", ca.Code)
	}
	list := decode[struct{ Bans []banView }](t, a2.do("GET", "/api/v1/bans", "", 200))
	if len(list.Bans) != 1 || list.Bans[0].ID != b.ID {
		t.Fatalf("node 2 bans: %+v", list)
	}
	// A client on n2 is listed, looked at and kicked through n1.
	c := dialRaw(t, nodes[1], codec.V5)
	c.connect("listed", nil)
	subscribeRaw(t, c, "l/+", 1)
	here := dialRaw(t, nodes[0], codec.V5)
	here.connect("local", nil)
	type clients struct {
		Clients     []clientSummary
		Unreachable []string
	}
	l := decode[clients](t, a1.do("GET", "/api/v1/clients", "", 200))
	if len(l.Clients) != 2 || l.Clients[0].ClientID != "listed" || l.Clients[0].Node != "n2" ||
		l.Clients[1].ClientID != "local" || l.Clients[1].Node != "n1" || len(l.Unreachable) != 0 {
		t.Fatalf("clients from n1: %+v", l)
	}
	if l := decode[clients](t, a1.do("GET", "/api/v1/clients?limit=1&cursor="+base64.RawURLEncoding.EncodeToString([]byte("listed")), "", 200)); len(l.Clients) != 1 || l.Clients[0].ClientID != "local" {
		t.Fatalf("second page from n1: %+v", l)
	}
	if l := decode[clients](t, a1.do("GET", "/api/v1/clients?node=n2", "", 200)); len(l.Clients) != 1 || l.Clients[0].ClientID != "listed" {
		t.Fatalf("clients of n2 from n1: %+v", l)
	}
	if l := decode[clients](t, a1.do("GET", "/api/v1/clients?scope=node", "", 200)); len(l.Clients) != 1 || l.Clients[0].ClientID != "local" {
		t.Fatalf("n1's own clients: %+v", l)
	}
	if d := decode[clientDetail](t, a1.do("GET", "/api/v1/clients/listed", "", 200)); d.Node != "n2" || !d.Connected || len(d.Subscriptions) != 1 {
		t.Fatalf("listed from n1: %+v", d)
	}
	if sl := decode[struct{ Subscriptions []subscriptionView }](t, a1.do("GET", "/api/v1/subscriptions?filter=l/%2B", "", 200)); len(sl.Subscriptions) != 1 || sl.Subscriptions[0].Node != "n2" {
		t.Fatalf("subscriptions from n1: %+v", sl)
	}
	if sl := decode[struct{ Sessions []sessionSummary }](t, a1.do("GET", "/api/v1/sessions", "", 200)); len(sl.Sessions) != 2 {
		t.Fatalf("sessions from n1: %+v", sl)
	}
	a1.do("GET", "/api/v1/clients/nobody", "", 404)
	a1.do("GET", "/api/v1/clients/listed?scope=node", "", 404)
	a1.do("DELETE", "/api/v1/clients/listed", "", 204)
	expectKicked(t, c, codec.AdministrativeAction)
	a1.do("DELETE", "/api/v1/clients/nobody", "", 404)
	st := decode[adminStats](t, a1.do("GET", "/api/v1/stats", "", 200))
	if st.Node != "n1" || len(st.Peers) != 1 || st.Peers[0].Node != "n2" || st.Peers[0].Bans != 1 {
		t.Fatalf("stats from n1: %+v", st)
	}
	if st := decode[adminStats](t, a1.do("GET", "/api/v1/stats?scope=node", "", 200)); len(st.Peers) != 0 {
		t.Fatalf("n1's own stats: %+v", st)
	}

	// A third node that joins later learns the ban from its peers.
	n3 := startBroker(t, func(c *Config) {
		ic := *nodes[0].cfg.Cluster
		ic.NodeName, ic.Listen, ic.GossipListen = "n3", "127.0.0.1:0", "127.0.0.1:0"
		ic.Join = []string{"gossip=" + nodes[0].cl.node.Members()[0].Gossip}
		c.Cluster = &ic
	})
	waitFor(t, "the ban on n3", func() bool { return n3.bans.check("roamer", "", netip.Addr{}) != nil })

	a2.do("DELETE", "/api/v1/bans/"+b.ID, "", 204)
	waitFor(t, "the ban lifted on n1 and n3", func() bool {
		return nodes[0].bans.active.Load() == 0 && n3.bans.active.Load() == 0
	})
	if ca := dialRaw(t, nodes[0], codec.V5).connect("roamer", nil); ca.Code != 0 {
		t.Fatalf("lifted on n2, n1 still refuses: %v", ca.Code)
	}
}
