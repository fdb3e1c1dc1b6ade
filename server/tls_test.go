package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

// tlsBroker starts a broker with a TLS listener on a certificate pki
// issued (serial 100, files server.pem and server-key.pem in pki's
// directory); with clientCA it requires client certificates of pki's CA.
func tlsBroker(t *testing.T, pki *testPKI, clientCA bool, mutate func(*Config)) *Server {
	t.Helper()
	certFile, keyFile := pki.serverFiles(100, "server.pem", "server-key.pem")
	return startBroker(t, func(c *Config) {
		c.TLS = &TLSConfig{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}
		if clientCA {
			c.TLS.ClientCAFile = pki.caFile
		}
		if mutate != nil {
			mutate(c)
		}
	})
}

// tlsClientConfig verifies the broker against pki's CA and presents cert
// when it is not nil, whichever CAs the broker names (as OpenSSL's
// clients do; crypto/tls would send nothing when the issuer is not
// among them).
func tlsClientConfig(pki *testPKI, cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: pki.pool(), ServerName: "127.0.0.1"}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// dialTLSRaw opens a TLS connection to s for speaking MQTT byte by byte.
func dialTLSRaw(t testing.TB, s *Server, cfg *tls.Config, v codec.Version) *rawConn {
	t.Helper()
	c, err := tls.Dial("tcp", s.TLSAddr(), cfg)
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c), v: v}
}

// dialV3TLS connects a paho.mqtt.golang client over TLS.
func dialV3TLS(t *testing.T, s *Server, id string, cfg *tls.Config) paho3.Client {
	return dialV3(t, s, id, true, func(o *paho3.ClientOptions) {
		o.Servers = nil
		o.AddBroker("ssl://" + s.TLSAddr())
		o.SetTLSConfig(cfg)
	})
}

// recorder is an authentication source that notes every request and
// decides nothing.
type recorder struct {
	mu   sync.Mutex
	reqs map[string]auth.Request // by client id
}

func (r *recorder) Name() string { return "recorder" }

func (r *recorder) Authenticate(_ context.Context, req *auth.Request) (auth.Answer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reqs == nil {
		r.reqs = make(map[string]auth.Request)
	}
	r.reqs[req.ClientID] = *req
	return auth.Answer{Verdict: auth.Ignore}, nil
}

func (r *recorder) request(t *testing.T, id string) auth.Request {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	req, ok := r.reqs[id]
	if !ok {
		t.Fatalf("the chain was not asked about %q", id)
	}
	return req
}

// newChain builds an auth chain for a test.
func newChain(t *testing.T, cc auth.ChainConfig) *auth.Chain {
	t.Helper()
	ch, err := auth.NewChain(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Close)
	return ch
}

