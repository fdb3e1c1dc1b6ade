package interlink

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testPKI is a CA that issues node certificates (ECDSA P-256) and writes
// them as PEM files.
type testPKI struct {
	t      testing.TB
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
	serial atomic.Int64
}

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{t: t, dir: t.TempDir(), cert: cert, key: key}
	p.serial.Store(1)
	p.caFile = p.write("ca.pem", "CERTIFICATE", der)
	return p
}

// node issues a certificate for a node, valid from notBefore to notAfter.
// It names no IP address: nodes do not check each other's host names.
func (p *testPKI) node(name string, notBefore, notAfter time.Time) tls.Certificate {
	p.t.Helper()
	return p.nodeFor(name, notBefore, notAfter, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

// nodeFor is node with the given extended key usages.
func (p *testPKI) nodeFor(name string, notBefore, notAfter time.Time, usage ...x509.ExtKeyUsage) tls.Certificate {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial.Add(1)), Subject: pkix.Name{CommonName: name},
		DNSNames:  []string{name + ".cluster.invalid"},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		p.t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// files issues a node certificate valid now and writes it and its key
// into dir (name.pem, name.key).
func (p *testPKI) files(dir, name string) (certFile, keyFile string) {
	p.t.Helper()
	return p.writeCert(dir, name, p.node(name, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)))
}

func (p *testPKI) writeCert(dir, name string, c tls.Certificate) (certFile, keyFile string) {
	p.t.Helper()
	kder, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		p.t.Fatal(err)
	}
	return writePEM(p.t, dir, name+".pem", "CERTIFICATE", c.Certificate[0]), writePEM(p.t, dir, name+".key", "PRIVATE KEY", kder)
}

func (p *testPKI) write(name, typ string, der []byte) string {
	return writePEM(p.t, p.dir, name, typ, der)
}

// pool is a pool holding the CA.
func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.cert)
	return pool
}

// writePEM writes a PEM file and renames it into place, as an operator
// renewing a certificate would.
func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	return path
}

// tlsConfig is testConfig with the node's certificate from p and p as the
// cluster CA.
func tlsConfig(t testing.TB, name string, p *testPKI) Config {
	t.Helper()
	c := testConfig(name)
	c.CertFile, c.KeyFile = p.files(t.TempDir(), name)
	c.CAFile = p.caFile
	return c
}

// failures reads a TLS failure counter.
func (n *Node) failures(reason string) uint64 { return n.tls.failures[reason].Get() }

// tap is a TCP proxy to a target that keeps the first bytes each way.
// Connections accepted before the target is set wait for it.
type tap struct {
	ln     net.Listener
	target string
	ready  chan struct{} // closed once target is set
	mu     sync.Mutex
	up     []byte // dialer to acceptor
	down   []byte
}

func startTap(t *testing.T) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, ready: make(chan struct{})}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
		done  = make(chan struct{})
	)
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case <-tp.ready:
				case <-done:
					c.Close()
					return
				}
				up, err := net.Dial("tcp", tp.target)
				if err != nil {
					c.Close()
					return
				}
				track(up)
				wg.Add(1)
				go func() { defer wg.Done(); tp.copy(c, up, &tp.down) }()
				tp.copy(up, c, &tp.up)
			}()
		}
	}()
	return tp
}

// setTarget sets where the tap forwards to.
func (tp *tap) setTarget(addr string) {
	tp.target = addr
	close(tp.ready)
}

func (tp *tap) copy(dst, src net.Conn, keep *[]byte) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			tp.mu.Lock()
			if len(*keep) < 4<<20 {
				*keep = append(*keep, buf[:n]...)
			}
			tp.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (tp *tap) seen() (up, down []byte) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.up), bytes.Clone(tp.down)
}

