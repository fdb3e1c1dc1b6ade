package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/codec"
)

// renderHAProxyTLS returns deploy/haproxy-tls.cfg pointed at this test's
// ports and files. The shipped file is what is tested: every line the
// test rewrites must be in it as often as expected, so a change to the
// file that the test does not follow fails here rather than going
// untested.
func renderHAProxyTLS(t *testing.T, nodes []*clusterNode, front, mutual, pem, clientCA string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "haproxy-tls.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") { // the example command lines hold the same addresses
			lines = append(lines, l)
		}
	}
	cfg := strings.Join(lines, "\n")
	type subst struct {
		old, new string
		n        int
	}
	substs := []subst{
		{"maxconn 500000", "maxconn 1000", 1}, // a test runs without a raised file limit
		{"bind :8883 ", "bind " + front + " ", 1},
		{"bind :8884 ", "bind " + mutual + " ", 1},
		{"/etc/haproxy/gannet.pem", pem, 2},
		{"/etc/haproxy/clients-ca.pem", clientCA, 1},
		{"inter 2s", "inter 200ms", 1},
	}
	for i, n := range nodes {
		_, hport, _ := net.SplitHostPort(n.b.http)
		substs = append(substs, subst{fmt.Sprintf("127.0.0.1:%d check port %d", 1884+i, 8081+i), n.b.mqtt + " check port " + hport, 1})
	}
	for _, s := range substs {
		if c := strings.Count(cfg, s.old); c != s.n {
			t.Fatalf("deploy/haproxy-tls.cfg has %q %d times, want %d: update the test with the file", s.old, c, s.n)
		}
		cfg = strings.ReplaceAll(cfg, s.old, s.new)
	}
	return cfg
}

// startHAProxyTLS runs haproxy on the rendered configuration and returns
// the addresses of its two frontends (TLS, and TLS with a client
// certificate required) once both complete a handshake with the test's
// certificate: that is this HAProxy, not whoever else took a port. A port
// taken between choosing and binding is chosen again.
func startHAProxyTLS(t *testing.T, bin string, render func(front, mutual string) string, probe *tls.Config) (front, mutual string, out *lockedBuffer) {
	t.Helper()
	handshakes := func(addr string) bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, probe)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}
	for attempt := 0; ; attempt++ {
		front, mutual = freeAddr(t), freeAddr(t)
		path := filepath.Join(t.TempDir(), "haproxy-tls.cfg")
		if err := os.WriteFile(path, []byte(render(front, mutual)), 0o644); err != nil {
			t.Fatal(err)
		}
		hp := exec.Command(bin, "-f", path, "-db")
		out = &lockedBuffer{}
		hp.Stdout, hp.Stderr = out, out
		if err := hp.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = hp.Wait(); close(exited) }()
		t.Cleanup(func() { _ = hp.Process.Kill(); <-exited })
		deadline := time.Now().Add(20 * time.Second)
		for {
			select {
			case <-exited:
			default:
				if handshakes(front) && handshakes(mutual) {
					t.Cleanup(func() {
						if t.Failed() {
							t.Logf("haproxy output:\n%s", out.String())
						}
					})
					return front, mutual, out
				}
				if time.Now().After(deadline) {
					t.Fatalf("HAProxy not serving TLS on %s and %s within 20s:\n%s", front, mutual, out.String())
				}
				time.Sleep(20 * time.Millisecond)
				continue
			}
			break
		}
		if attempt == 2 || !strings.Contains(out.String(), "cannot bind") {
			t.Fatalf("haproxy exited:\n%s", out.String())
		}
	}
}

