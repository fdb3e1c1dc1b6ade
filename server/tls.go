package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// MQTT over TLS (--tls-listen), and MQTT over WebSocket over TLS
// (--wss-listen), which is the same up to the event loop: there, a
// connection from the WebSocket listener is a WebSocket connection
// (ws.go), as one from --ws-listen is.
//
// crypto/tls wants a goroutine that blocks in Read and Write, and gnet's
// event loops never block; but only the handshake needs crypto/tls's
// machinery (certificates, verification, key exchange, tickets), and a
// TLS 1.3 record layer is small. So crypto/tls runs the handshake on a
// goroutine, and a TLS 1.3 connection is then served on an event loop
// like a plain one, its records opened and sealed there (tlsrec.go):
//
//	client ─TCP/TLS 1.3─ event loop (client, as on :1883, behind the record layer)
//
// A Go listener accepts; a goroutine reads the PROXY header where one is
// expected and runs the handshake under a deadline, with at most
// MaxHandshakes of them at once (the listener accepts no more until one
// ends: what a client may cost before it has proved anything is bounded).
// Three things let the loop take over where crypto/tls stops:
//
//   - Nothing past the handshake is read into user space: the
//     connection crypto/tls reads (tlsPeer) returns no byte past the end
//     of the TLS record being read, and crypto/tls asks for a record's
//     header, then for its body. Whatever the client sends after its
//     Finished stays in the kernel for the loop.
//   - Each handshake gets its own tls.Config (a clone, in
//     GetConfigForClient) whose key log hands over the client's and the
//     server's application traffic secrets; key and iv follow from them
//     (RFC 8446 7.3).
//   - Sequence numbers: the client's application records start at 0 (its
//     Finished was the last record read). crypto/tls may have sealed
//     records under the server's application key during the handshake
//     (session tickets, sent with the Finished, or after the client's
//     certificate when one is asked for): what it writes is kept and
//     counted, and the loop goes on from there.
//
// The listener then hands the socket to an event loop with
// EventLoop.Enroll (gnet duplicates the descriptor; Go's is closed,
// crypto/tls's state dropped), picking the loops in turn itself. gnet
// offers no list of its loops: Start learns them by connecting through
// the engine's unix socket (below) until a connection has landed on each
// (probeLoops). OnOpen finds the tlsConn in the connection's context,
// with the client's address and certificate names; from there on, past
// the record layer, everything (keepalive, limits, slow receivers,
// authentication) is the plain listener's code. Such a connection holds
// one descriptor and no goroutine, and costs over a plain connection its
// record layer's keys, under 2 KiB.
//
// Connections that negotiated TLS 1.2, or anything the loop could not
// take over safely (bytes past the handshake already read, records
// crypto/tls wrote that do not add up), take the bridge instead:
//
//	client ─TCP/TLS─ up/down goroutines ═ unix socket ═ engine's unix listener ─ event loop
//	                 (tls.Conn)                                                  (client, as on :1883)
//
// Once the handshake succeeds, the goroutine connects to a unix socket
// that the gnet engine listens on beside the plain listener (in the data
// directory; see prepare) and writes a random token first; the engine accepts the
// connection like any other and an event loop owns it; OnTraffic reads the
// token and takes the TLS connection's peer address and certificate names
// from the pending map. Two new goroutines (the handshake's own stack
// grew, and ends with it) copy the client's plaintext into the unix socket
// (up) and what the loop writes back into the tls.Conn (down). A bridged
// connection costs the two goroutines, up's small buffer (and a big one
// while busy, see bridgeBuf), the tls.Conn's own buffers and the unix
// sockets' kernel buffers (empty while idle), about 30 KiB while idle,
// three descriptors, and goroutine wake-ups for every message.
//
// Why the bridge goes through a listener of the engine's rather than
// Engine.Register with a socket pair: Register picks a loop with the
// engine's load balancer from the caller's goroutine, which round robin
// does not allow (its counter is the main reactor's), and least
// connections, which does, counts a connection only once its loop has
// taken it, so a burst of connects piles onto one loop, plain clients
// included. Through the engine's own listener the main reactor hands out
// TLS and plain connections alike, round robin; the loop connections
// above are handed out by the listener's own counter over the loops it
// learnt.

// ClientAuth says whether the TLS listener asks for client certificates.
type ClientAuth string

// Client certificate policies.
const (
	ClientAuthNone    ClientAuth = "none"    // never asked for
	ClientAuthRequest ClientAuth = "request" // asked for, verified if given
	ClientAuthRequire ClientAuth = "require" // required and verified
)