// Two nodes with certificates from the cluster CA link over TLS and
// exchange reliable and unreliable records both ways; on the wire there
// is TLS only (no interlink frame, no payload in the clear), and the
// frames inside are not sealed a second time.
func TestTLSLinkDelivers(t *testing.T) {
	pki := newTestPKI(t, "cluster CA")
	tp := startTap(t)
	ca, cb := tlsConfig(t, "a", pki), tlsConfig(t, "b", pki)
	ca.Compression, cb.Compression = CompressNone, CompressNone
	cb.Advertise = tp.ln.Addr().String() // a's lanes to b go through the tap
	ra, rb := newRecorder(), newRecorder()
	a := startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	tp.setTarget(b.Addr())
	waitUp(t, ra, "b")
	waitUp(t, rb, "a")
	waitFor(t, func() bool { return a.Members()[1].LanesUp == ca.Lanes && b.Members()[1].LanesUp == cb.Lanes })
	if a.sealed() || b.sealed() || a.links() != "tls" || b.links() != "tls" {
		t.Fatalf("links %q/%q, sealed %v/%v: want TLS without sealing", a.links(), b.links(), a.sealed(), b.sealed())
	}
	const n = 2000
	for i := range n {
		if err := a.Send("b", i%ca.Lanes, 9, body(i), i%2 == 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Send("a", i%cb.Lanes, 9, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	rb.waitCount(t, "a", n)
	ra.waitCount(t, "b", n)
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 && b.Members()[1].Queued == 0 })
	for _, c := range []struct {
		r    *recorder
		from string
	}{{rb, "a"}, {ra, "b"}} {
		c.r.mu.Lock()
		seen := make(map[uint64]bool)
		for _, rc := range c.r.got[c.from] {
			v, _ := binary.Uvarint(rc.Body)
			if rc.Kind != 9 || seen[v] || !bytes.Equal(rc.Body, body(int(v))) {
				c.r.mu.Unlock()
				t.Fatalf("record %d from %s: kind %d, seen before %v", v, c.from, rc.Kind, seen[v])
			}
			seen[v] = true
		}
		c.r.mu.Unlock()
	}
	up, down := tp.seen()
	if len(up) < 3 || up[0] != 0x16 || up[1] != 0x03 {
		t.Fatalf("the dialer's first bytes are % x, want a TLS handshake record", up[:min(len(up), 8)])
	}
	if len(up) < n*len(body(0))/2 {
		t.Fatalf("%d bytes went through the tap, fewer than the records sent on its lanes", len(up))
	}
	for _, w := range [][]byte{up, down} {
		if bytes.Contains(w, []byte(`"temp":21.5`)) || bytes.Contains(w, []byte(magic)) {
			t.Fatal("interlink bytes in the clear on a TLS link")
		}
	}
	for _, node := range []*Node{a, b} {
		for _, r := range tlsReasons {
			if got := node.failures(r); got != 0 {
				t.Errorf("%s: %d TLS handshake failures (%s)", node.Name(), got, r)
			}
		}
		if got := node.stats.badFrames.Get() + node.stats.handshakeFailures.Get(); got != 0 {
			t.Errorf("%s: %d bad frames or failed handshakes", node.Name(), got)
		}
	}
}

// noPeerUp fails if r heard of a link.
func noPeerUp(t *testing.T, r *recorder) {
	t.Helper()
	select {
	case p := <-r.up:
		t.Fatalf("linked to %s", p)
	default:
	}
}

// A node whose certificate comes from another CA cannot join: gossip
// (keyed by the shared secret) admits it, but no link comes up either
// way, each dialer refusing the other's certificate, and every refusal is
// counted.
func TestTLSForeignCARefused(t *testing.T) {
	cluster, foreign := newTestPKI(t, "cluster CA"), newTestPKI(t, "another CA")
	ca, cb := tlsConfig(t, "a", cluster), tlsConfig(t, "b", foreign)
	ra, rb := newRecorder(), newRecorder()
	a := startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	waitFor(t, func() bool {
		return a.failures(tlsUntrusted) >= 1 && b.failures(tlsUntrusted) >= 1 &&
			a.failures(tlsRefusedByPeer) >= 1 && b.failures(tlsRefusedByPeer) >= 1
	})
	if a.ml.NumMembers() != 2 {
		t.Fatalf("gossip lists %d members, want 2: the test means to show the links refuse", a.ml.NumMembers())
	}
	if err := a.Send("b", 0, 3, body(1), true); err != nil {
		t.Fatal(err)
	}
	if a.Linked("b") || b.Linked("a") {
		t.Fatal("a link came up")
	}
	noPeerUp(t, ra)
	noPeerUp(t, rb)
	if q := a.Members()[1].Queued; q != 1 || rb.count("a") != 0 {
		t.Fatalf("queued %d, delivered %d: want the record kept, not delivered", q, rb.count("a"))
	}
}

// dialOnce runs one lane's dial from n to target, as a lane would.
func dialOnce(n *Node, peerName, addr string) error {
	p := &peer{n: n, name: peerName, st: n.stats.peer(peerName)}
	p.mu.addr = addr
	l := &lane{p: p, wake: make(chan struct{}, 1)}
	conn, _, err := l.dial()
	if err == nil {
		conn.Close()
	}
	return err
}

// The acceptor checks the dialer's certificate itself: a dialer that
// trusts the cluster CA but holds a certificate from another is refused
// by the acceptor, which says why in a TLS alert that the dialer counts.
func TestTLSAcceptorRefusesForeignCertificate(t *testing.T) {
	cluster, foreign := newTestPKI(t, "cluster CA"), newTestPKI(t, "another CA")
	a := startNode(t, tlsConfig(t, "a", cluster), newRecorder())
	both := filepath.Join(t.TempDir(), "both.pem")
	pems := [][]byte{}
	for _, f := range []string{cluster.caFile, foreign.caFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pems = append(pems, b)
	}
	if err := os.WriteFile(both, bytes.Join(pems, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	cb := tlsConfig(t, "b", foreign)
	cb.CAFile = both
	b, err := New(cb, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	err = dialOnce(b, "a", a.Addr())
	if err == nil || !strings.Contains(err.Error(), "remote error") {
		t.Fatalf("dial: %v, want the acceptor's alert", err)
	}
	waitFor(t, func() bool { return a.failures(tlsUntrusted) == 1 })
	if got := b.failures(tlsRefusedByPeer); got != 1 {
		t.Fatalf("dialer counted %d refusals by the peer, want 1", got)
	}
	if a.pending.Load() != 0 {
		waitFor(t, func() bool { return a.pending.Load() == 0 })
	}
}

// A node without TLS cannot link to one with it, either way round, and
// both count the attempts; a plain HELLO sent to a TLS node gets no
// WELCOME.
func TestTLSPlaintextPeerRefused(t *testing.T) {
	pki := newTestPKI(t, "cluster CA")
	ca, cb := tlsConfig(t, "a", pki), testConfig("b") // b: the same secret, no certificate
	ra, rb := newRecorder(), newRecorder()
	a := startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	waitFor(t, func() bool { return a.failures(tlsNotTLS) >= 1 && b.stats.handshakeFailures.Get() >= 1 })
	if a.Linked("b") || b.Linked("a") {
		t.Fatal("a link came up")
	}
	noPeerUp(t, ra)
	noPeerUp(t, rb)

	conn, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h := hello{node: "plain", epoch: 1}
	if _, err := conn.Write(h.append(nil)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %v, want the acceptor to close", err)
	}
	if typ, _, _, err := readFrame(bufio.NewReader(bytes.NewReader(got)), nil, 4096); err == nil && typ == frameWelcome {
		t.Fatal("a plain HELLO got a WELCOME from a TLS node")
	}
}

// expiredMaterial is TLS material whose certificate (from p) expired an
// hour ago. New refuses such files, so tests put it in place themselves.
func expiredMaterial(t *testing.T, p *testPKI, name string) *tlsMaterial {
	t.Helper()
	return newTLSMaterial(p.node(name, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)), p.pool())
}

// An expired certificate is refused on either end of a link, and a node
// does not start with one.
func TestTLSExpiredCertificateRefused(t *testing.T) {
	pki := newTestPKI(t, "cluster CA")
	t.Run("dialer's", func(t *testing.T) {
		a := startNode(t, tlsConfig(t, "a", pki), newRecorder())
		b, err := New(tlsConfig(t, "b", pki), newRecorder())
		if err != nil {
			t.Fatal(err)
		}
		b.tls.cur.Store(expiredMaterial(t, pki, "b"))
		if err := dialOnce(b, "a", a.Addr()); err == nil {
			t.Fatal("linked with an expired certificate")
		}
		waitFor(t, func() bool { return a.failures(tlsExpired) == 1 })
		if got := b.failures(tlsRefusedByPeer); got != 1 {
			t.Fatalf("dialer counted %d refusals by the peer, want 1", got)
		}
	})
	t.Run("acceptor's", func(t *testing.T) {
		a := startNode(t, tlsConfig(t, "a", pki), newRecorder())
		a.tls.cur.Store(expiredMaterial(t, pki, "a"))
		b, err := New(tlsConfig(t, "b", pki), newRecorder())
		if err != nil {
			t.Fatal(err)
		}
		err = dialOnce(b, "a", a.Addr())
		if err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("dial: %v, want the acceptor's certificate refused as expired", err)
		}
		if got := b.failures(tlsExpired); got != 1 {
			t.Fatalf("dialer counted %d expired certificates, want 1", got)
		}
		waitFor(t, func() bool { return a.failures(tlsRefusedByPeer) == 1 })
	})
	t.Run("own", func(t *testing.T) {
		c := tlsConfig(t, "a", pki)
		c.CertFile, c.KeyFile = pki.writeCert(t.TempDir(), "a", pki.node("a", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)))
		if _, err := New(c, newRecorder()); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("New with an expired certificate: %v", err)
		}
	})
}

