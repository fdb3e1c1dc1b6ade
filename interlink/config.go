package interlink

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Compression is how a node compresses the batches it sends.
type Compression uint8

// Compression codecs. Do not renumber: exchanged at handshake.
const (
	CompressNone Compression = 0
	CompressS2   Compression = 1
	CompressZstd Compression = 2
)

// ParseCompression reads a --interlink-compression value.
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "none":
		return CompressNone, nil
	case "s2":
		return CompressS2, nil
	case "zstd":
		return CompressZstd, nil
	}
	return 0, fmt.Errorf("--interlink-compression must be none, s2 or zstd, got %q", s)
}

func (c Compression) String() string {
	switch c {
	case CompressNone:
		return "none"
	case CompressS2:
		return "s2"
	case CompressZstd:
		return "zstd"
	}
	return "compression(" + strconv.Itoa(int(c)) + ")"
}

// Config is one node's place in the cluster.
type Config struct {
	// NodeName names this node; unique in the cluster.
	NodeName string
	// Listen is the interlink TCP address.
	Listen string
	// Advertise is the interlink address peers dial; empty means Listen
	// with the host it binds or, for a listener on every address (0.0.0.0,
	// ::), AdvertiseIP or this host's own address (discover.go).
	Advertise string
	// AdvertiseIP is the host advertised, with the Listen port, when
	// Advertise is empty and Listen binds every address: in Kubernetes
	// the pod's address (cmd/gannet takes it from POD_IP). Empty: the
	// first address of this host's interfaces that is not a loopback
	// one, or 127.0.0.1 when there is none.
	AdvertiseIP string
	// GossipListen is memberlist's bind address (TCP and UDP); empty means
	// the interlink port + 1.
	GossipListen string
	// Join lists seed nodes: each one's interlink address (its gossip port
	// is taken as that port + 1) or "gossip=host:port" for an explicit one.
	// A host name is looked up, and every address it has is joined (a
	// Kubernetes headless Service has one for every pod); it is looked up
	// again every FailureTimeout while the node is alone, and every 30 s
	// after (discover.go).
	Join []string
	// Resolver looks up the host names in Join; nil means
	// net.DefaultResolver.
	Resolver Resolver
	// Secret authenticates peers at handshake and keys the encryption of
	// gossip and, without TLS, of the links (doc.go); at least
	// MinSecretLen bytes. Empty is refused unless Insecure is set.
	Secret string
	// Insecure runs the node without a secret: peers are not
	// authenticated by it and gossip travels in the clear, and so do the
	// links unless they run over TLS.
	Insecure bool
	// CertFile, KeyFile and CAFile, all three or none, run every link
	// over TLS 1.3 (tls.go): this node's certificate chain and private
	// key, and the cluster CA that every node's certificate must chain
	// to, all PEM. Node.ReloadTLS reads them again.
	CertFile, KeyFile, CAFile string
	// HandshakeTimeout bounds a handshake, from connect (TLS included) to
	// the peer's proof, on both ends.
	HandshakeTimeout time.Duration
	// PendingHandshakes bounds the accepted connections that have not
	// finished their handshake; past it new ones are closed at once.
	PendingHandshakes int
	// Compression is what this node compresses its batches with.
	Compression Compression
	// CompressMin is the batch size (bytes) from which batches are
	// compressed.
	CompressMin int
	// BatchBytes flushes a lane's batch when it holds this many bytes.
	BatchBytes int
	// BatchDelay flushes a lane's batch this long after its first record;
	// reliable records go at once while none is in flight (lane.urgent).
	BatchDelay time.Duration
	// Lanes is the number of TCP connections to each peer.
	Lanes int
	// QueueLimit bounds the reliable records waiting for one peer (sent
	// and not yet acknowledged, or not yet sent).
	QueueLimit int
	// Backpressure is how long a lane may stay behind without writing
	// anything before it stops counting for Node.Behind; 0 turns holding
	// publishers back off (QoS 0 is then dropped as soon as a lane's
	// buffer is full).
	Backpressure time.Duration
	// MaxFrame bounds a frame, and a batch after decompression.
	MaxFrame int
	// FailureTimeout is about how long a silent peer takes to be declared
	// failed.
	FailureTimeout time.Duration
	// ForgetAfter is how long a failed or departed peer's routes are
	// kept for its return; 0 keeps them forever.
	ForgetAfter time.Duration
	// KeepQueued is how much longer than ForgetAfter the reliable records
	// queued for a forgotten peer are kept for its return: as long as a
	// session there can outlive its connection (the broker sets its
	// --max-session-expiry), so that a peer away for maintenance longer
	// than ForgetAfter loses nothing it was sent. 0 drops them with the
	// routes.
	KeepQueued time.Duration
	// Metrics receives the per-peer metrics; nil disables them.
	Metrics *metrics.Set
	// Logger receives the link's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig holds the defaults of every tunable.
func DefaultConfig() Config {
	return Config{
		Compression:    CompressS2,
		CompressMin:    512,
		BatchBytes:     64 << 10,
		BatchDelay:     500 * time.Microsecond,
		Lanes:          3,
		QueueLimit:     200_000,
		Backpressure:   100 * time.Millisecond,
		MaxFrame:       16 << 20,
		FailureTimeout: 3 * time.Second,
		ForgetAfter:    15 * time.Minute,

		HandshakeTimeout:  5 * time.Second,
		PendingHandshakes: 64,
	}
}

// Validate reports every setting that cannot work, named by its flag.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.NodeName != "" && len(c.NodeName) <= 128, "--node-name must be 1 to 128 bytes, got %q", c.NodeName)
	for _, a := range []struct{ flag, addr string }{{"--cluster-listen", c.Listen},
		{"--cluster-advertise", c.Advertise}, {"--gossip-listen", c.GossipListen}} {
		if a.addr == "" && a.flag != "--cluster-listen" {
			continue
		}
		_, _, err := splitPort(a.addr)
		check(err == nil, "%s must be host:port, got %q", a.flag, a.addr)
	}
	if c.AdvertiseIP != "" {
		ip, err := netip.ParseAddr(c.AdvertiseIP)
		check(err == nil && !ip.IsUnspecified(), "the address to advertise (POD_IP) must be an IP address, got %q", c.AdvertiseIP)
	}
	for _, j := range c.Join {
		_, _, err := seedGossip(j)
		check(err == nil, "--join: %v", err)
	}
	check(c.CompressMin >= 0, "the compression threshold must be >= 0, got %d", c.CompressMin)
	check(c.BatchBytes >= 512 && c.BatchBytes <= c.MaxFrame/2,
		"--interlink-batch-bytes must be between 512 and %d, got %d", c.MaxFrame/2, c.BatchBytes)
	check(c.BatchDelay >= 0 && c.BatchDelay <= time.Second, "--interlink-batch-delay must be between 0 and 1s, got %s", c.BatchDelay)
	check(c.Lanes >= 1 && c.Lanes <= 64, "--interlink-lanes must be between 1 and 64, got %d", c.Lanes)
	check(c.QueueLimit >= 1, "--interlink-queue must be at least 1, got %d", c.QueueLimit)
	check(c.Backpressure >= 0 && c.Backpressure <= time.Minute, "--interlink-backpressure must be between 0 and 1m, got %s", c.Backpressure)
	check(c.FailureTimeout >= 200*time.Millisecond, "--cluster-failure-timeout must be at least 200ms, got %s", c.FailureTimeout)
	check(c.ForgetAfter >= 0, "--cluster-forget-after must be >= 0, got %s", c.ForgetAfter)
	check(c.Compression <= CompressZstd, "unknown compression %d", c.Compression)
	switch {
	case c.Secret == "" && !c.Insecure:
		errs = append(errs, fmt.Errorf("a cluster node needs a secret of at least %d bytes (--cluster-secret-file or "+
			"GANNET_CLUSTER_SECRET), or --cluster-insecure to run the cluster without one", MinSecretLen))
	case c.Secret != "" && c.Insecure:
		errs = append(errs, errors.New("--cluster-insecure and a cluster secret: give one or the other"))
	case c.Secret != "" && len(c.Secret) < MinSecretLen:
		errs = append(errs, fmt.Errorf("the cluster secret must be at least %d bytes, got %d", MinSecretLen, len(c.Secret)))
	}
	if err := c.validateTLS(); err != nil {
		errs = append(errs, err)
	}
	check(c.HandshakeTimeout >= 10*time.Millisecond && c.HandshakeTimeout <= time.Minute,
		"--cluster-handshake-timeout must be between 10ms and 1m, got %s", c.HandshakeTimeout)
	check(c.PendingHandshakes >= 1 && c.PendingHandshakes <= 1<<16,
		"--cluster-pending-handshakes must be between 1 and 65536, got %d", c.PendingHandshakes)
	return errors.Join(errs...)
}

func splitPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return host, int(p), nil
}

// seedGossip turns a --join entry into a memberlist address.
func seedGossip(seed string) (string, int, error) {
	if g, ok := strings.CutPrefix(seed, "gossip="); ok {
		h, p, err := splitPort(g)
		if err != nil {
			return "", 0, fmt.Errorf("seed %q must be host:port or gossip=host:port", seed)
		}
		return h, p, nil
	}
	h, p, err := splitPort(seed)
	if err != nil || p == 65535 {
		return "", 0, fmt.Errorf("seed %q must be host:port or gossip=host:port", seed)
	}
	return h, p + 1, nil
}