// TLSConfig is the configuration of the TLS listeners: MQTT over TLS and
// MQTT over WebSocket over TLS, which share the certificate and the
// handshake policy.
type TLSConfig struct {
	// Listen is the MQTT over TLS listen address (conventionally :8883);
	// empty for none.
	Listen string
	// WSSListen is the MQTT over WebSocket over TLS listen address
	// (conventionally :8084); empty for none. Its connections are
	// WebSocket connections (ws.go) once the handshake is done.
	WSSListen string
	// CertFile and KeyFile hold the server's certificate chain and private
	// key, PEM. Server.ReloadTLS reads them again.
	CertFile, KeyFile string
	// ClientCAFile holds the CA certificates (PEM) that client
	// certificates are verified against; reloaded with the certificate.
	ClientCAFile string
	// ClientAuth asks for client certificates; "" means ClientAuthRequire
	// with a ClientCAFile and ClientAuthNone without.
	ClientAuth ClientAuth
	// MinVersion is the oldest TLS version accepted: tls.VersionTLS12 (0
	// means this) or tls.VersionTLS13.
	MinVersion uint16
	// HandshakeTimeout bounds the handshake, PROXY header included; 0
	// means 10s.
	HandshakeTimeout time.Duration
	// MaxHandshakes is how many handshakes may be in progress at once;
	// 0 means 1024.
	MaxHandshakes int
}

func (c *TLSConfig) clientAuth() ClientAuth {
	switch {
	case c.ClientAuth != "":
		return c.ClientAuth
	case c.ClientCAFile != "":
		return ClientAuthRequire
	}
	return ClientAuthNone
}

func (c *TLSConfig) minVersion() uint16 {
	if c.MinVersion == 0 {
		return tls.VersionTLS12
	}
	return c.MinVersion
}

func (c *TLSConfig) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout == 0 {
		return 10 * time.Second
	}
	return c.HandshakeTimeout
}

func (c *TLSConfig) maxHandshakes() int {
	if c.MaxHandshakes == 0 {
		return 1024
	}
	return c.MaxHandshakes
}

func (c *TLSConfig) validate() []error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Listen != "" || c.WSSListen != "", "a TLS listener needs --tls-listen or --wss-listen")
	for _, a := range []struct{ flag, addr, eg string }{{"--tls-listen", c.Listen, ":8883"}, {"--wss-listen", c.WSSListen, ":8084"}} {
		if a.addr != "" {
			_, _, err := net.SplitHostPort(a.addr)
			check(err == nil, "%s must be host:port (e.g. %s), got %q", a.flag, a.eg, a.addr)
			check(c.CertFile != "" && c.KeyFile != "", "%s needs --tls-cert and --tls-key", a.flag)
		}
	}
	switch c.ClientAuth {
	case "", ClientAuthNone:
	case ClientAuthRequest, ClientAuthRequire:
		check(c.ClientCAFile != "", "--tls-client-auth=%s needs --tls-client-ca", c.ClientAuth)
	default:
		errs = append(errs, fmt.Errorf("--tls-client-auth must be none, request or require, got %q", c.ClientAuth))
	}
	check(c.MinVersion == 0 || c.MinVersion == tls.VersionTLS12 || c.MinVersion == tls.VersionTLS13,
		"--tls-min-version must be 1.2 or 1.3")
	check(c.HandshakeTimeout >= 0, "--tls-handshake-timeout must not be negative, got %s", c.HandshakeTimeout)
	check(c.MaxHandshakes >= 0, "--tls-max-handshakes must not be negative, got %d", c.MaxHandshakes)
	return errs
}

// A TLS connection's copy buffers. While it is idle, up waits in
// tls.Conn.Read on a buffer of upSmall bytes and down waits for the unix
// socket to turn readable holding none; bytes are moved through buffers of
// bridgeBuf bytes (one TLS record's plaintext) from bridgeBufs, and up
// keeps one only while the client sends more than upSmall at a time.
const (
	bridgeBuf = 16 << 10
	upSmall   = 2 << 10
)

var bridgeBufs = sync.Pool{New: func() any { b := make([]byte, bridgeBuf); return &b }}

// Reasons a TLS handshake is refused, as the metric's label says them.
const (
	tlsUntrusted    = "untrusted_certificate" // not signed by a CA of --tls-client-ca
	tlsExpired      = "expired_certificate"   // past its NotAfter (or before its NotBefore)
	tlsBadCert      = "bad_certificate"       // any other verification failure
	tlsNoCert       = "no_certificate"        // none given where one is required
	tlsOldVersion   = "protocol_version"      // only versions below --tls-min-version offered
	tlsNotTLS       = "not_tls"               // the first bytes are not TLS (plaintext MQTT, say)
	tlsTimeout      = "timeout"               // not done within the handshake timeout
	tlsOther        = "other"
	tlsProxyRefused = "proxy_header" // a PROXY header from a peer not trusted to send one
)

var tlsReasons = []string{tlsUntrusted, tlsExpired, tlsBadCert, tlsNoCert, tlsOldVersion, tlsNotTLS, tlsTimeout, tlsOther, tlsProxyRefused}