// logTo makes the broker log into buf as well as into the test log.
func logTo(t *testing.T, buf *syncBuf) func(*Config) {
	return func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(buf, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
}

func receive(t *testing.T, ch <-chan paho3.Message) paho3.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

// Clients over TLS and over plain TCP reach each other, big messages
// included; the chain learns the listener and the client's own address;
// a TLS client that vanishes leaves its will; the bridges end with their
// connections.
func TestTLSPublishSubscribeAcrossListeners(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	rec := &recorder{}
	ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{rec}, AllowAnonymous: true})
	s := tlsBroker(t, pki, false, func(c *Config) { c.Auth = ch })

	toTLS, toPlain := make(chan paho3.Message, 10), make(chan paho3.Message, 10)
	tlsC := dialV3TLS(t, s, "tls-client", tlsClientConfig(pki, nil))
	plainC := dialV3(t, s, "plain-client", true, nil)
	wait(t, tlsC.Subscribe("to-tls/#", 1, func(_ paho3.Client, m paho3.Message) { toTLS <- m }))
	wait(t, plainC.Subscribe("to-plain/#", 1, func(_ paho3.Client, m paho3.Message) { toPlain <- m }))

	big := bytes.Repeat([]byte("0123456789abcdef"), 20_000) // 320 KB: many TLS records
	for _, payload := range [][]byte{[]byte("hello"), big} {
		wait(t, plainC.Publish("to-tls/a", 1, false, payload))
		if m := receive(t, toTLS); m.Topic() != "to-tls/a" || !bytes.Equal(m.Payload(), payload) {
			t.Fatalf("TLS client got %s (%d bytes), want to-tls/a (%d bytes)", m.Topic(), len(m.Payload()), len(payload))
		}
		wait(t, tlsC.Publish("to-plain/b", 1, false, payload))
		if m := receive(t, toPlain); m.Topic() != "to-plain/b" || !bytes.Equal(m.Payload(), payload) {
			t.Fatalf("plain client got %s (%d bytes), want to-plain/b (%d bytes)", m.Topic(), len(m.Payload()), len(payload))
		}
	}

	// The chain hears of the listener and of the TLS client's own
	// address, not of the socket pair behind it.
	raw := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V311)
	if ca := raw.connect("tls-raw", func(p *codec.Connect) {
		p.WillFlag, p.WillQoS, p.WillTopic, p.WillPayload = true, 1, []byte("to-plain/will"), []byte("gone")
	}); ca.Code != codec.Success {
		t.Fatalf("CONNACK %v", ca.Code)
	}
	if req := rec.request(t, "tls-raw"); req.Listener != "tls" || req.Remote != raw.c.LocalAddr().String() || req.CertCN != "" {
		t.Errorf("TLS request: listener %q, remote %q, cn %q; want tls, %s, none", req.Listener, req.Remote, req.CertCN, raw.c.LocalAddr())
	}
	if req := rec.request(t, "plain-client"); req.Listener != "mqtt" {
		t.Errorf("plain request: listener %q, want mqtt", req.Listener)
	}

	// A TLS client whose TCP connection ends without a DISCONNECT leaves
	// its will.
	_ = raw.c.(*tls.Conn).NetConn().Close()
	if m := receive(t, toPlain); m.Topic() != "to-plain/will" || string(m.Payload()) != "gone" {
		t.Fatalf("got %s %q, want the will", m.Topic(), m.Payload())
	}

	tlsC.Disconnect(100)
	waitFor(t, "every TLS bridge closed", func() bool { return s.tlsl.open.Load() == 0 })
	waitFor(t, "only the plain client left", func() bool { return s.stats.connections.Load() == 1 })
}

// aclForCerts is the ACL file of the client certificate tests.
const aclForCerts = `user device-1
topic readwrite devices/device-1/#

pattern readwrite users/%u/#
`

