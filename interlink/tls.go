package interlink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Links over TLS (Config.CertFile, KeyFile and CAFile; --cluster-tls-*).
//
// Every interlink connection, dialled or accepted, on every lane, starts
// with a TLS 1.3 handshake in which both nodes present a certificate and
// each verifies the other's against the cluster CA. The interlink
// handshake (doc.go: versions, names, the secret's proofs) then runs
// inside TLS, and the frames after it are not sealed: TLS encrypts and
// authenticates them already, and one layer is enough. The secret keys
// gossip, which memberlist encrypts on its own, and is still proved at
// handshake.
//
// Nodes dial each other at the addresses they gossip, IP addresses most
// often, and nothing ties those to the names in a certificate; what
// admits a node is that its certificate chains to the cluster CA. So the
// dialer does not check the acceptor's host name (crypto/tls's
// InsecureSkipVerify) and verifies the chain against the CA itself
// (verifyChain), and the acceptor requires a client certificate that
// chains to it. A cluster therefore needs a CA of its own: any
// certificate that CA issued is taken as a node of the cluster.

// A link over TLS is replaced after it has written tlsRecordLimit records.
// TLS 1.3 allows about 2^24.5 full-size records under one AES-GCM key
// (RFC 8446, section 5.5) and crypto/tls does not update its keys by
// itself, while a lane may stay connected for weeks and write thousands
// of records a second. So the dialer, which writes nearly all a link
// carries (the acceptor only acknowledges, at most once per frame),
// counts its records and dials a new connection, with new keys, before
// the limit: the lane carries on as after any reconnection, its
// unacknowledged reliable records written again, and its unreliable ones
// kept for the new connection.
const (
	tlsRecordLimit = 1 << 24
	tlsMaxPlain    = 16 << 10 // a TLS record's plaintext at most (crypto/tls's records are full)
)

// errRekey ends a link over TLS that has written its share of records.
var errRekey = errors.New("interlink: TLS link replaced for fresh keys")

// tlsRecords is how many TLS records crypto/tls writes for n bytes: it
// cuts a Write into full records (DynamicRecordSizingDisabled).
func tlsRecords(n int) int64 { return int64((n + tlsMaxPlain - 1) / tlsMaxPlain) }

// Reasons a TLS handshake on a link fails, as the metric's label says them.
const (
	tlsUntrusted     = "untrusted_certificate" // not issued by the cluster CA
	tlsExpired       = "expired_certificate"   // past its NotAfter, or before its NotBefore
	tlsBadCert       = "bad_certificate"       // any other verification failure
	tlsNoCert        = "no_certificate"        // the dialer presented none
	tlsRefusedByPeer = "refused_by_peer"       // the other node refused this one's certificate
	tlsNotTLS        = "not_tls"               // the peer speaks plain interlink, or something else
	tlsTimeout       = "timeout"               // not done within Config.HandshakeTimeout
	tlsOther         = "other"
)

var tlsReasons = []string{tlsUntrusted, tlsExpired, tlsBadCert, tlsNoCert, tlsRefusedByPeer, tlsNotTLS, tlsTimeout, tlsOther}

// linkTLS is a node's TLS material and what it counts about handshakes.
type linkTLS struct {
	cfg *Config
	cur atomic.Pointer[tlsMaterial]
	// reload serialises ReloadTLS.
	reload sync.Mutex

	failures map[string]*metrics.Counter // by reason, every reason made up front
	rekeys   *metrics.Counter            // links replaced at the record limit
	// recordLimit is tlsRecordLimit; tests lower it.
	recordLimit int64

	logMu    sync.Mutex
	logCount int       // failures since logAt
	logAt    time.Time // when the last failure was logged
}

// tlsMaterial is what one (re)load of the files made.
type tlsMaterial struct {
	client *tls.Config // for the connections this node dials
	server *tls.Config // for the ones it accepts
	leaf   *x509.Certificate
}

// newLinkTLS starts from the material New loaded (loadTLS).
func newLinkTLS(c *Config, m *tlsMaterial, set *metrics.Set) *linkTLS {
	t := &linkTLS{cfg: c, failures: make(map[string]*metrics.Counter), recordLimit: tlsRecordLimit,
		rekeys: set.NewCounter("gannet_interlink_tls_rekeys_total")}
	t.cur.Store(m)
	for _, r := range tlsReasons {
		t.failures[r] = set.NewCounter(`gannet_interlink_tls_handshake_failures_total{reason="` + r + `"}`)
	}
	set.NewGauge("gannet_interlink_tls_certificate_expiry_timestamp_seconds", func() float64 {
		return float64(t.cur.Load().leaf.NotAfter.Unix())
	})
	return t
}

