package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// testCA issues certificates for a test (ECDSA P-256) and writes them as
// PEM files into dir.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Gannet Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{t: t, dir: t.TempDir(), cert: cert, key: key}
	ca.file = ca.write("ca.pem", "CERTIFICATE", der)
	return ca
}

// issue writes a certificate (name.pem) and its key (name.key): a server
// certificate for localhost and 127.0.0.1, or a client certificate.
func (ca *testCA) issue(name, cn string, serial int64, client bool) (certFile, keyFile string) {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tmpl.DNSNames, tmpl.IPAddresses = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.write(name+".pem", "CERTIFICATE", der), ca.write(name+".key", "PRIVATE KEY", kder)
}

func (ca *testCA) write(name, typ string, der []byte) string {
	ca.t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		ca.t.Fatal(err)
	}
	return path
}

// startTLSGannet runs the binary with a TLS listener on a free port as
// well, and returns it and the TLS listener's port.
func startTLSGannet(t *testing.T, args ...string) (*broker, string) {
	t.Helper()
	var tlsAddr string
	b := startGannetArgs(t, func(int) []string {
		tlsAddr = freeAddr(t)
		return append([]string{"--tls-listen=" + tlsAddr}, args...)
	})
	_, port, _ := net.SplitHostPort(tlsAddr)
	return b, port
}

// mosquitto runs a Mosquitto client to completion and returns its output.
func mosquitto(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	return string(out), err
}

// mosquittoSub is mosquitto_sub running in the background.
type mosquittoSub struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

// startSub starts mosquitto_sub and returns once the broker counts one
// more subscription.
func startSub(t *testing.T, b *broker, args ...string) *mosquittoSub {
	t.Helper()
	before := metric(t, b, "gannet_subscriptions")
	s := &mosquittoSub{out: &lockedBuffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command("mosquitto_sub", append(args, "-W", "30")...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() { _ = s.cmd.Process.Kill() })
	waitUntil(t, 10*time.Second, "mosquitto_sub subscribed", func() bool {
		return metric(t, b, "gannet_subscriptions") != before
	})
	return s
}

// wait returns mosquitto_sub's output once it exits.
func (s *mosquittoSub) wait(t *testing.T) string {
	t.Helper()
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("mosquitto_sub: %v\n%s", err, s.out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mosquitto_sub still running after 30s:\n%s", s.out.String())
	}
	return s.out.String()
}

// metric returns the value of the series named name from /metrics, or
// "" when there is none.
func metric(t *testing.T, b *broker, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + b.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// Debian's mosquitto_pub and mosquitto_sub talk to the real binary over
// TLS (--cafile) and mutual TLS (--cert, --key): the client certificate's
// CN is the username the ACL applies to, a client without a certificate
// is refused, and SIGHUP loads a new server certificate without
// disconnecting anyone.
func TestTLSWithMosquittoClients(t *testing.T) {
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian package mosquitto-clients)", tool)
		}
	}
	ca := newTestCA(t)
	serverCert, serverKey := ca.issue("server", "localhost", 100, false)
	clientCert, clientKey := ca.issue("sensor-1", "sensor-1", 101, true)

	t.Run("TLS", func(t *testing.T) {
		b, port := startTLSGannet(t, "--tls-cert="+serverCert, "--tls-key="+serverKey)
		_, plainPort, _ := net.SplitHostPort(b.mqtt)
		sub := startSub(t, b, "-h", "localhost", "-p", port, "--cafile", ca.file, "-t", "t/#", "-C", "2", "-v")
		if out, err := mosquitto(t, "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "--cafile", ca.file, "-t", "t/tls", "-m", "over TLS"); err != nil {
			t.Fatalf("mosquitto_pub over TLS: %v\n%s", err, out)
		}
		if out, err := mosquitto(t, "mosquitto_pub", "-h", "127.0.0.1", "-p", plainPort, "-t", "t/plain", "-m", "over TCP"); err != nil {
			t.Fatalf("mosquitto_pub over TCP: %v\n%s", err, out)
		}
		if got, want := sub.wait(t), "t/tls over TLS\nt/plain over TCP\n"; got != want {
			t.Fatalf("mosquitto_sub over TLS got %q, want %q", got, want)
		}
	})

	t.Run("mutual TLS", func(t *testing.T) {
		acl := filepath.Join(ca.dir, "acl")
		if err := os.WriteFile(acl, []byte("user sensor-1\ntopic readwrite sensors/sensor-1/#\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		b, port := startTLSGannet(t, "--tls-cert="+serverCert, "--tls-key="+serverKey, "--tls-client-ca="+ca.file,
			"--auth-cert=cn", "--acl-file="+acl)
		_, plainPort, _ := net.SplitHostPort(b.mqtt)
		withCert := []string{"-h", "127.0.0.1", "-p", port, "--cafile", ca.file, "--cert", clientCert, "--key", clientKey}
		sub := startSub(t, b, append(withCert, "-t", "sensors/sensor-1/#", "-C", "2", "-v")...)
		if out, err := mosquitto(t, "mosquitto_pub", append(withCert, "-t", "sensors/sensor-1/temp", "-m", "21.5")...); err != nil {
			t.Fatalf("mosquitto_pub with a certificate: %v\n%s", err, out)
		}

		// No certificate on the TLS port, or the plain port: refused.
		if out, err := mosquitto(t, "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "--cafile", ca.file, "-t", "sensors/sensor-1/temp", "-m", "x"); err == nil {
			t.Fatalf("mosquitto_pub without a certificate got in:\n%s", out)
		}
		if out, err := mosquitto(t, "mosquitto_pub", "-h", "127.0.0.1", "-p", plainPort, "-t", "sensors/sensor-1/temp", "-m", "x"); err == nil {
			t.Fatalf("mosquitto_pub on the plain port got in:\n%s", out)
		}
		waitUntil(t, 10*time.Second, "the refusal counted", func() bool {
			return metric(t, b, `gannet_tls_handshake_failures_total{reason="no_certificate"}`) == "1"
		})

		// SIGHUP: a new server certificate for new handshakes; the
		// subscriber stays connected.
		ca.issue("server", "localhost", 200, false)
		if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, "the new certificate loaded", func() bool {
			return strings.Contains(b.stderr.String(), "TLS certificate loaded") && strings.Contains(b.stderr.String(), "serial=c8")
		})
		cfg := &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "localhost",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				c, err := tls.LoadX509KeyPair(clientCert, clientKey)
				return &c, err
			}}
		cfg.RootCAs.AddCert(ca.cert)
		c, err := tls.Dial("tcp", "127.0.0.1:"+port, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if serial := c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(); serial != 200 {
			t.Errorf("after SIGHUP a new handshake sees serial %d, want 200", serial)
		}
		_ = c.Close()
		if out, err := mosquitto(t, "mosquitto_pub", append(withCert, "-t", "sensors/sensor-1/temp", "-m", "22.0")...); err != nil {
			t.Fatalf("mosquitto_pub after SIGHUP: %v\n%s", err, out)
		}
		if got, want := sub.wait(t), "sensors/sensor-1/temp 21.5\nsensors/sensor-1/temp 22.0\n"; got != want {
			t.Fatalf("mosquitto_sub got %q, want %q", got, want)
		}
	})
}