// A verified client certificate's names reach the chain; with a
// CertSource its CN (or first SAN) is the username the ACL applies to.
func TestTLSClientCertificateIsTheUsername(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	aclPath := pki.write("acl", []byte(aclForCerts))
	acl, err := auth.LoadACLFile(aclPath)
	if err != nil {
		t.Fatal(err)
	}
	cert := pki.client(leafSpec{cn: "device-1", dns: []string{"device-1.example"},
		emails: []string{"ops@example.com"}, uris: []string{"spiffe://example.org/device-1"}})
	wantSANs := []string{"device-1.example", "ops@example.com", "spiffe://example.org/device-1"}

	for _, tc := range []struct {
		field   string
		allowed []string // filters the user may subscribe to
		denied  []string
	}{
		{"cn", []string{"devices/device-1/#", "users/device-1/#"}, []string{"devices/device-2/#", "users/device-1.example/#"}},
		{"san", []string{"users/device-1.example/#"}, []string{"devices/device-1/#", "users/device-1/#"}},
	} {
		t.Run(tc.field, func(t *testing.T) {
			rec := &recorder{}
			cs, err := auth.NewCertSource(tc.field)
			if err != nil {
				t.Fatal(err)
			}
			ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{rec, cs}, ACLs: []auth.ACLSource{acl}})
			s := tlsBroker(t, pki, true, func(c *Config) { c.Auth = ch })
			for _, v := range []codec.Version{codec.V311, codec.V5} {
				rc := dialTLSRaw(t, s, tlsClientConfig(pki, &cert), v)
				if ca := rc.connect("dev-"+v.String(), nil); ca.Code != codec.Success {
					t.Fatalf("%s: CONNACK %v, want success", v, ca.Code)
				}
				req := rec.request(t, "dev-"+v.String())
				if req.Listener != "tls" || req.CertCN != "device-1" || !slices.Equal(req.CertSANs, wantSANs) {
					t.Errorf("%s: request has listener %q, CN %q, SANs %q", v, req.Listener, req.CertCN, req.CertSANs)
				}
				no := codec.NotAuthorized
				if v != codec.V5 {
					no = codec.V3SubackFailure
				}
				got := subscribeCodes(rc, append(slices.Clone(tc.allowed), tc.denied...)...)
				for i, code := range got {
					want := codec.GrantedQoS1
					if i >= len(tc.allowed) {
						want = no
					}
					if code != want {
						t.Errorf("%s: SUBACK code %d = %v, want %v", v, i, code, want)
					}
				}
				// Its own topic: published and delivered back.
				topic := strings.TrimSuffix(tc.allowed[0], "#") + "t"
				rc.send(&codec.Publish{QoS: 1, PacketID: rc.nextID(), Topic: []byte(topic), Payload: []byte("x")})
				var gotPub bool
				for _, p := range append([]codec.Packet{rc.expect()}, rc.ping()...) {
					if pub, ok := p.(*codec.Publish); ok && string(pub.Topic) == topic {
						gotPub = true
					}
				}
				if !gotPub {
					t.Errorf("%s: own publish to %s not delivered", v, topic)
				}
			}
		})
	}

	// With certificates asked for but not required, a client without one
	// gets through the handshake and is refused by the chain.
	t.Run("request without a certificate", func(t *testing.T) {
		cs, _ := auth.NewCertSource("cn")
		ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{cs}, ACLs: []auth.ACLSource{acl}})
		s := tlsBroker(t, pki, true, func(c *Config) { c.Auth = ch; c.TLS.ClientAuth = ClientAuthRequest })
		rc := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V5)
		if ca := rc.connect("anon", nil); ca.Code != codec.NotAuthorized {
			t.Fatalf("CONNACK %v, want not authorized", ca.Code)
		}
		rc.expectClosed()
		rc = dialTLSRaw(t, s, tlsClientConfig(pki, &cert), codec.V5)
		if ca := rc.connect("with-cert", nil); ca.Code != codec.Success {
			t.Fatalf("with a certificate: CONNACK %v, want success", ca.Code)
		}
	})
}

// tlsAttempt dials the TLS listener with cfg, sends CONNECT and reads the
// answer. It returns the client's address and the error that ended the
// attempt (TLS 1.3 reports a refused client certificate as an alert on
// the first read, after the client's side of the handshake is done).
func tlsAttempt(t *testing.T, s *Server, cfg *tls.Config) (string, error) {
	t.Helper()
	raw, err := net.Dial("tcp", s.TLSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Client(raw, cfg)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return raw.LocalAddr().String(), err
	}
	rc := &rawConn{t: t, c: tc, r: bufio.NewReader(tc), v: codec.V311}
	_, _ = tc.Write((&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true,
		KeepAlive: 30, ClientID: []byte("attempt")}).Append(nil, codec.V311))
	p, err := rc.read()
	if err == nil {
		return raw.LocalAddr().String(), errors.New("got " + p.Type().String())
	}
	return raw.LocalAddr().String(), err
}