// validateTLS checks that the three files are named together.
func (c *Config) validateTLS() error {
	if c.CertFile == "" && c.KeyFile == "" && c.CAFile == "" {
		return nil
	}
	var missing []string
	for _, f := range []struct{ flag, file string }{{"--cluster-tls-cert", c.CertFile},
		{"--cluster-tls-key", c.KeyFile}, {"--cluster-tls-ca", c.CAFile}} {
		if f.file == "" {
			missing = append(missing, f.flag)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca go together: %s missing",
			strings.Join(missing, " and "))
	}
	return nil
}

// CheckTLS loads the certificate, key and CA files as New will, and says
// why they cannot be used; without them it returns nil. It lets a
// command report bad files before it starts anything.
func (c *Config) CheckTLS() error {
	if err := c.validateTLS(); err != nil || c.CertFile == "" {
		return err
	}
	_, err := loadTLS(c)
	return err
}

// loadTLS reads the files named by c. A certificate that does not match
// its key, does not parse, has expired, does not chain to the CA or does
// not allow client authentication (peers accept this node as a TLS
// client) is an error: every peer would refuse it.
func loadTLS(c *Config) (*tlsMaterial, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cannot load the cluster certificate --cluster-tls-cert %s with its key --cluster-tls-key %s: %w",
			c.CertFile, c.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("cannot parse the cluster certificate --cluster-tls-cert %s: %w", c.CertFile, err)
		}
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read the cluster CA --cluster-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the cluster CA --cluster-tls-ca %s holds no PEM certificate", c.CAFile)
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("the cluster certificate --cluster-tls-cert %s expired on %s", c.CertFile,
			cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	chain, err := parseChain(cert.Certificate)
	if err == nil {
		err = verifyChain(pool, chain, x509.ExtKeyUsageClientAuth)
	}
	if err != nil {
		return nil, fmt.Errorf("the cluster certificate --cluster-tls-cert %s does not verify against --cluster-tls-ca %s "+
			"for client authentication (extendedKeyUsage clientAuth), so every peer would refuse it: %w", c.CertFile, c.CAFile, err)
	}
	return newTLSMaterial(cert, pool), nil
}

func parseChain(der [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(der))
	for _, d := range der {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// newTLSMaterial makes the two sides' configurations for a certificate
// and the CAs peers' certificates must chain to.
func newTLSMaterial(cert tls.Certificate, pool *x509.CertPool) *tlsMaterial {
	return &tlsMaterial{
		client: &tls.Config{
			MinVersion: tls.VersionTLS13,
			// The node's one certificate, always: crypto/tls would
			// send none when its issuer is not among the CAs the
			// acceptor names, and the acceptor would then log a
			// missing certificate rather than an untrusted one.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
			// The acceptor is dialled at its gossiped address, which
			// its certificate need not name: host names are not
			// checked, the chain is, against the cluster CA (see the
			// top of this file).
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("interlink: the peer presented no certificate")
				}
				return verifyChain(pool, cs.PeerCertificates, x509.ExtKeyUsageAny)
			},
			// Links are long-lived bulk streams: full-size records
			// from the first byte.
			DynamicRecordSizingDisabled: true,
		},
		server: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			// Every link starts with a full handshake, so the
			// dialer's certificate is always checked against the CA
			// loaded now (dialers keep no session cache anyway).
			SessionTicketsDisabled:      true,
			DynamicRecordSizingDisabled: true,
		},
		leaf: cert.Leaf,
	}
}

