package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// Transports. A plain TCP client lives on a gnet event loop (client.go).
// A client over TLS, WebSocket or both is served by a goroutine of its
// own instead: crypto/tls needs a goroutine that blocks in Read, and the
// event loops never block. The goroutine makes the handshakes (TLS, then
// the HTTP upgrade), writes CONNECT, and then reads: it decrypts, takes
// the MQTT bytes out of the broker's WebSocket frames (ws.go) and hands
// them to the same decoder as the event loops (client.input). Writes go
// straight to the connection from whichever goroutine has something to
// send (a publisher, the pacer, the reader's acknowledgements): tls.Conn
// and the socket serialise whole writes, and a WebSocket frame is built
// under the stream's lock and written in one call.
//
// The dial itself (the TCP connect) happens in the caller, as for plain
// clients, so that the conn scenario's window and rate pace connects the
// same way for every transport; the handshakes run in the client's
// goroutine, so that up to the window's worth of them are under way at
// once.

// Transport is how clients reach the broker. The zero value is MQTT over
// plain TCP.
type Transport struct {
	// TLS dials with TLS. The broker's certificate is verified against
	// the CA certificates in CAFile (PEM), or not at all with
	// InsecureSkipVerify; one of the two is required.
	TLS                bool
	CAFile             string
	InsecureSkipVerify bool
	// CertFile and KeyFile (PEM, both or neither) are the client
	// certificate every client presents.
	CertFile, KeyFile string
	// ServerName is the name the broker's certificate must hold, also
	// sent as SNI; empty: the host of the address dialled.
	ServerName string
	// Groups are the key exchange groups offered, preferred first, by
	// name (X25519, P256, P384, P521, X25519MLKEM768, SecP256r1MLKEM768,
	// SecP384r1MLKEM1024); empty: crypto/tls's defaults.
	Groups []string
	// Resume lets a connection resume the TLS session of an earlier one
	// from its ticket. Without it there is no session cache, and every
	// connection makes a full handshake.
	Resume bool
	// WS speaks MQTT over WebSocket: an HTTP upgrade to WSPath (default
	// /mqtt) asking for subprotocol mqtt, then masked binary frames. With
	// TLS, the upgrade runs over TLS (wss).
	WS     bool
	WSPath string
}

// stream reports whether clients need a goroutine each (stream.go's
// path) rather than an event loop.
func (t *Transport) stream() bool { return t.TLS || t.WS }

// Name is the transport's short name: tcp, tls, ws or wss.
func (t *Transport) Name() string {
	switch {
	case t.TLS && t.WS:
		return "wss"
	case t.TLS:
		return "tls"
	case t.WS:
		return "ws"
	}
	return "tcp"
}

// tlsGroups are the key exchange groups --tls-groups may name.
var tlsGroups = map[string]tls.CurveID{
	"X25519":             tls.X25519,
	"P256":               tls.CurveP256,
	"P384":               tls.CurveP384,
	"P521":               tls.CurveP521,
	"X25519MLKEM768":     tls.X25519MLKEM768,
	"SECP256R1MLKEM768":  tls.SecP256r1MLKEM768,
	"SECP384R1MLKEM1024": tls.SecP384r1MLKEM1024,
}

// groupID looks a group up by name, in any case, with or without a
// "Curve" prefix or a dash (P-256, CurveP256).
func groupID(name string) (tls.CurveID, bool) {
	n := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(name), "-", ""))
	n = strings.TrimPrefix(n, "CURVE")
	for k, id := range tlsGroups {
		if strings.ToUpper(k) == n {
			return id, true
		}
	}
	return 0, false
}