// The handshake deadline and the pending-handshake cap cover the TLS
// handshake: a connection that never finishes it is closed at the
// deadline and counted, and while the pending slots are held by such
// connections new ones are closed at once.
func TestTLSHandshakeBounded(t *testing.T) {
	pki := newTestPKI(t, "cluster CA")
	c := tlsConfig(t, "a", pki)
	c.HandshakeTimeout = 300 * time.Millisecond
	a := startNode(t, c, newRecorder())
	// Nothing said, and the first bytes of a ClientHello.
	for _, say := range [][]byte{nil, {0x16, 0x03, 0x01, 0x02, 0x00, 0x01}} {
		conn, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := conn.Write(say); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(conn)
		took := time.Since(start)
		conn.Close()
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read %v, want the acceptor to close", err)
		}
		if took < 250*time.Millisecond || took > 5*time.Second {
			t.Fatalf("closed after %s, want about the 300ms deadline", took)
		}
	}
	waitFor(t, func() bool { return a.failures(tlsTimeout) == 2 && a.pending.Load() == 0 })

	const limit = 2
	c = tlsConfig(t, "c", pki)
	c.PendingHandshakes = limit
	c.HandshakeTimeout = 30 * time.Second
	n := startNode(t, c, newRecorder())
	for range limit {
		conn, err := net.Dial("tcp", n.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
	}
	waitFor(t, func() bool { return n.pending.Load() == limit })
	conn, err := net.Dial("tcp", n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection over the cap: read %v, want a close", err)
	}
	if got := n.stats.handshakesShed.Get(); got != 1 {
		t.Fatalf("%d connections refused over the cap, want 1", got)
	}
}