// Each refusal closes the connection cleanly, counts it by reason and
// logs it with the peer's address; clients already connected on either
// listener notice nothing.
func TestTLSRefusals(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	other := newTestPKI(t, "Someone Else's CA")
	logs := &syncBuf{}
	s := tlsBroker(t, pki, true, logTo(t, logs))
	good := pki.client(leafSpec{cn: "good"})

	tlsC := dialTLSRaw(t, s, tlsClientConfig(pki, &good), codec.V311)
	tlsC.connect("tls-bystander", nil)
	subscribeCodes(tlsC, "by/tls")
	plain := dialRaw(t, s, codec.V311)
	plain.connect("plain-bystander", nil)
	subscribeCodes(plain, "by/plain")

	now := time.Now()
	expired := pki.client(leafSpec{cn: "old", notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-24 * time.Hour)})
	untrusted := other.client(leafSpec{cn: "stranger"})
	sc, sk := pki.issue(leafSpec{cn: "server usage only"})
	serverCert, err := tls.X509KeyPair(sc, sk)
	if err != nil {
		t.Fatal(err)
	}
	old := tlsClientConfig(pki, &good)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11

	for _, tc := range []struct {
		name, reason string
		attempt      func() (string, error)
	}{
		{"untrusted certificate", tlsUntrusted, func() (string, error) { return tlsAttempt(t, s, tlsClientConfig(pki, &untrusted)) }},
		{"expired certificate", tlsExpired, func() (string, error) { return tlsAttempt(t, s, tlsClientConfig(pki, &expired)) }},
		{"no certificate", tlsNoCert, func() (string, error) { return tlsAttempt(t, s, tlsClientConfig(pki, nil)) }},
		{"TLS 1.1", tlsOldVersion, func() (string, error) { return tlsAttempt(t, s, old) }},
		{"a server certificate as client certificate", tlsBadCert, func() (string, error) {
			return tlsAttempt(t, s, tlsClientConfig(pki, &serverCert))
		}},
		{"TLS 1.2 with an untrusted certificate", tlsUntrusted, func() (string, error) {
			cfg := tlsClientConfig(pki, &untrusted)
			cfg.MaxVersion = tls.VersionTLS12
			return tlsAttempt(t, s, cfg)
		}},
		{"plaintext MQTT", tlsNotTLS, func() (string, error) {
			rc := &rawConn{t: t, v: codec.V311}
			c, err := net.Dial("tcp", s.TLSAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rc.c, rc.r = c, bufio.NewReader(c)
			rc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, ClientID: []byte("plain")})
			_, err = rc.read()
			return c.LocalAddr().String(), err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.tlsl.failures[tc.reason].Get()
			local, err := tc.attempt()
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("attempt ended with %v, want the connection refused", err)
			}
			waitFor(t, tc.reason+" counted", func() bool { return s.tlsl.failures[tc.reason].Get() == before+1 })
			waitFor(t, "the refusal logged with the peer", func() bool {
				for _, line := range strings.Split(logs.String(), "\n") {
					if strings.Contains(line, "refusing TLS connection") && strings.Contains(line, "remote="+local) &&
						strings.Contains(line, "reason="+tc.reason) {
						return true
					}
				}
				return false
			})
		})
	}

	// A connection closed without a byte (a load balancer's TCP health
	// check) is neither counted nor logged.
	var failures uint64
	for _, c := range s.tlsl.failures {
		failures += c.Get()
	}
	check, err := net.Dial("tcp", s.TLSAddr())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the health check's handshake started", func() bool { return s.tlsl.inProgress.Load() == 1 })
	_ = check.Close()
	waitFor(t, "the health check's handshake ended", func() bool { return s.tlsl.inProgress.Load() == 0 })
	var after uint64
	for _, c := range s.tlsl.failures {
		after += c.Get()
	}
	if after != failures || strings.Contains(logs.String(), "remote="+check.LocalAddr().String()) {
		t.Errorf("a connection closed without a byte was counted (%d failures, were %d) or logged:\n%s", after, failures, logs.String())
	}

	// The bystanders still talk to each other.
	plain.send(&codec.Publish{Topic: []byte("by/tls"), Payload: []byte("1")})
	if p, ok := tlsC.expect().(*codec.Publish); !ok || string(p.Topic) != "by/tls" {
		t.Fatalf("TLS bystander got %v", p)
	}
	tlsC.send(&codec.Publish{Topic: []byte("by/plain"), Payload: []byte("2")})
	if p, ok := plain.expect().(*codec.Publish); !ok || string(p.Topic) != "by/plain" {
		t.Fatalf("plain bystander got %v", p)
	}
	if n := s.tlsl.handshakes.Get(); n != 1 {
		t.Errorf("%d handshakes succeeded, want 1 (the bystander's)", n)
	}

	// The series are served at /metrics.
	resp, err := http.Get("http://" + s.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, want := range []string{`gannet_tls_handshake_failures_total{reason="untrusted_certificate"} 2`,
		`gannet_tls_handshake_failures_total{reason="not_tls"} 1`, "gannet_tls_connections 1", "gannet_tls_handshakes_total 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// A client that does not finish its handshake in time is closed and
// counted; no more than MaxHandshakes are in progress at once, and the
// listener serves again once they end.
func TestTLSHandshakeDeadlineAndCap(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, func(c *Config) {
		c.TLS.HandshakeTimeout = 300 * time.Millisecond
		c.TLS.MaxHandshakes = 2
	})
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", s.TLSAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.tlsl.failures[tlsTimeout].Get() < 4 {
		if n := s.tlsl.inProgress.Load(); n > 2 {
			t.Fatalf("%d handshakes in progress, want at most 2", n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 4 idle clients timed out within 10s", s.tlsl.failures[tlsTimeout].Get())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("idle client %d: read %v, want the connection closed", i, err)
		}
	}
	rc := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V5)
	if ca := rc.connect("after", nil); ca.Code != codec.Success {
		t.Fatalf("CONNACK %v", ca.Code)
	}
}