// tlsListener is the TLS listeners and what they share among connections.
type tlsListener struct {
	s    *Server
	cfg  *TLSConfig
	ln   net.Listener // MQTT over TLS; nil without
	wsln net.Listener // MQTT over WebSocket over TLS; nil without
	// base is the tls.Config handed to tls.Server. It holds the session
	// ticket keys (rotated by crypto/tls) and no certificate: each
	// handshake takes the current material through GetConfigForClient,
	// so that ReloadTLS applies to the next handshake without touching
	// open connections.
	base *tls.Config
	cur  atomic.Pointer[tlsMaterial]
	// reload serialises ReloadTLS.
	reload sync.Mutex

	// sock is the unix socket the engine listens on for bridged
	// connections, dir its private directory when it has one (prepare);
	// pending holds the connections whose token the engine has not read
	// yet.
	dir     string
	sock    string
	pending sync.Map // bridgeToken -> *tlsConn, or *tlsProbe while Start learns the loops

	// loops are the engine's event loops, learnt at Start (probeLoops)
	// and not changed after; TLS 1.3 connections are handed to them in
	// turn (next). None known: every connection takes the bridge.
	loops []gnet.EventLoop
	next  atomic.Uint64

	slots  chan struct{} // one per handshake in progress
	ctx    context.Context
	cancel context.CancelFunc // ends handshakes in progress at Shutdown
	wg     sync.WaitGroup     // the accept loop, handshakes, bridges

	handshakes *metrics.Counter
	failures   map[string]*metrics.Counter // by reason, every reason made up front
	reloads    *metrics.Counter
	reloadErrs *metrics.Counter
	// recordErrors counts connections on the loops closed for a bad
	// record (tlsrec.go).
	recordErrors *metrics.Counter
	inProgress   atomic.Int64
	open         atomic.Int64 // TLS connections past their handshake, bridged or on a loop
	bridged      atomic.Int64 // those on the bridge (three descriptors each)
	enrolling    atomic.Int64 // those being handed to a loop (a descriptor more for a moment)
}

// tlsMaterial is what one (re)load of the files made.
type tlsMaterial struct {
	cfg  *tls.Config
	leaf *x509.Certificate
}

// newTLSListener loads the certificate, key and client CAs; it does not
// listen yet.
func newTLSListener(s *Server, cfg *TLSConfig) (*tlsListener, error) {
	l := &tlsListener{s: s, cfg: cfg, slots: make(chan struct{}, cfg.maxHandshakes()), failures: make(map[string]*metrics.Counter)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	m, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	l.cur.Store(m)
	l.base = &tls.Config{
		MinVersion: cfg.minVersion(),
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cfg := l.cur.Load().cfg
			p, ok := hello.Conn.(*tlsPeer)
			if !ok {
				return cfg, nil
			}
			if len(hello.SupportedVersions) > 0 {
				p.offered = slices.Max(hello.SupportedVersions)
			}
			if p.bound && slices.Contains(hello.SupportedVersions, tls.VersionTLS13) {
				// A loop may take this connection over: its own
				// config, whose key log gives the loop the traffic
				// secrets.
				cfg = cfg.Clone()
				cfg.KeyLogWriter = &p.keys
			} else {
				p.bound = false // TLS 1.2 at most: the bridge
			}
			return cfg, nil
		},
	}
	set := s.stats.set
	l.handshakes = set.NewCounter("gannet_tls_handshakes_total")
	for _, r := range tlsReasons {
		l.failures[r] = set.NewCounter(`gannet_tls_handshake_failures_total{reason="` + r + `"}`)
	}
	l.reloads = set.NewCounter(`gannet_tls_reloads_total{result="ok"}`)
	l.reloadErrs = set.NewCounter(`gannet_tls_reloads_total{result="failed"}`)
	set.NewGauge("gannet_tls_handshakes_in_progress", func() float64 { return float64(l.inProgress.Load()) })
	set.NewGauge("gannet_tls_connections", func() float64 { return float64(l.open.Load()) })
	l.recordErrors = set.NewCounter("gannet_tls_record_errors_total")
	set.NewGauge("gannet_tls_certificate_expiry_timestamp_seconds", func() float64 {
		return float64(l.cur.Load().leaf.NotAfter.Unix())
	})
	return l, nil
}

// loadTLS reads the certificate, key and client CAs named by cfg. A
// certificate that does not match its key, has expired or does not parse
// is an error.
func loadTLS(cfg *TLSConfig) (*tlsMaterial, error) {
	cert, leaf, err := loadKeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   cfg.minVersion(),
	}
	switch cfg.clientAuth() {
	case ClientAuthRequest:
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	case ClientAuthRequire:
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	if cfg.ClientCAFile != "" {
		pem, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read the client CA file: %w", err)
		}
		tc.ClientCAs = x509.NewCertPool()
		if !tc.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the client CA file %s holds no PEM certificate", cfg.ClientCAFile)
		}
	}
	return &tlsMaterial{cfg: tc, leaf: leaf}, nil
}