// verifyChain verifies a chain (leaf first, intermediates after) against
// the cluster CA for usage. The dialer checks the acceptor's for any
// usage: the chain is what admits a node, and every node's certificate
// allows client authentication anyway, which the acceptor requires of
// the dialer's (crypto/tls) and a node of its own at start (loadTLS).
func verifyChain(pool *x509.CertPool, chain []*x509.Certificate, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// ReloadTLS reads the certificate, key and CA files again. Links made
// from then on use them; links already up keep theirs. When the files
// cannot be loaded, the old material stays and the error says why.
// Without TLS it does nothing. It is safe to call from any goroutine.
func (n *Node) ReloadTLS() error {
	t := n.tls
	if t == nil {
		return nil
	}
	t.reload.Lock()
	defer t.reload.Unlock()
	m, err := loadTLS(t.cfg)
	if err != nil {
		return fmt.Errorf("the cluster links keep their old certificate: %w", err)
	}
	t.cur.Store(m)
	n.log.Info("cluster TLS certificate loaded", "subject", m.leaf.Subject.String(),
		"serial", m.leaf.SerialNumber.Text(16), "not_after", m.leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// tlsClient runs the dialer's TLS handshake on raw, within its deadline.
// A failure is counted; the caller logs it.
func (n *Node) tlsClient(raw net.Conn) (net.Conn, error) {
	tc := tls.Client(raw, n.tls.cur.Load().client)
	if err := tc.HandshakeContext(n.ctx); err != nil {
		if !n.stopping() {
			n.tls.failures[tlsFailure(err)].Inc()
		}
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// tlsServer runs the acceptor's TLS handshake on raw, within its
// deadline. A failure is counted and logged.
func (n *Node) tlsServer(raw net.Conn) (net.Conn, bool) {
	tc := tls.Server(raw, n.tls.cur.Load().server)
	err := tc.HandshakeContext(n.ctx)
	if err == nil {
		return tc, true
	}
	if n.stopping() {
		return nil, false
	}
	reason := n.tlsRefused(raw.RemoteAddr().String(), err)
	if tcp, ok := raw.(*net.TCPConn); ok && reason != tlsTimeout && reason != tlsRefusedByPeer {
		// Over TLS 1.3 the dialer has sent its HELLO by the time
		// crypto/tls refuses its certificate. Closing with those bytes
		// unread would reset the connection, and the reset could
		// destroy the alert that tells the dialer why: the alert goes
		// out ahead of a FIN instead, and what the dialer still sends
		// is read and dropped for a moment (within the handshake's
		// deadline, holding its pending slot).
		_ = tcp.CloseWrite()
		_ = tcp.SetReadDeadline(time.Now().Add(min(refuseLinger, n.cfg.HandshakeTimeout)))
		_, _ = io.CopyN(io.Discard, tcp, 64<<10)
	}
	return nil, false
}

// refuseLinger bounds how long a refused TLS connection is read and
// dropped before it is closed.
const refuseLinger = 500 * time.Millisecond

// tlsRefused counts a connection whose TLS handshake failed, logs it at
// most every ten seconds with the count since the last line (a peer that
// keeps dialling with a bad certificate must not flood the log), and
// returns the reason.
func (n *Node) tlsRefused(remote string, err error) string {
	reason := tlsFailure(err)
	n.tls.failures[reason].Inc()
	t := n.tls
	t.logMu.Lock()
	t.logCount++
	if time.Since(t.logAt) < 10*time.Second {
		t.logMu.Unlock()
		return reason
	}
	count := t.logCount
	t.logCount, t.logAt = 0, time.Now()
	t.logMu.Unlock()
	n.log.Warn("refusing cluster connection: TLS handshake failed", "remote", remote, "reason", reason, "err", err,
		"refused_since_last_line", count)
	return reason
}

// peerRefusedTLS counts, on the dialer, a link the acceptor ended with a
// TLS alert after the dialer's side of the handshake was done: in TLS 1.3
// the dialer learns only then that its certificate was refused.
func (n *Node) peerRefusedTLS(err error) {
	if n.tls != nil && !n.stopping() && tlsFailure(err) == tlsRefusedByPeer {
		n.tls.failures[tlsRefusedByPeer].Inc()
	}
}

// tlsFailure names the reason err ended a handshake.
func tlsFailure(err error) string {
	var (
		rhe tls.RecordHeaderError
		ua  x509.UnknownAuthorityError
		ci  x509.CertificateInvalidError
		cve *tls.CertificateVerificationError
		op  *net.OpError
		ne  net.Error
	)
	switch {
	case errors.As(err, &op) && op.Op == "remote error":
		return tlsRefusedByPeer
	case errors.As(err, &rhe):
		return tlsNotTLS
	case errors.As(err, &ua):
		return tlsUntrusted
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		return tlsExpired
	case errors.As(err, &ci), errors.As(err, &cve):
		return tlsBadCert
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return tlsNoCert
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return tlsTimeout
	}
	return tlsOther
}