// The three files go together, are loaded and checked before a node
// starts, and each problem is named.
func TestTLSConfigChecked(t *testing.T) {
	pki, foreign := newTestPKI(t, "cluster CA"), newTestPKI(t, "another CA")
	good := tlsConfig(t, "a", pki)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fcert, fkey := foreign.files(dir, "f")
	scert, skey := pki.writeCert(dir, "s", pki.nodeFor("s", time.Now().Add(-time.Hour), time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth))
	for _, c := range []struct {
		name   string
		change func(*Config)
		want   []string
	}{
		{"cert only", func(c *Config) { c.KeyFile, c.CAFile = "", "" }, []string{"--cluster-tls-key and --cluster-tls-ca missing"}},
		{"no CA", func(c *Config) { c.CAFile = "" }, []string{"--cluster-tls-ca missing"}},
		{"key only", func(c *Config) { c.CertFile, c.CAFile = "", "" }, []string{"--cluster-tls-cert and --cluster-tls-ca missing"}},
		{"missing cert", func(c *Config) { c.CertFile = "/nonexistent/node.pem" }, []string{"--cluster-tls-cert", "/nonexistent/node.pem"}},
		{"missing CA", func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, []string{"--cluster-tls-ca", "/nonexistent/ca.pem"}},
		{"CA without certificates", func(c *Config) { c.CAFile = junk }, []string{"--cluster-tls-ca", junk, "no PEM certificate"}},
		{"key of another certificate", func(c *Config) { c.KeyFile = fkey }, []string{"--cluster-tls-key", fkey}},
		{"certificate of another CA", func(c *Config) { c.CertFile, c.KeyFile = fcert, fkey }, []string{fcert, "does not verify", "unknown authority"}},
		{"server authentication only", func(c *Config) { c.CertFile, c.KeyFile = scert, skey }, []string{scert, "clientAuth", "key usage"}},
		{"good", func(*Config) {}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := good
			c.change(&cfg)
			err := cfg.CheckTLS()
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
			if _, nerr := New(cfg, newRecorder()); nerr == nil {
				t.Error("New accepted what CheckTLS refused")
			}
		})
	}
}