// check validates t without reading any file.
func (t *Transport) check() error {
	if !t.TLS {
		var set []string
		for _, f := range []struct {
			name string
			on   bool
		}{{"--ca", t.CAFile != ""}, {"--insecure-skip-verify", t.InsecureSkipVerify}, {"--cert", t.CertFile != ""},
			{"--key", t.KeyFile != ""}, {"--tls-server-name", t.ServerName != ""}, {"--tls-groups", len(t.Groups) > 0},
			{"--tls-resume", t.Resume}} {
			if f.on {
				set = append(set, f.name)
			}
		}
		switch len(set) {
		case 0:
		case 1:
			return fmt.Errorf("%s applies only with --tls", set[0])
		default:
			return fmt.Errorf("%s apply only with --tls", strings.Join(set, ", "))
		}
	}
	if t.TLS && t.CAFile == "" && !t.InsecureSkipVerify {
		return errors.New("--tls needs --ca FILE, the CA certificates that signed the broker's certificate, or --insecure-skip-verify")
	}
	if t.TLS && t.CAFile != "" && t.InsecureSkipVerify {
		return errors.New("--ca and --insecure-skip-verify contradict each other: give one")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return errors.New("--cert and --key go together: the client certificate and its private key")
	}
	for _, g := range t.Groups {
		if _, ok := groupID(g); !ok {
			names := make([]string, 0, len(tlsGroups))
			for k := range tlsGroups {
				names = append(names, k)
			}
			slices.Sort(names)
			return fmt.Errorf("--tls-groups: unknown group %q (want %s)", g, strings.Join(names, ", "))
		}
	}
	if t.WSPath != "" && !t.WS {
		return errors.New("--ws-path applies only with --ws")
	}
	if t.WS && t.WSPath != "" && !strings.HasPrefix(t.WSPath, "/") {
		return fmt.Errorf("--ws-path must start with /, got %q", t.WSPath)
	}
	return nil
}

// dialer opens the clients' stream connections and keeps track of them,
// so that the run can close them all when it ends.
type dialer struct {
	t      Transport
	base   *tls.Config            // nil without TLS
	byAddr map[string]*tls.Config // base with the address's server name
	roots  *x509.CertPool
	// verified holds the broker certificates already verified, by server
	// name and DER bytes (verify).
	verified sync.Map

	resumed atomic.Int64
	desc    atomic.Pointer[string]

	mu      sync.Mutex
	open    map[*stream]struct{}
	stopped bool
	wg      sync.WaitGroup
}

// newDialer builds the TLS configuration of t for the addresses clients
// dial, reading the CA, certificate and key files.
func newDialer(t Transport, addrs []string) (*dialer, error) {
	if t.WS && t.WSPath == "" {
		t.WSPath = "/mqtt"
	}
	d := &dialer{t: t, open: map[*stream]struct{}{}}
	if !t.TLS {
		return d, nil
	}
	d.base = &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read the CA file: %w", err)
		}
		d.roots = x509.NewCertPool()
		if !d.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the CA file %s holds no PEM certificate", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cannot load the client certificate %s and key %s: %w", t.CertFile, t.KeyFile, err)
		}
		d.base.Certificates = []tls.Certificate{cert}
	}
	for _, g := range t.Groups {
		id, _ := groupID(g)
		d.base.CurvePreferences = append(d.base.CurvePreferences, id)
	}
	// Without a session cache the client offers no resumption at all (no
	// session ticket extension, no PSK modes), so the broker issues no
	// tickets either: each connection is a full handshake and nothing
	// more.
	if t.Resume {
		d.base.ClientSessionCache = tls.NewLRUClientSessionCache(1024)
	}
	d.byAddr = map[string]*tls.Config{}
	for _, a := range addrs {
		if _, ok := d.byAddr[a]; ok {
			continue
		}
		name := t.ServerName
		if name == "" {
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				return nil, fmt.Errorf("address %q: %w", a, err)
			}
			name = host
		}
		c := d.base.Clone()
		c.ServerName = name
		// The chain is verified by verify, once per certificate; the
		// handshake signature is still checked on every connection.
		c.InsecureSkipVerify = true
		if !t.InsecureSkipVerify {
			c.VerifyConnection = d.verify(name)
		}
		d.byAddr[a] = c
	}
	return d, nil
}