// serialOf returns the serial number of the certificate a new handshake
// sees, or the handshake's error.
func serialOf(s *Server, cfg *tls.Config) (int64, error) {
	c, err := tls.Dial("tcp", s.TLSAddr(), cfg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
}

// ReloadTLS gives new handshakes the new certificate and client CAs and
// leaves connected clients alone; files that do not make a usable
// certificate are reported and the old one stays.
func TestTLSReload(t *testing.T) {
	pki := newTestPKI(t, "CA one")
	s := tlsBroker(t, pki, true, nil)
	cert := pki.client(leafSpec{cn: "stayer"})
	cfg := tlsClientConfig(pki, &cert)

	stayer := dialTLSRaw(t, s, cfg, codec.V311)
	stayer.connect("stayer", nil)
	subscribeCodes(stayer, "r/#")
	plain := dialRaw(t, s, codec.V311)
	plain.connect("plain", nil)
	stillThere := func(payload string) {
		t.Helper()
		plain.send(&codec.Publish{Topic: []byte("r/x"), Payload: []byte(payload)})
		if p, ok := stayer.expect().(*codec.Publish); !ok || string(p.Payload) != payload {
			t.Fatalf("connected TLS client got %v, want %q", p, payload)
		}
	}
	expectSerial := func(want int64) {
		t.Helper()
		if got, err := serialOf(s, cfg); err != nil || got != want {
			t.Fatalf("new handshake: serial %d, %v; want %d", got, err, want)
		}
	}
	expectSerial(100)

	pki.serverFiles(200, "server.pem", "server-key.pem")
	if err := s.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	expectSerial(200)
	stillThere("after the new certificate")

	// Not a certificate; a certificate that does not match the key; an
	// expired certificate.
	pki.write("server.pem", []byte("not a certificate\n"))
	if err := s.ReloadTLS(); err == nil {
		t.Fatal("ReloadTLS took a file that holds no certificate")
	}
	expectSerial(200)
	mismatched, _ := pki.issue(leafSpec{cn: "other", ips: []net.IP{net.IPv4(127, 0, 0, 1)}, serial: 300})
	pki.write("server.pem", mismatched)
	if err := s.ReloadTLS(); err == nil {
		t.Fatal("ReloadTLS took a certificate that does not match the key")
	}
	c, k := pki.issue(leafSpec{cn: "expired", ips: []net.IP{net.IPv4(127, 0, 0, 1)}, serial: 301,
		notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	pki.write("server.pem", c)
	pki.write("server-key.pem", k)
	if err := s.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("ReloadTLS of an expired certificate: %v, want an error naming it expired", err)
	}
	expectSerial(200)
	if ok, failed := s.tlsl.reloads.Get(), s.tlsl.reloadErrs.Get(); ok != 1 || failed != 3 {
		t.Errorf("reloads: %d ok, %d failed; want 1 and 3", ok, failed)
	}
	stillThere("after the bad files")

	// A session of CA one's client that could be resumed.
	cache := tls.NewLRUClientSessionCache(4)
	resumable := tlsClientConfig(pki, &cert)
	resumable.ClientSessionCache = cache
	rc := dialTLSRaw(t, s, resumable, codec.V311)
	rc.connect("resumable", nil) // reads the session ticket too
	_ = rc.c.Close()

	// A new client CA: CA one's clients are refused from now on, resumed
	// sessions included; CA two's are let in; the connected client stays.
	pki.serverFiles(400, "server.pem", "server-key.pem")
	two := newTestPKI(t, "CA two")
	caTwo, err := os.ReadFile(two.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pki.write("ca.pem", caTwo)
	if err := s.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsAttempt(t, s, tlsClientConfig(pki, &cert)); err == nil {
		t.Error("a client of the old CA got in after the reload")
	}
	if _, err := tlsAttempt(t, s, resumable); err == nil {
		t.Error("a resumed session of the old CA's client got in after the reload")
	}
	newCert := two.client(leafSpec{cn: "newcomer"})
	nc := dialTLSRaw(t, s, tlsClientConfig(pki, &newCert), codec.V311)
	if ca := nc.connect("newcomer", nil); ca.Code != codec.Success {
		t.Fatalf("CA two's client: CONNACK %v", ca.Code)
	}
	if serial := nc.c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Int64(); serial != 400 {
		t.Errorf("new handshake saw serial %d, want 400", serial)
	}
	stillThere("after the new client CA")
}

// Session tickets let a client resume without a full handshake, with
// TLS 1.3 and 1.2.
func TestTLSSessionResumption(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cfg := tlsClientConfig(pki, nil)
		cfg.MaxVersion = v
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		for i, want := range []bool{false, true} {
			rc := dialTLSRaw(t, s, cfg, codec.V5)
			rc.connect("resume", nil)
			st := rc.c.(*tls.Conn).ConnectionState()
			if st.Version != v || st.DidResume != want {
				t.Errorf("%s connection %d: version %s, resumed %v; want resumed %v",
					tls.VersionName(v), i, tls.VersionName(st.Version), st.DidResume, want)
			}
			rc.send(&codec.Disconnect{})
			rc.expectClosed()
		}
	}
}

// Shutdown tells an MQTT 5 client over TLS that the server is going away,
// and waits for the TLS connections to end.
func TestTLSShutdown(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	rc := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V5)
	rc.connect("v5", nil)
	idle, err := net.Dial("tcp", s.TLSAddr()) // a handshake in progress
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waitFor(t, "the idle handshake started", func() bool { return s.tlsl.inProgress.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	got := rc.expectClosed()
	if len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.ServerShuttingDown {
		t.Fatalf("got %v, want DISCONNECT 0x8B", got)
	}
	if n := s.tlsl.failures[tlsTimeout].Get() + s.tlsl.failures[tlsOther].Get(); n != 0 {
		t.Errorf("the handshake cut short by Shutdown was counted as a failure")
	}
}

// proxyBroker starts a broker that trusts PROXY headers from prefix, on
// both listeners.
func proxyBroker(t *testing.T, pki *testPKI, prefix string, logs *syncBuf, rec *recorder) *Server {
	t.Helper()
	ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{rec}, AllowAnonymous: true})
	return tlsBroker(t, pki, false, func(c *Config) {
		logTo(t, logs)(c)
		c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix(prefix)}
		c.Auth = ch
	})
}