// Bad TLS settings stop the binary with exit code 2 and a message naming
// the flag or file, before anything listens.
func TestTLSBadFlagsExitTwo(t *testing.T) {
	ca := newTestCA(t)
	cert, key := ca.issue("server", "localhost", 100, false)
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir()}
	tlsOn := []string{"--tls-listen=127.0.0.1:0", "--tls-cert=" + cert, "--tls-key=" + key}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-listen=127.0.0.1:0"}, "--tls-cert"},
		{[]string{"--tls-cert=" + cert}, "--tls-listen"},
		{append(slices.Clone(tlsOn), "--tls-client-auth=maybe"), "--tls-client-auth"},
		{append(slices.Clone(tlsOn), "--tls-client-auth=require"), "--tls-client-ca"},
		{append(slices.Clone(tlsOn), "--tls-min-version=1.1"), "--tls-min-version"},
		{append(slices.Clone(tlsOn), "--tls-handshake-timeout=0s"), "--tls-handshake-timeout"},
		{append(slices.Clone(tlsOn), "--tls-client-ca=/nonexistent/ca.pem"), "/nonexistent/ca.pem"},
		{[]string{"--tls-listen=127.0.0.1:0", "--tls-cert=/nonexistent/cert.pem", "--tls-key=" + key}, "/nonexistent/cert.pem"},
		{[]string{"--tls-listen=127.0.0.1:0", "--tls-cert=" + key, "--tls-key=" + cert}, "certificate"},
		{[]string{"--proxy-protocol-from=10.0.0.0/8,nonsense"}, "nonsense"},
		{[]string{"--wss-listen=127.0.0.1:0"}, "--wss-listen needs --tls-cert"},
		{[]string{"--wss-listen=nonsense", "--tls-cert=" + cert, "--tls-key=" + key}, "--wss-listen must be host:port"},
		{[]string{"--http-listen=127.0.0.1:0", "--http-tls-cert=" + cert}, "--http-tls-key"},
		{[]string{"--http-tls-cert=" + cert, "--http-tls-key=" + key}, "--http-tls-cert needs --http-listen"},
		{[]string{"--http-listen=127.0.0.1:0", "--http-tls-cert=" + key, "--http-tls-key=" + cert}, "HTTP listener"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, out := exitCode(t, append(slices.Clone(safe), c.args...)...)
			if code != 2 || !strings.Contains(out, c.want) {
				t.Fatalf("exit code %d, want 2 with %q in:\n%s", code, c.want, out)
			}
		})
	}
}

// A broker killed with kill -9 leaves its TLS listener's socket in the
// data directory; the next one on the same directory serves TLS.
func TestTLSAfterKill9(t *testing.T) {
	ca := newTestCA(t)
	cert, key := ca.issue("server", "localhost", 100, false)
	dir := t.TempDir()
	args := []string{"--tls-cert=" + cert, "--tls-key=" + key, "--data-dir=" + dir}
	cfg := &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "localhost"}
	cfg.RootCAs.AddCert(ca.cert)
	for i := range 2 {
		b, port := startTLSGannet(t, args...)
		c, err := tls.Dial("tcp", "127.0.0.1:"+port, cfg)
		if err != nil {
			t.Fatalf("broker %d: %v", i, err)
		}
		mc := &mqttConn{t: t, c: c, r: bufio.NewReader(c), v: codec.V311}
		mc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, KeepAlive: 30, ClientID: []byte("k")})
		if p, err := mc.read(); err != nil || p.(*codec.Connack).Code != codec.Success {
			t.Fatalf("broker %d: %v, %v; want CONNACK", i, p, err)
		}
		_ = c.Close()
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
}