// verify checks the broker's certificate chain against the CA file and
// the server name, once per distinct certificate: later connections that
// present the same bytes are accepted without verifying the chain again.
// Verifying the chain costs a client about as much CPU as the broker's
// whole side of an ECDSA handshake, and the generator should spend its
// CPU on the connections, not on proving the same certificate ten
// thousand times. crypto/tls still checks on every connection that the
// broker signed the handshake with the certificate's key (CertificateVerify
// in TLS 1.3, ServerKeyExchange in 1.2), so each connection still proves
// that the broker holds the key.
func (d *dialer) verify(name string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the broker sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		key := name + "\x00" + string(leaf.Raw)
		if _, ok := d.verified.Load(key); ok {
			return nil
		}
		opts := x509.VerifyOptions{Roots: d.roots, DNSName: name, Intermediates: x509.NewCertPool()}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := leaf.Verify(opts); err != nil {
			return fmt.Errorf("the broker's certificate: %w", err)
		}
		d.verified.Store(key, true)
		return nil
	}
}

// describe records what the first established connection negotiated.
func (d *dialer) describe(cs *tls.ConnectionState) {
	if d.desc.Load() != nil {
		return
	}
	s := d.t.Name()
	if d.t.WS {
		s += " " + d.t.WSPath
	}
	if cs != nil {
		s += fmt.Sprintf(": %s, %s, %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.CurveID)
		if d.t.Resume {
			s += ", resumption on"
		} else {
			s += ", full handshakes"
		}
	}
	d.desc.CompareAndSwap(nil, &s)
}

// description says what the clients negotiated ("" before any
// connection was established).
func (d *dialer) description() string {
	if p := d.desc.Load(); p != nil {
		return *p
	}
	return ""
}

// dial connects c to addr and starts its goroutine, which makes the
// handshakes, sends connect and reads until the connection ends.
func (d *dialer) dial(c *client, addr string, connect []byte) error {
	raw, err := (&net.Dialer{Timeout: setupTimeout}).Dial("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot connect %s: %w", c.id, err)
	}
	s := &stream{raw: raw, ws: d.t.WS}
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		_ = raw.Close()
		return fmt.Errorf("cannot connect %s: the run is ending", c.id)
	}
	d.open[s] = struct{}{}
	d.wg.Add(1)
	d.mu.Unlock()
	c.stream = s
	go func() {
		defer d.wg.Done()
		err := c.serveStream(d, addr, connect)
		_ = raw.Close()
		d.mu.Lock()
		delete(d.open, s)
		d.mu.Unlock()
		c.streamClosed(err)
	}()
	return nil
}

// open makes s's handshakes: TLS, then the WebSocket upgrade. It returns
// any bytes the broker sent after its upgrade answer.
func (s *stream) open(d *dialer, addr string) ([]byte, error) {
	s.nc = s.raw
	if !d.t.TLS && !d.t.WS {
		return nil, nil
	}
	_ = s.raw.SetDeadline(time.Now().Add(setupTimeout))
	defer func() { _ = s.raw.SetDeadline(time.Time{}) }()
	var cs *tls.ConnectionState
	if d.t.TLS {
		tc := tls.Client(s.raw, d.byAddr[addr])
		if err := tc.HandshakeContext(context.Background()); err != nil {
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		st := tc.ConnectionState()
		if st.DidResume {
			d.resumed.Add(1)
		}
		cs = &st
		s.nc = tc
	}
	var rest []byte
	if d.t.WS {
		scheme := "ws"
		if d.t.TLS {
			scheme = "wss"
		}
		u := &url.URL{Scheme: scheme, Host: addr, Path: d.t.WSPath}
		br, hs, err := ws.Dialer{Protocols: []string{"mqtt"}}.Upgrade(s.nc, u)
		if err != nil {
			return nil, fmt.Errorf("WebSocket upgrade to %s: %w", u, err)
		}
		if br != nil {
			// The broker wrote past its answer: those bytes are frames.
			rest, _ = br.Peek(br.Buffered())
			rest = append([]byte(nil), rest...)
			ws.PutReader(br)
		}
		if hs.Protocol != "mqtt" {
			return nil, fmt.Errorf("WebSocket upgrade to %s: the broker chose subprotocol %q, not mqtt", u, hs.Protocol)
		}
	}
	d.describe(cs)
	return rest, nil
}

// stop closes every stream connection and waits for their goroutines.
func (d *dialer) stop() {
	d.mu.Lock()
	d.stopped = true
	for s := range d.open {
		_ = s.raw.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}