var proxyLine = []byte("PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\n")

func connectBytes(id string) []byte {
	return (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true,
		KeepAlive: 30, ClientID: []byte(id)}).Append(nil, codec.V311)
}

// With --proxy-protocol-from, a peer in the range must send the PROXY
// header and its address is the one the header gives; a peer outside
// that sends one is refused, counted and logged, and one that does not is
// served as usual. Both listeners.
func TestProxyProtocolFrom(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")

	t.Run("trusted", func(t *testing.T) {
		logs, rec := &syncBuf{}, &recorder{}
		s := proxyBroker(t, pki, "127.0.0.0/8", logs, rec)

		rc := dialRaw(t, s, codec.V311)
		rc.write(append(slices.Clone(proxyLine), connectBytes("behind-lb")...))
		if ca, ok := rc.expect().(*codec.Connack); !ok || ca.Code != codec.Success {
			t.Fatalf("CONNACK %v", ca)
		}
		if r := rec.request(t, "behind-lb"); r.Remote != "203.0.113.7:5555" || r.Listener != "mqtt" {
			t.Errorf("plain: remote %q, listener %q", r.Remote, r.Listener)
		}

		// Over TLS: the header, then the handshake.
		raw, err := net.Dial("tcp", s.TLSAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		if _, err := raw.Write(proxyLine); err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, tlsClientConfig(pki, nil))
		trc := &rawConn{t: t, c: tc, r: bufio.NewReader(tc), v: codec.V311}
		if ca := trc.connect("tls-behind-lb", nil); ca.Code != codec.Success {
			t.Fatalf("TLS: CONNACK %v", ca.Code)
		}
		if r := rec.request(t, "tls-behind-lb"); r.Remote != "203.0.113.7:5555" || r.Listener != "tls" {
			t.Errorf("TLS: remote %q, listener %q", r.Remote, r.Listener)
		}

		// Without a header: refused on both.
		plain := dialRaw(t, s, codec.V311)
		plain.write(connectBytes("no-header"))
		plain.expectClosed()
		if _, err := tlsAttempt(t, s, tlsClientConfig(pki, nil)); err == nil {
			t.Error("a TLS client from a trusted range got in without a PROXY header")
		}
		waitFor(t, "both refusals counted", func() bool { return s.stats.proxyBad.Get() == 2 })
	})

	t.Run("untrusted", func(t *testing.T) {
		logs, rec := &syncBuf{}, &recorder{}
		s := proxyBroker(t, pki, "10.0.0.0/8", logs, rec)

		// A header from outside the range: refused on both listeners.
		rc := dialRaw(t, s, codec.V311)
		rc.write(append(slices.Clone(proxyLine), connectBytes("spoofer")...))
		rc.expectClosed()
		raw, err := net.Dial("tcp", s.TLSAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		if _, err := raw.Write(proxyLine); err != nil {
			t.Fatal(err)
		}
		_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(raw); err != nil {
			t.Fatalf("TLS listener: %v, want the connection closed", err)
		}
		waitFor(t, "both refusals counted", func() bool { return s.stats.proxyUntrusted.Get() == 2 })
		if n := strings.Count(logs.String(), "PROXY protocol header from a peer outside --proxy-protocol-from"); n != 2 {
			t.Errorf("%d refusals logged, want 2:\n%s", n, logs.String())
		}

		// Without a header: served, under its own address.
		plain := dialRaw(t, s, codec.V311)
		if ca := plain.connect("direct", nil); ca.Code != codec.Success {
			t.Fatalf("CONNACK %v", ca.Code)
		}
		if r := rec.request(t, "direct"); r.Remote != plain.c.LocalAddr().String() {
			t.Errorf("remote %q, want %s", r.Remote, plain.c.LocalAddr())
		}
		trc := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V311)
		if ca := trc.connect("tls-direct", nil); ca.Code != codec.Success {
			t.Fatalf("TLS: CONNACK %v", ca.Code)
		}
	})
}