// dialPahoTLS connects a paho.mqtt.golang client over TLS and returns it
// with its connection's local address: the client's own address, which
// HAProxy passes on in the PROXY header. An error is the refusal, from
// the TLS handshake or the CONNACK.
func dialPahoTLS(t *testing.T, addr, id string, cfg *tls.Config) (*pahoClient, string, error) {
	t.Helper()
	pc := &pahoClient{msgs: make(chan paho3.Message, 1000)}
	local := make(chan string, 1)
	// MQTT 3.1.1 only: a refused client would otherwise be dialled again
	// for MQTT 3.1.
	o := paho3.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetCleanSession(true).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", u.Host, cfg)
			if err != nil {
				return nil, err // not a nil *tls.Conn in a non-nil net.Conn
			}
			local <- c.LocalAddr().String()
			return c, nil
		}).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { pc.msgs <- m })
	pc.Client = paho3.NewClient(o)
	tok := pc.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		t.Fatalf("%s: connect to %s: no answer in 20s", id, addr)
	}
	if err := tok.Error(); err != nil {
		return nil, "", err
	}
	t.Cleanup(func() { pc.Disconnect(50) })
	return pc, <-local, nil
}

// subscribeResults subscribes pc to filters at QoS 1 and returns each
// filter's SUBACK code.
func subscribeResults(t *testing.T, pc *pahoClient, filters ...string) map[string]byte {
	t.Helper()
	m := make(map[string]byte)
	for _, f := range filters {
		m[f] = 1
	}
	tok := pc.SubscribeMultiple(m, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %v: %v", filters, tok.Error())
	}
	return tok.(*paho3.SubscribeToken).Result()
}