// loadKeyPair reads a certificate chain and its key. A certificate that
// does not match its key, has expired or does not parse is an error.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, *x509.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return cert, nil, fmt.Errorf("cannot load the TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return cert, nil, fmt.Errorf("cannot parse the TLS certificate %s: %w", certFile, err)
		}
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		return cert, nil, fmt.Errorf("the TLS certificate %s expired on %s", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, leaf, nil
}

// ReloadTLS reads the TLS listeners' certificate, key and client CAs
// again, and the HTTP listener's certificate and key. New handshakes use
// them; open connections are not touched. When a file cannot be read or
// does not make a usable certificate, that listener keeps its old material
// and the error is returned. Without TLS it does nothing. It is safe to
// call from any goroutine.
func (s *Server) ReloadTLS() error {
	return errors.Join(s.reloadListenerTLS(), s.reloadHTTPTLS())
}

func (s *Server) reloadListenerTLS() error {
	l := s.tlsl
	if l == nil {
		return nil
	}
	l.reload.Lock()
	defer l.reload.Unlock()
	m, err := loadTLS(l.cfg)
	if err != nil {
		l.reloadErrs.Inc()
		return fmt.Errorf("the TLS listener keeps its old certificate: %w", err)
	}
	l.cur.Store(m)
	l.reloads.Inc()
	s.log.Info("TLS certificate loaded", "subject", m.leaf.Subject.String(),
		"serial", m.leaf.SerialNumber.Text(16), "not_after", m.leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// TLSAddr returns the MQTT over TLS listener's address, or "" when there
// is none.
func (s *Server) TLSAddr() string {
	if s.tlsl == nil || s.tlsl.ln == nil {
		return ""
	}
	return s.tlsl.ln.Addr().String()
}

// WSSAddr returns the MQTT over WebSocket over TLS listener's address, or
// "" when there is none.
func (s *Server) WSSAddr() string {
	if s.tlsl == nil || s.tlsl.wsln == nil {
		return ""
	}
	return s.tlsl.wsln.Addr().String()
}

// prepare chooses where the engine's unix socket goes and returns its
// address for gnet.Rotate: in the data directory, which the store's lock
// makes this broker's alone (a socket left by a killed broker is replaced),
// or else in a private directory of its own under $TMPDIR.
func (l *tlsListener) prepare() (string, error) {
	if l.s.store != nil && l.s.cfg.storeFS == nil {
		if dir, err := filepath.Abs(l.s.cfg.DataDir); err == nil {
			sock := filepath.Join(dir, "tls-bridge.sock")
			fi, err := os.Lstat(sock)
			if err == nil && fi.Mode()&os.ModeSocket != 0 {
				_ = os.Remove(sock) // a killed broker's
				err = os.ErrNotExist
			}
			if errors.Is(err, os.ErrNotExist) && len(sock) <= 100 { // sun_path holds 108 bytes
				l.sock = sock
				return "unix://" + sock, nil
			}
		}
	}
	dir, err := os.MkdirTemp("", "gannet-tls-")
	if err != nil {
		return "", fmt.Errorf("cannot make a directory for the TLS listener's socket: %w", err)
	}
	l.dir, l.sock = dir, filepath.Join(dir, "bridge.sock")
	if len(l.sock) > 100 { // sun_path holds 108 bytes
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("cannot place the TLS listener's socket: %s is too long a path (set TMPDIR shorter)", l.sock)
	}
	return "unix://" + l.sock, nil
}

// listen opens the listeners and starts accepting.
func (l *tlsListener) listen() error {
	for _, a := range []struct {
		addr string
		ln   *net.Listener
		ws   bool
	}{{l.cfg.Listen, &l.ln, false}, {l.cfg.WSSListen, &l.wsln, true}} {
		if a.addr == "" {
			continue
		}
		lc := net.ListenConfig{KeepAlive: l.s.cfg.TCPKeepAlive}
		if lc.KeepAlive == 0 {
			lc.KeepAlive = -1 // off, not Go's default
		}
		ln, err := lc.Listen(context.Background(), "tcp", a.addr)
		if err != nil {
			l.stop()
			return fmt.Errorf("cannot listen on %s: %w", a.addr, err)
		}
		*a.ln = ln
		l.wg.Add(1)
		go l.accept(ln, a.ws)
	}
	return nil
}

// stop closes the listeners and ends the handshakes in progress; bridged
// connections live on until the engine closes their loop ends.
func (l *tlsListener) stop() {
	l.cancel()
	for _, ln := range []net.Listener{l.ln, l.wsln} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// removeDir removes the unix socket's private directory, if it has one,
// once the engine stopped.
func (l *tlsListener) removeDir() {
	if l.dir != "" {
		_ = os.RemoveAll(l.dir)
	}
}

// wait waits for every goroutine of the listener to end, or for ctx.
func (l *tlsListener) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("TLS connections still closing: %w", ctx.Err())
	}
}

// accept takes a handshake slot, then a connection from ln, and hands it
// to its own goroutine; ws says ln is the WebSocket listener. With every
// slot taken (the listeners share them) it accepts nothing: further
// clients wait in the kernel's accept queue.
func (l *tlsListener) accept(ln net.Listener, ws bool) {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		raw, err := ln.Accept()
		if err != nil {
			<-l.slots
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: wait a little rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.s.logThrottled("the TLS listener cannot accept", "err", err)
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		// Admission before the handshake, the dearest part (limits.go).
		kind := kindTLS
		if ws {
			kind = kindWSS
		}
		if reason := l.s.adm.beforeHandshake(kind); reason != "" {
			l.s.adm.refuse(reason, raw.RemoteAddr().String(), kind)
			_ = raw.Close()
			<-l.slots
			continue
		}
		l.inProgress.Add(1)
		l.wg.Add(1)
		go l.serve(raw.(*net.TCPConn), ws)
	}
}

// tlsPeer is the client's TCP connection as tls.Server sees it: bytes
// read past a PROXY header come first, and the ClientHello's newest
// version is noted, to tell an old client from other failures.
//
// While bound (a handshake that may end on a loop), reads stop at the end
// of each TLS record, so that crypto/tls, which asks for a record's header
// and then for its body, never takes a byte the client sent after its
// Finished: those stay in the kernel for the loop. What crypto/tls writes
// meanwhile is kept in sent, to count the records it sealed under its
// application key (session tickets), and the key log gives the
// application traffic secrets.
type tlsPeer struct {
	*net.TCPConn
	pre     []byte
	offered uint16
	got     int // bytes read from the client

	bound bool
	hdr   [recHeader]byte
	hdrN  int // header bytes of the record being read
	body  int // body bytes of it still to read
	sent  []byte
	keys  tlsKeyLog
}

func (p *tlsPeer) Read(b []byte) (int, error) {
	if p.bound && len(b) > 0 {
		if p.body > 0 {
			b = b[:min(len(b), p.body)]
		} else {
			b = b[:min(len(b), recHeader-p.hdrN)]
		}
	}
	var n int
	var err error
	if len(p.pre) > 0 {
		n = copy(b, p.pre)
		p.pre = p.pre[n:]
	} else {
		n, err = p.TCPConn.Read(b)
		p.got += n
	}
	if p.bound {
		if p.body > 0 {
			p.body -= n
		} else if p.hdrN += copy(p.hdr[p.hdrN:], b[:n]); p.hdrN == recHeader {
			p.hdrN, p.body = 0, int(binary.BigEndian.Uint16(p.hdr[3:]))
		}
	}
	return n, err
}

func (p *tlsPeer) Write(b []byte) (int, error) {
	n, err := p.TCPConn.Write(b)
	if p.bound {
		p.sent = append(p.sent, b[:n]...)
	}
	return n, err
}

// tlsKeyLog takes the application traffic secrets from crypto/tls's key
// log (NSS format: label, client random, secret in hex).
type tlsKeyLog struct {
	client, server []byte
}

func (k *tlsKeyLog) Write(line []byte) (int, error) {
	f := bytes.Fields(line)
	if len(f) == 3 {
		switch string(f[0]) {
		case "CLIENT_TRAFFIC_SECRET_0":
			k.client, _ = hex.AppendDecode(nil, f[2])
		case "SERVER_TRAFFIC_SECRET_0":
			k.server, _ = hex.AppendDecode(nil, f[2])
		}
	}
	return len(line), nil
}

// silent reports whether the peer closed without sending a byte, as a
// load balancer's TCP health check does: not worth a log line or a count.
func (p *tlsPeer) silent(err error) bool {
	return p.got == 0 && errors.Is(err, io.EOF)
}

// proxyMaxTLS bounds the PROXY header read before a TLS handshake (v2
// allows 64 KiB of TLVs; balancers send a few dozen bytes).
const proxyMaxTLS = 4096

// readProxy reads the PROXY protocol header and keeps what came after it.
func (p *tlsPeer) readProxy() (string, error) {
	buf := make([]byte, 0, 256)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= proxyMaxTLS {
				return "", fmt.Errorf("PROXY header longer than %d bytes", proxyMaxTLS)
			}
			buf = slices.Grow(buf, len(buf))
		}
		n, err := p.TCPConn.Read(buf[len(buf):cap(buf)])
		p.got += n
		buf = buf[:len(buf)+n]
		hn, src, perr := parseProxy(buf)
		switch {
		case perr == nil:
			p.pre = buf[hn:]
			return src, nil
		case perr != errIncomplete:
			return "", perr
		case err != nil:
			return "", err
		}
	}
}