// The HTTP listener over TLS: HTTPS only, its certificate reloaded with
// the TLS listener's, a bad file reported and the old certificate kept.
func TestHTTPOverTLS(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	certFile, keyFile := pki.serverFiles(100, "http.pem", "http-key.pem")
	s := startBroker(t, func(c *Config) {
		c.HTTPListen = "127.0.0.1:0"
		c.HTTPTLSCertFile, c.HTTPTLSKeyFile = certFile, keyFile
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsClientConfig(pki, nil), DisableKeepAlives: true}}
	get := func(wantSerial int64) {
		t.Helper()
		resp, err := client.Get("https://" + s.HTTPAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
			t.Fatalf("GET /healthz: %s %q", resp.Status, body)
		}
		if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != wantSerial {
			t.Fatalf("served certificate serial %d, want %d", got, wantSerial)
		}
	}
	get(100)

	// Plain HTTP to the HTTPS listener is refused.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + s.HTTPAddr() + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP answered 200 on the HTTPS listener")
		}
	}

	pki.serverFiles(200, "http.pem", "http-key.pem")
	if err := s.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	get(200)
	pki.write("http.pem", []byte("not a certificate\n"))
	if err := s.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "HTTP listener") {
		t.Fatalf("ReloadTLS of a bad HTTP certificate: %v, want an error naming the HTTP listener", err)
	}
	get(200)

	// A certificate that does not load stops the broker from starting.
	cfg := DefaultConfig()
	cfg.HTTPTLSCertFile, cfg.HTTPTLSKeyFile = pki.write("bad.pem", []byte("nope")), keyFile
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "HTTP listener") {
		t.Fatalf("New with a bad HTTP certificate: %v", err)
	}
}