// ReloadTLS gives the links made after it the new files and leaves the
// links up alone; files that do not load leave the old material in place.
func TestTLSReload(t *testing.T) {
	old, renewed := newTestPKI(t, "old CA"), newTestPKI(t, "new CA")
	ca, cb := tlsConfig(t, "a", old), tlsConfig(t, "b", old)
	ca.Lanes, cb.Lanes = 1, 1
	// Each node's CA file is its own copy, rewritten below.
	for _, c := range []*Config{&ca, &cb} {
		c.CAFile = writePEM(t, t.TempDir(), "ca.pem", "CERTIFICATE", old.cert.Raw)
	}
	a, _, b, rb := pair(t, ca, cb)

	// Files that do not load: an error, and the links still come up.
	before := a.tls.cur.Load()
	if err := os.WriteFile(ca.CertFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.ReloadTLS(); err == nil || !strings.Contains(err.Error(), ca.CertFile) {
		t.Fatalf("reload of a broken file: %v", err)
	}
	if a.tls.cur.Load() != before {
		t.Fatal("a failed reload replaced the material")
	}

	// a moves to the new CA; b still trusts only the old one. The link up
	// stays; a new connection fails.
	renewed.writeCert(filepath.Dir(ca.CertFile), "a", renewed.node("a", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)))
	writePEM(t, filepath.Dir(ca.CAFile), "ca.pem", "CERTIFICATE", renewed.cert.Raw)
	if err := a.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if !a.Linked("b") {
		t.Fatal("the reload cut a link")
	}
	a.mu.Lock()
	a.peers["b"].lanes[0].mu.Lock()
	conn := a.peers["b"].lanes[0].mu.conn
	a.peers["b"].lanes[0].mu.Unlock()
	a.mu.Unlock()
	conn.Close()
	// a's dialer refuses b's certificate from the old CA before it shows
	// its own; b hears why in an alert.
	waitFor(t, func() bool { return a.failures(tlsUntrusted) >= 1 && b.failures(tlsRefusedByPeer) >= 1 })
	if a.Linked("b") {
		t.Fatal("a linked to b with a certificate b does not trust")
	}

	// b moves too: the link comes back and carries records.
	renewed.writeCert(filepath.Dir(cb.CertFile), "b", renewed.node("b", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)))
	writePEM(t, filepath.Dir(cb.CAFile), "ca.pem", "CERTIFICATE", renewed.cert.Raw)
	if err := b.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if err := a.Send("b", 0, 3, body(7), true); err != nil {
		t.Fatal(err)
	}
	rb.waitCount(t, "a", 1)
	waitFor(t, func() bool { return a.Linked("b") && a.Members()[1].Queued == 0 })
}

// A link over TLS is replaced before it writes more records than one set
// of keys may protect; the lane carries on over the new connection and
// every reliable record arrives once, in order.
func TestTLSLinkRenewsKeys(t *testing.T) {
	pki := newTestPKI(t, "cluster CA")
	ca, cb := tlsConfig(t, "a", pki), tlsConfig(t, "b", pki)
	ca.Lanes, cb.Lanes = 1, 1
	ra, rb := newRecorder(), newRecorder()
	a, err := New(ca, ra)
	if err != nil {
		t.Fatal(err)
	}
	a.tls.recordLimit = 5
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	waitUp(t, ra, "b")
	// Twenty chunks, each waited for: at least twenty frames, so at
	// least twenty records, four links' worth.
	const chunks, per = 20, 150
	const n = chunks * per
	for c := range chunks {
		for i := c * per; i < (c+1)*per; i++ {
			if err := a.Send("b", 0, 3, body(i), true); err != nil {
				t.Fatal(err)
			}
		}
		rb.waitCount(t, "a", (c+1)*per)
	}
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 })
	if got := a.tls.rekeys.Get(); got < 3 {
		t.Fatalf("the link was replaced %d times, want at least 3", got)
	}
	rb.mu.Lock()
	defer rb.mu.Unlock()
	for i, r := range rb.got["a"] {
		if v, _ := binary.Uvarint(r.Body); v != uint64(i) {
			t.Fatalf("record %d is %d", i, v)
		}
	}
	if got := len(rb.got["a"]); got != n {
		t.Fatalf("%d records, want %d", got, n)
	}
	if got := b.failures(tlsOther) + a.failures(tlsOther) + a.stats.badFrames.Get() + b.stats.badFrames.Get(); got != 0 {
		t.Fatalf("%d failures while renewing", got)
	}
	for size, want := range map[int]int64{0: 0, 1: 1, tlsMaxPlain: 1, tlsMaxPlain + 1: 2, 64 << 10: 4} {
		if got := tlsRecords(size); got != want {
			t.Errorf("a write of %d bytes is %d records, want %d", size, got, want)
		}
	}
}