// serve runs one connection's handshake and, when it succeeds, bridges
// the connection to an event loop; ws says it came to the WebSocket
// listener.
func (l *tlsListener) serve(raw *net.TCPConn, ws bool) {
	defer l.wg.Done()
	held := true
	release := func() {
		if held {
			held = false
			l.inProgress.Add(-1)
			<-l.slots
		}
	}
	defer release()

	remote := raw.RemoteAddr().String()
	deadline := time.Now().Add(l.cfg.handshakeTimeout())
	_ = raw.SetDeadline(deadline)
	peer := &tlsPeer{TCPConn: raw, bound: len(l.loops) > 0}
	mode := l.s.proxyMode(raw.RemoteAddr())
	if mode == proxyRequired {
		src, err := peer.readProxy()
		if err != nil {
			if l.ctx.Err() == nil && !peer.silent(err) {
				l.s.stats.proxyBad.Inc()
				l.s.log.Warn("refusing TLS connection", "remote", remote, "reason", "bad PROXY protocol header", "err", err)
			}
			_ = raw.Close()
			return
		}
		if src != "" {
			remote = src
		}
	}
	tc := tls.Server(peer, l.base)
	ctx, cancel := context.WithDeadline(l.ctx, deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.refuse(raw, remote, peer, mode, err)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	release()
	l.handshakes.Inc()

	st := tc.ConnectionState()
	cn, sans := certNames(st)
	if rec := l.takeOver(peer, st); rec != nil {
		l.enroll(raw, &tlsConn{remote: remote, cn: cn, sans: sans, ws: ws, rec: rec})
		return
	}
	l.bridge(&tlsConn{raw: raw, tc: tc, remote: remote, cn: cn, sans: sans, ws: ws})
}

// takeOver returns the record layer that serves the connection p on an
// event loop, or nil when it takes the bridge: it did not negotiate TLS
// 1.3 with a suite the loops serve, or bytes past the handshake were read
// into user space (after a PROXY header, say) where the loop would not
// see them. It ends p's bounded reads either way.
func (l *tlsListener) takeOver(p *tlsPeer, st tls.ConnectionState) *tlsRec {
	bound, sent, keys := p.bound, p.sent, p.keys
	p.bound, p.sent, p.keys = false, nil, tlsKeyLog{}
	if !bound || st.Version != tls.VersionTLS13 || keys.client == nil || keys.server == nil ||
		len(p.pre) > 0 || p.hdrN != 0 || p.body != 0 {
		return nil
	}
	suite := tlsSuiteOf(st.CipherSuite)
	if suite == nil {
		return nil
	}
	n, ok := sealedUnder(suite, keys.server, sent)
	if !ok {
		return nil
	}
	rec, err := newTLSRec(suite, keys.client, keys.server, n)
	if err != nil {
		l.s.logThrottled("a TLS connection stays on the bridge", "err", err)
		return nil
	}
	return rec
}

// sealedUnder counts the records in sent, the bytes crypto/tls wrote
// during a handshake, that open under the application traffic secret:
// its session tickets, which take sequence numbers the loop must go on
// from. Records under the handshake keys come first and do not open. ok
// is false when sent does not end on a record boundary or a record after
// the first that opened does not open: the connection takes the bridge
// rather than guess.
func sealedUnder(s *tlsSuite, secret, sent []byte) (n uint64, ok bool) {
	var k tlsKeys
	if k.set(s, secret) != nil {
		return 0, false
	}
	var scratch []byte
	for len(sent) > 0 {
		if len(sent) < recHeader {
			return 0, false
		}
		size := recHeader + int(binary.BigEndian.Uint16(sent[3:]))
		if len(sent) < size {
			return 0, false
		}
		if sent[0] == recTypeAppData {
			scratch = append(scratch[:0], sent[:size]...)
			k.seq = n
			if _, _, _, err := k.open(scratch); err == nil {
				n++
			} else if n > 0 {
				return 0, false
			}
		}
		sent = sent[size:]
	}
	return n, true
}

// enroll hands raw, a TLS connection past its handshake, to the next event
// loop, which serves it with b's record layer (tlsrec.go); OnOpen finds b
// in the connection's context. gnet duplicates the descriptor and raw is
// closed, without a close_notify: crypto/tls's state is left behind.
func (l *tlsListener) enroll(raw *net.TCPConn, b *tlsConn) {
	el := l.loops[(l.next.Add(1)-1)%uint64(len(l.loops))]
	l.open.Add(1)
	l.enrolling.Add(1)
	defer l.enrolling.Add(-1)
	ch, err := el.Enroll(gnet.NewContext(context.Background(), b), raw)
	if err == nil {
		select {
		case res := <-ch:
			err = res.Err
		case <-l.ctx.Done():
			return // stopping: the engine closes what it registered
		}
		if err == nil && !b.opened.Load() {
			err = errors.New("the event loop did not take it")
		}
	}
	if err != nil {
		l.open.Add(-1)
		if l.ctx.Err() == nil {
			l.s.logThrottled("cannot hand a TLS connection to an event loop", "remote", b.remote, "err", err)
		}
		_ = raw.Close()
	}
}

// refuse counts, logs and closes a connection whose handshake failed.
func (l *tlsListener) refuse(raw *net.TCPConn, remote string, p *tlsPeer, mode proxyMode, err error) {
	if l.ctx.Err() != nil || p.silent(err) {
		_ = raw.Close() // stopping, or nothing was tried
		return
	}
	reason := handshakeFailure(p, l.cfg.minVersion(), mode, err)
	l.failures[reason].Inc()
	if reason == tlsProxyRefused {
		l.s.stats.proxyUntrusted.Inc()
		l.s.log.Warn("refusing TLS connection", "remote", remote, "reason", reason,
			"err", "PROXY protocol header from a peer outside --proxy-protocol-from")
	} else {
		l.s.log.Warn("refusing TLS connection", "remote", remote, "reason", reason, "err", err)
	}
	if reason == tlsTimeout {
		_ = raw.Close()
		return
	}
	// As on the plain listener (client.close): the alert crypto/tls sent
	// goes out ahead of a FIN, and what the client still sends is read
	// and dropped for a while, so that it reads the alert rather than a
	// reset.
	_ = raw.CloseWrite()
	_ = raw.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, raw, lingerBytes)
	_ = raw.Close()
}