// TLS ends at real HAProxy, configured by the shipped
// deploy/haproxy-tls.cfg, in front of three nodes of the real binary:
// clients over TLS exchange messages across nodes, each node sees the
// clients' own addresses through PROXY v2, plaintext on the TLS port gets
// nowhere; on the client-certificate frontend a client without one is
// refused, and the CN HAProxy verified becomes the MQTT username the ACL
// applies to (--proxy-protocol-cert-cn, --auth-cert cn).
func TestClusterBehindHAProxyTLS(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (.ci/run installs it)")
	}
	ca := newTestCA(t)
	certFile, keyFile := ca.issue("server", "localhost", 100, false)
	sensorCert, sensorKey := ca.issue("sensor-1", "sensor-1", 101, true)
	var pemData []byte
	for _, f := range []string{certFile, keyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pemData = append(pemData, b...)
	}
	pem := filepath.Join(ca.dir, "gannet.pem")
	if err := os.WriteFile(pem, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	acl := filepath.Join(t.TempDir(), "acl")
	// Clients without a certificate (anonymous) get lb/#; a certificate's
	// CN gets its own subtree, and nothing of lb/#.
	if err := os.WriteFile(acl, []byte("topic readwrite lb/#\npattern readwrite sensors/%u/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	nodes := newClusterNodes(t, 3, "--proxy-protocol-from=127.0.0.1", "--proxy-protocol-cert-cn",
		"--auth-cert=cn", "--acl-file="+acl, "--allow-anonymous", "--log-level=debug")
	startClusterNodes(t, nodes)

	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	anon := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	sensorPair, err := tls.LoadX509KeyPair(sensorCert, sensorKey)
	if err != nil {
		t.Fatal(err)
	}
	sensor := &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{sensorPair}}
	front, mutual, _ := startHAProxyTLS(t, bin, func(front, mutual string) string {
		return renderHAProxyTLS(t, nodes, front, mutual, pem, ca.file)
	}, sensor)

	// home is the node that logged id connecting from local: the
	// address HAProxy's PROXY header gave, the client's own.
	home := func(id, local string) string {
		for _, n := range nodes {
			if strings.Contains(n.b.stderr.String(), "client="+id+" remote="+local+" ") {
				return n.name
			}
		}
		return ""
	}
	// dialSpread connects count clients and waits until each one's node
	// is known; leastconn spreads connections held open over the nodes.
	dialSpread := func(addr, prefix string, count int, cfg *tls.Config) ([]*pahoClient, []string) {
		t.Helper()
		var clients []*pahoClient
		var locals, homes []string
		for i := range count {
			id := prefix + strconv.Itoa(i)
			c, local, err := dialPahoTLS(t, addr, id, cfg)
			if err != nil {
				t.Fatalf("%s through HAProxy: %v", id, err)
			}
			clients, locals = append(clients, c), append(locals, local)
		}
		waitUntil(t, 10*time.Second, "every "+prefix+" client's node logging its own address", func() bool {
			homes = homes[:0]
			for i := range clients {
				h := home(prefix+strconv.Itoa(i), locals[i])
				if h == "" {
					return false
				}
				homes = append(homes, h)
			}
			return true
		})
		return clients, homes
	}
	// apart returns a client on another node than the first one's.
	apart := func(clients []*pahoClient, homes []string) *pahoClient {
		t.Helper()
		for i, h := range homes {
			if h != homes[0] {
				return clients[i]
			}
		}
		t.Fatalf("HAProxy put every client on %s", homes[0])
		return nil
	}

	t.Run("TLS across nodes", func(t *testing.T) {
		clients, homes := dialSpread(front, "tls-", 6, anon)
		sub, pub := clients[0], apart(clients, homes)
		if got := subscribeResults(t, sub, "lb/#", "sensors/sensor-1/#"); got["lb/#"] != 1 || got["sensors/sensor-1/#"] != 0x80 {
			t.Fatalf("anonymous client's SUBACK %v, want lb/# granted and sensors/sensor-1/# refused", got)
		}
		probe(t, pub, sub, "lb/probe")
		for i := range 20 {
			pub.pub(t, "lb/"+strconv.Itoa(i), 1, false, strconv.Itoa(i))
		}
		for i, m := range collect(t, sub, 20) {
			if string(m.Payload()) != strconv.Itoa(i) {
				t.Fatalf("message %d across nodes is %q", i, m.Payload())
			}
		}
	})

	t.Run("plaintext refused", func(t *testing.T) {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		connect := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true,
			KeepAlive: 30, ClientID: []byte("plaintext")}
		if _, err := c.Write(connect.Append(nil, codec.V311)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("HAProxy kept a plaintext connection open (read %x)", got)
		}
		if len(got) > 0 && got[0]>>4 == byte(codec.CONNACK) {
			t.Fatalf("plaintext on the TLS port got a CONNACK: %x", got)
		}
		for _, n := range nodes {
			if strings.Contains(n.b.stderr.String(), "client=plaintext") {
				t.Fatalf("plaintext on the TLS port reached %s", n.name)
			}
		}
	})

	t.Run("client certificate required", func(t *testing.T) {
		if _, _, err := dialPahoTLS(t, mutual, "no-cert", anon); err == nil {
			t.Fatal("a client without a certificate got through the client-certificate frontend")
		}
		for _, n := range nodes {
			if strings.Contains(n.b.stderr.String(), "client=no-cert") {
				t.Fatalf("a client without a certificate reached %s", n.name)
			}
		}
	})

	t.Run("CN as username", func(t *testing.T) {
		clients, homes := dialSpread(mutual, "sensor-", 3, sensor)
		sub, pub := clients[0], apart(clients, homes)
		if got := subscribeResults(t, sub, "sensors/sensor-1/#", "lb/#"); got["sensors/sensor-1/#"] != 1 || got["lb/#"] != 0x80 {
			t.Fatalf("sensor-1's SUBACK %v, want its own subtree granted and lb/# refused", got)
		}
		probe(t, pub, sub, "sensors/sensor-1/probe")
		pub.pub(t, "sensors/sensor-1/temp", 1, false, "21.5")
		if m := collect(t, sub, 1)[0]; m.Topic() != "sensors/sensor-1/temp" || string(m.Payload()) != "21.5" {
			t.Fatalf("got %s %q", m.Topic(), m.Payload())
		}
	})
}

// The CN in a PROXY header is trusted from the load balancers only: the
// flag without --proxy-protocol-from stops the broker with exit code 2.
func TestProxyProtocolCertCNNeedsFrom(t *testing.T) {
	for _, extra := range [][]string{nil, {"--proxy-protocol"}} {
		args := append([]string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir(), "--proxy-protocol-cert-cn"}, extra...)
		code, out := exitCode(t, args...)
		if code != 2 || !strings.Contains(out, "--proxy-protocol-cert-cn needs --proxy-protocol-from") {
			t.Fatalf("%q: exit code %d, want 2 and the reason; output:\n%s", args, code, out)
		}
	}
}