// handshakeFailure names the reason err ended a handshake.
func handshakeFailure(p *tlsPeer, minVersion uint16, mode proxyMode, err error) string {
	var (
		rhe tls.RecordHeaderError
		ua  x509.UnknownAuthorityError
		ci  x509.CertificateInvalidError
		cve *tls.CertificateVerificationError
		ne  net.Error
	)
	switch {
	case p.offered != 0 && p.offered < minVersion:
		return tlsOldVersion
	case errors.As(err, &rhe):
		if yes, unsure := proxySignature(rhe.RecordHeader[:]); mode == proxyRefused && (yes || unsure) {
			return tlsProxyRefused
		}
		return tlsNotTLS
	case errors.As(err, &ua):
		return tlsUntrusted
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		return tlsExpired
	case errors.As(err, &ci), errors.As(err, &cve):
		return tlsBadCert
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return tlsNoCert
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return tlsTimeout
	}
	return tlsOther
}

// certNames returns a verified client certificate's subject common name
// and subject alternative names (DNS names, e-mail addresses, URIs, in
// that order); nothing without a verified certificate.
func certNames(st tls.ConnectionState) (string, []string) {
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return "", nil
	}
	leaf := st.PeerCertificates[0]
	var sans []string
	sans = append(sans, leaf.DNSNames...)
	sans = append(sans, leaf.EmailAddresses...)
	for _, u := range leaf.URIs {
		sans = append(sans, u.String())
	}
	return leaf.Subject.CommonName, sans
}

// tlsConn is a TLS connection past its handshake. Its fields are set
// before it is handed to the engine and not changed after, but for rec's
// contents, which are its loop's, and opened.
type tlsConn struct {
	raw    *net.TCPConn  // on the bridge
	tc     *tls.Conn     // on the bridge
	br     *net.UnixConn // the bridge's end of the unix socket
	remote string        // the client's address (from the PROXY header where there is one)
	cn     string        // verified client certificate's names; empty without one
	sans   []string
	ws     bool // from the WebSocket listener: MQTT over WebSocket inside
	// rec is the record layer of a connection served on its loop
	// (tlsrec.go); nil on the bridge. opened is set once OnOpen took it.
	rec    *tlsRec
	opened atomic.Bool
}

// bridgeToken is what a bridged connection sends first, naming its
// tlsConn in pending: random, so that another process that can reach the
// unix socket cannot pass for a TLS client.
type bridgeToken [16]byte

// bridge connects b to an event loop through the engine's unix socket and
// starts the goroutines that copy between the two.
func (l *tlsListener) bridge(b *tlsConn) {
	var tok bridgeToken
	_, _ = rand.Read(tok[:]) // never fails (crypto/rand)
	l.pending.Store(tok, b)
	l.open.Add(1)
	l.bridged.Add(1)
	var d net.Dialer
	conn, err := d.DialContext(l.ctx, "unix", l.sock)
	if err == nil {
		b.br = conn.(*net.UnixConn)
		_, err = b.br.Write(tok[:])
	}
	if err != nil {
		if l.ctx.Err() == nil {
			l.s.logThrottled("cannot bridge a TLS connection to an event loop", "remote", b.remote, "err", err)
		}
		_ = b.tc.Close()
		if conn != nil {
			_ = conn.Close()
		}
		l.pending.Delete(tok)
		l.open.Add(-1)
		l.bridged.Add(-1)
		return
	}
	// Two new goroutines rather than this one: its stack grew for the
	// handshake.
	upDone := make(chan struct{})
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		b.up()
		close(upDone)
	}()
	go func() {
		defer l.wg.Done()
		b.down(upDone)
		l.pending.Delete(tok) // when the engine never read it
		l.open.Add(-1)
		l.bridged.Add(-1)
	}()
}

// claim returns what the token tok names, once: a *tlsConn, or a
// *tlsProbe; nil for an unknown token.
func (l *tlsListener) claim(tok []byte) any {
	var k bridgeToken
	copy(k[:], tok)
	v, _ := l.pending.LoadAndDelete(k)
	return v
}

// tlsProbe is a connection Start makes through the unix socket to learn
// the event loop it lands on.
type tlsProbe struct{ got chan gnet.EventLoop }

// probeLoops learns the engine's n event loops, which gnet offers no list
// of: it connects through the engine's unix socket with a probe token
// until a connection has landed on each loop. The main reactor hands
// connections to the loops in turn, so n probes usually do, but clients
// connecting meanwhile shift the turn: it probes on, up to 4n+8 times
// and for at most five seconds. With some loops unknown TLS 1.3
// connections go to the others; with none, every TLS connection takes the
// bridge.
func (l *tlsListener) probeLoops(n int) {
	seen := make(map[gnet.EventLoop]bool, n)
	deadline := time.Now().Add(5 * time.Second)
	for try := 0; len(seen) < n && try < 4*n+8 && time.Now().Before(deadline); try++ {
		el, err := l.probe(time.Until(deadline))
		if err != nil {
			l.s.log.Warn("cannot learn the event loops for TLS connections", "err", err)
			break
		}
		if el != nil && !seen[el] {
			seen[el] = true
			l.loops = append(l.loops, el)
		}
	}
	if len(l.loops) < n {
		l.s.log.Warn("TLS 1.3 connections go to some event loops only", "known", len(l.loops), "loops", n)
	}
}

// probe makes one probe connection and returns the loop it landed on; nil
// when none answered within wait.
func (l *tlsListener) probe(wait time.Duration) (gnet.EventLoop, error) {
	var tok bridgeToken
	_, _ = rand.Read(tok[:])
	p := &tlsProbe{got: make(chan gnet.EventLoop, 1)}
	l.pending.Store(tok, p)
	defer l.pending.Delete(tok)
	conn, err := net.DialTimeout("unix", l.sock, wait)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if _, err := conn.Write(tok[:]); err != nil {
		return nil, err
	}
	select {
	case el := <-p.got:
		return el, nil
	case <-time.After(wait):
		return nil, nil
	}
}

// up copies the client's plaintext to the event loop until the client
// ends; the loop then reads end-of-file and closes the connection as it
// would a plain one.
func (b *tlsConn) up() {
	small := make([]byte, upSmall)
	buf := small
	var big *[]byte
	for {
		n, err := b.tc.Read(buf)
		if n > 0 {
			if _, werr := b.br.Write(buf[:n]); werr != nil {
				break // the loop closed its end
			}
		}
		if err != nil {
			break
		}
		switch {
		case n == len(buf) && big == nil: // more may be waiting: take whole records
			big = bridgeBufs.Get().(*[]byte)
			buf = *big
		case n < len(small) && big != nil: // quiet again: wait on the small one
			bridgeBufs.Put(big)
			big, buf = nil, small
		}
	}
	if big != nil {
		bridgeBufs.Put(big)
	}
	_ = b.br.CloseWrite()
}

// down copies what the event loop writes to the client until the loop
// closes its end, then closes the TLS connection the way client.close
// closes a plain one: the last bytes, then close_notify and FIN, then
// what the client still sends is read (by up) and dropped for lingerTime.
func (b *tlsConn) down(upDone <-chan struct{}) {
	clean := true
	rc, err := b.br.SyscallConn()
	for err == nil {
		var (
			buf  *[]byte
			n    int
			rerr error
		)
		// Wait for bytes without holding a buffer; take one when
		// they are there.
		err = rc.Read(func(fd uintptr) bool {
			buf = bridgeBufs.Get().(*[]byte)
			for {
				n, rerr = unix.Read(int(fd), *buf)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				bridgeBufs.Put(buf)
				buf = nil
				return false
			}
			return true
		})
		if buf == nil {
			break
		}
		if rerr != nil || n <= 0 { // end of file, or the loop's end reset
			bridgeBufs.Put(buf)
			break
		}
		_, werr := b.tc.Write((*buf)[:n])
		bridgeBufs.Put(buf)
		if werr != nil {
			clean = false
			break
		}
	}
	if clean {
		_ = b.tc.CloseWrite()
		_ = b.raw.CloseWrite()
		_ = b.raw.SetReadDeadline(time.Now().Add(lingerTime))
	} else {
		_ = b.tc.Close()
	}
	<-upDone
	_ = b.tc.Close()
	_ = b.br.Close()
}

// loopClosed is called by OnClose, on the event loop. The loop's last
// bytes may still be on their way through down; a client that does not
// take them within lingerTime is not waited for.
func (b *tlsConn) loopClosed() {
	_ = b.raw.SetWriteDeadline(time.Now().Add(lingerTime))
}
