package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/interlink"
)

// SharedPolicy chooses which member of a shared subscription group receives a
// message.
type SharedPolicy string

// Shared subscription policies.
const (
	SharedRoundRobin SharedPolicy = "round-robin"
	SharedRandom     SharedPolicy = "random"
	SharedHash       SharedPolicy = "hash" // by publisher client id: one publisher sticks to one member
)

// Durability says when a QoS 1/2 publish is acknowledged relative to the
// disk (persist/doc.go states each promise).
type Durability string

// Durability modes.
const (
	DurabilitySync  Durability = "sync"  // after the fsync of the write that holds it (default)
	DurabilityBatch Durability = "batch" // after the write, before its fsync
	DurabilityNone  Durability = "none"  // memory only; nothing survives a restart
)

// Config is everything a broker needs to run. cmd/gannet builds it from
// flags; tests build it directly. The zero value is not usable: start from
// DefaultConfig.
type Config struct {
	// Listen is the MQTT TCP listen address.
	Listen string
	// WSListen is the address of the MQTT over WebSocket listener (path
	// /mqtt); empty: none.
	WSListen string
	// HTTPListen is the address of the HTTP listener (health, metrics). Empty
	// disables it.
	HTTPListen string
	// MaxConnections bounds the client connections, all listeners
	// together; MaxConnectionsPerIP those from one source address;
	// MaxConnectionRate the new connections per second on each listener.
	// 0: no bound (limits.go).
	MaxConnections      int
	MaxConnectionsPerIP int
	MaxConnectionRate   float64
	// TCPKeepAlive is the idle time after which the kernel probes a
	// client's TCP connection (SO_KEEPALIVE), so that a peer that vanished
	// without a FIN is found; 0: no probes.
	TCPKeepAlive time.Duration
	// MaxSubscriptions bounds a session's subscriptions (0: no bound);
	// MaxTopicLevels and MaxTopicLength bound the topics a client may
	// publish to or subscribe to (levels: separated by '/'; length in
	// bytes; 0: no bound beyond the protocol's); MaxClientIDLength the
	// client identifiers it may use (bytes).
	MaxSubscriptions  int
	MaxTopicLevels    int
	MaxTopicLength    int
	MaxClientIDLength int
	// MaxQueuedBytes bounds one session's queue in bytes (topic, payload
	// and about 128 bytes of bookkeeping per message), beside
	// MaxQueuedMessages; MaxQueuedBytesTotal bounds every queue of the
	// node together, and QueueFullPolicy says what happens past it. 0: no
	// bound.
	MaxQueuedBytes      int64
	MaxQueuedBytesTotal int64
	QueueFullPolicy     QueueFullPolicy
	// MaxSessions bounds the sessions the broker holds, connected or
	// not: past it a CONNECT asking for a new persistent session is
	// refused (0x97 / 3); clean ones and resumed ones are not. 0: no
	// bound.
	MaxSessions int
	// MaxRetained and MaxRetainedBytes bound the retained messages this
	// node's clients may leave (count; topics and payloads in bytes): a
	// message past them is delivered but not retained. 0: no bound.
	MaxRetained      int
	MaxRetainedBytes int64
	// MemoryLimit is the memory the broker may use (bytes): past 90% of
	// it, it sheds load until it is back under 80% (memory.go). 0: none.
	// cmd/gannet also gives it to the Go runtime as its memory limit.
	MemoryLimit int64
	// MaxPublishRate and MaxPublishBytesRate bound each client's publishes
	// per second, in messages and bytes, the bytes of its SUBSCRIBE and
	// UNSUBSCRIBE packets counted too (ratelimit.go). 0: none.
	MaxPublishRate      float64
	MaxPublishBytesRate float64
	// FlappingMaxCount bans for FlappingBan a client id that connects more
	// than this many times within FlappingWindow (flapping.go). 0: off.
	FlappingMaxCount int
	FlappingWindow   time.Duration
	FlappingBan      time.Duration
	// HTTPTLSCertFile and HTTPTLSKeyFile make the HTTP listener serve
	// HTTPS only, with this certificate chain and key (PEM; reloaded by
	// ReloadTLS). Both or neither.
	HTTPTLSCertFile, HTTPTLSKeyFile string
	// APIKeyFile is the file of the keys that open the HTTP API
	// (apikey package; reloaded by ReloadAPIKeys): /api/v1/ then asks
	// for a read key for GET and a write key for the rest. Empty: GET
	// /api/v1/ is open and every other method refused (apiauth.go).
	APIKeyFile string
	// MetricsAuth asks for a read key for /metrics too; needs APIKeyFile.
	MetricsAuth bool
	// DrainLBGrace is how long a drain (drain.go) leaves /readyz failing
	// before it disconnects the first client, for load balancers to stop
	// sending clients; DrainRate how many clients a second it then
	// disconnects (0: all at once); DrainRedirect the Server Reference
	// MQTT 5 clients are given (empty: none); DrainTimeout how long
	// cmd/gannet lets a drain run after SIGTERM before it stops the
	// broker (0: SIGTERM stops at once).
	DrainLBGrace  time.Duration
	DrainRate     float64
	DrainRedirect string
	DrainTimeout  time.Duration
	// DataDir is where persistent state lives.
	DataDir string
	// Durability chooses when acknowledged messages are on disk.
	Durability Durability
	// SyncInterval is how often batch durability fsyncs the log.
	SyncInterval time.Duration
	// MinFreeDisk is the free space (bytes) below which the store refuses
	// writes, and the broker QoS 1/2 publishes, until space returns.
	MinFreeDisk uint64
	// PurgeInterval is how often expired messages are removed from offline
	// sessions and the retained store.
	PurgeInterval time.Duration
	// connLogBurst, when tests set it, replaces the lines of one kind a
	// connection log window lets through (logthrottle.go).
	connLogBurst int
	// storeFS replaces the real file system in tests.
	storeFS vfs.FS
	// storeMaxPending, when tests set it, replaces persist's bound on
	// writes waiting for the disk.
	storeMaxPending int

	// Auth decides who may connect, publish and subscribe; nil lets
	// everyone do anything (cmd/gannet warns). The broker does not own
	// it: the caller closes it after Shutdown.
	Auth *auth.Chain

	// EventLoops is the number of gnet event loops; 0 means one per CPU.
	EventLoops int
	// ReadBufferSize is the per-event-loop read buffer capacity in bytes.
	ReadBufferSize int
	// WriteBufferSize is the per-connection outbound buffer capacity hint.
	WriteBufferSize int

	// MaxPacketSize is the largest packet accepted from a client (bytes,
	// fixed header included). It is announced to v5 clients in CONNACK.
	MaxPacketSize int
	// ReceiveMaximum is how many inbound QoS 1/2 publishes a client may have
	// unacknowledged; exceeding it is a protocol violation (0x93).
	ReceiveMaximum int
	// MaxInflight caps the outbound inflight window per session; the window
	// is the smaller of this and the client's receive maximum.
	MaxInflight int
	// MaxQueuedMessages bounds each session's queue of QoS 1/2 messages that
	// wait for a connection or for inflight room. When full, the oldest is
	// dropped and counted.
	MaxQueuedMessages int
	// TopicAliasMaximum is the number of topic aliases a v5 client may use
	// towards the broker.
	TopicAliasMaximum int
	// TopicAliasOut is the most topic aliases the broker sets towards one
	// MQTT 5 client (the lower of this and the client's Topic Alias
	// Maximum); 0 sends no aliases.
	TopicAliasOut int
	// MaxSessionExpiry caps the session expiry interval a client may ask for.
	MaxSessionExpiry time.Duration

	// MinKeepAlive and MaxKeepAlive bound the keepalive a client may ask for;
	// outside the bounds a v5 client is told the server keepalive. A v3
	// client asking for more than MaxKeepAlive is held to MaxKeepAlive too.
	// Zero disables each bound.
	MinKeepAlive time.Duration
	MaxKeepAlive time.Duration
	// ServerKeepAlive, when non-zero, overrides every v5 client's keepalive
	// and is announced in CONNACK.
	ServerKeepAlive time.Duration
	// ConnectTimeout closes a connection that has not sent CONNECT in time.
	ConnectTimeout time.Duration

	// OutboundHighWater is the outbound buffer level (bytes) past which a
	// connection counts as slow: QoS 0 messages to it are dropped and QoS 1/2
	// wait in its session queue.
	OutboundHighWater int
	// SlowTimeout closes a connection that stays above OutboundHighWater for
	// this long. Zero never closes.
	SlowTimeout time.Duration
	// WriteDelay coalesces writes to busy connections on busy loops: a
	// connection written less than this long ago gets its next bytes when
	// that much time has passed, with everything else that came for it
	// meanwhile, in one write. A connection that was quiet, or on a loop
	// with less traffic, is written at once. Zero writes every unit of
	// work's bytes at once.
	WriteDelay time.Duration
	// WriteDelayBusy is when a loop is busy: more than this many of its
	// writes within one WriteDelay (and for the next WriteDelay) went to
	// receivers written less than WriteDelay before. Zero: always.
	WriteDelayBusy int

	// SharedPolicy picks the receiver in a shared subscription group.
	SharedPolicy SharedPolicy

	// SysInterval is how often $SYS statistics are published; zero disables.
	SysInterval time.Duration

	// Cluster, when set, makes this broker a node of a cluster.
	Cluster *interlink.Config
	// ProxyProtocol makes the MQTT listeners expect a PROXY protocol v1 or
	// v2 header on every connection (behind HAProxy or a cloud load
	// balancer), so that the broker sees the client's own address.
	ProxyProtocol bool
	// ProxyProtocolFrom, when not empty, trusts the PROXY protocol header
	// from these address ranges only (the load balancers): it is required
	// from them and refused from everyone else, who could otherwise claim
	// any address. It applies to both listeners and implies ProxyProtocol.
	ProxyProtocolFrom []netip.Prefix
	// ProxyProtocolCertCN takes a client certificate's CN from the PROXY
	// v2 header of a balancer in ProxyProtocolFrom that terminated TLS and
	// verified the certificate (HAProxy's send-proxy-v2-ssl-cn): the
	// authentication chain and ACL patterns see it as they see a
	// certificate the broker verified itself. It needs ProxyProtocolFrom,
	// since a header from anyone else could claim any name.
	ProxyProtocolCertCN bool

	// TLS, when set, opens a second MQTT listener that speaks TLS
	// (tls.go). Nil: none.
	TLS *TLSConfig

	// Logger receives the broker's logs. Nil means slog.Default().
	Logger *slog.Logger

	// Reload, when set, reloads the broker's configuration as SIGHUP
	// does (cmd/gannet: the config file and environment, then the
	// certificate, password, ACL and key files), logs what changed and
	// returns why anything was not reloaded; a setting that only a
	// restart can change leaves the running configuration as it was.
	// It is what POST /api/v1/reload calls; nil: reloading is not
	// offered. Safe to call from any goroutine but an event loop's;
	// calls are serialised.
	Reload func() error
}

// DefaultConfig returns the configuration that `gannet` runs with when given
// no flags.
func DefaultConfig() Config {
	return Config{
		Listen:              ":1883",
		HTTPListen:          ":8080",
		DataDir:             "./data",
		Durability:          DurabilitySync,
		SyncInterval:        100 * time.Millisecond,
		MinFreeDisk:         64 << 20,
		PurgeInterval:       time.Minute,
		EventLoops:          0,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
		MaxPacketSize:       1 << 20,
		ReceiveMaximum:      1024,
		MaxInflight:         1024,
		MaxQueuedMessages:   10_000,
		MaxSubscriptions:    1000,
		MaxQueuedBytes:      16 << 20,
		MaxQueuedBytesTotal: 1 << 30,
		MaxRetained:         1_000_000,
		MaxRetainedBytes:    1 << 30,
		QueueFullPolicy:     QueueFullDropOldest,
		TCPKeepAlive:        5 * time.Minute,
		MaxTopicLevels:      128,
		MaxTopicLength:      4096,
		MaxClientIDLength:   1024,
		TopicAliasMaximum:   64,
		TopicAliasOut:       32,
		MaxSessionExpiry:    7 * 24 * time.Hour,
		MinKeepAlive:        0,
		MaxKeepAlive:        18 * time.Hour,
		ConnectTimeout:      10 * time.Second,
		FlappingWindow:      time.Minute,
		FlappingBan:         5 * time.Minute,
		OutboundHighWater:   4 << 20,
		SlowTimeout:         30 * time.Second,
		WriteDelay:          time.Millisecond,
		WriteDelayBusy:      20,
		SharedPolicy:        SharedRoundRobin,
		SysInterval:         10 * time.Second,
		DrainLBGrace:        5 * time.Second,
		DrainRate:           500,
		DrainTimeout:        30 * time.Second,
	}
}

// Validate reports the first setting that cannot work, naming it as the
// flag that sets it.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	for _, a := range []struct{ flag, addr string }{{"--listen", c.Listen}, {"--http-listen", c.HTTPListen}, {"--ws-listen", c.WSListen}} {
		if a.addr == "" && a.flag != "--listen" {
			continue // disabled
		}
		_, port, err := net.SplitHostPort(a.addr)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		check(err == nil, "%s must be host:port (e.g. :1883 or 127.0.0.1:1883), got %q", a.flag, a.addr)
	}
	check((c.HTTPTLSCertFile == "") == (c.HTTPTLSKeyFile == ""), "--http-tls-cert and --http-tls-key go together")
	check(c.HTTPTLSCertFile == "" || c.HTTPListen != "", "--http-tls-cert needs --http-listen")
	check(c.APIKeyFile == "" || c.HTTPListen != "", "--api-key-file needs --http-listen")
	check(!c.MetricsAuth || c.APIKeyFile != "", "--metrics-auth needs --api-key-file: /metrics then asks for a read key from it")
	check(c.DrainLBGrace >= 0, "--drain-lb-grace must be >= 0, got %s", c.DrainLBGrace)
	check(c.DrainRate >= 0, "--drain-rate must be >= 0, got %g", c.DrainRate)
	check(c.DrainTimeout >= 0, "--drain-timeout must be >= 0, got %s", c.DrainTimeout)
	check(len(c.DrainRedirect) <= 65535 && utf8.ValidString(c.DrainRedirect) && !strings.ContainsRune(c.DrainRedirect, 0),
		"--drain-redirect must be UTF-8 without NUL, at most 65535 bytes (an MQTT string)")
	check(c.MaxConnections >= 0, "--max-connections must be >= 0, got %d", c.MaxConnections)
	check(c.MaxConnectionsPerIP >= 0, "--max-connections-per-ip must be >= 0, got %d", c.MaxConnectionsPerIP)
	check(c.MaxConnectionRate >= 0, "--max-connection-rate must be >= 0, got %g", c.MaxConnectionRate)
	check(c.TCPKeepAlive >= 0, "--tcp-keepalive must be >= 0, got %s", c.TCPKeepAlive)
	check(c.MemoryLimit == 0 || c.MemoryLimit >= 64<<20, "--memory-limit must be 0 or at least 64 MiB, got %d", c.MemoryLimit)
	check(c.MaxPublishRate >= 0, "--max-publish-rate must be >= 0, got %g", c.MaxPublishRate)
	check(c.MaxPublishBytesRate >= 0, "--max-publish-bytes-rate must be >= 0, got %g", c.MaxPublishBytesRate)
	check(c.FlappingMaxCount >= 0, "--flapping-max-count must be >= 0, got %d", c.FlappingMaxCount)
	check(c.FlappingWindow > 0, "--flapping-window must be > 0, got %s", c.FlappingWindow)
	check(c.FlappingBan > 0, "--flapping-ban must be > 0, got %s", c.FlappingBan)
	check(c.MaxRetained >= 0, "--max-retained must be >= 0, got %d", c.MaxRetained)
	check(c.MaxRetainedBytes >= 0, "--max-retained-bytes must be >= 0, got %d", c.MaxRetainedBytes)
	check(c.MaxSessions >= 0, "--max-sessions must be >= 0, got %d", c.MaxSessions)
	check(c.MaxQueuedBytes >= 0, "--max-queued-bytes must be >= 0, got %d", c.MaxQueuedBytes)
	check(c.MaxQueuedBytesTotal >= 0, "--max-queued-bytes-total must be >= 0, got %d", c.MaxQueuedBytesTotal)
	check(c.QueueFullPolicy == QueueFullDropOldest || c.QueueFullPolicy == QueueFullRefuse,
		"--queue-full-policy must be drop-oldest or refuse, got %q", c.QueueFullPolicy)
	check(c.MaxSubscriptions >= 0, "--max-subscriptions must be >= 0, got %d", c.MaxSubscriptions)
	check(c.MaxTopicLevels >= 0, "--max-topic-levels must be >= 0, got %d", c.MaxTopicLevels)
	check(c.MaxTopicLength >= 0 && c.MaxTopicLength <= 65535, "--max-topic-length must be between 0 and 65535 bytes, got %d", c.MaxTopicLength)
	check(c.MaxClientIDLength >= 23 && c.MaxClientIDLength <= 65535,
		"--max-client-id-length must be between 23 (every client id MQTT 3.1.1 requires a broker to accept) and 65535 bytes, got %d", c.MaxClientIDLength)
	check(c.EventLoops >= 0, "--event-loops must be >= 0, got %d", c.EventLoops)
	check(c.ReadBufferSize >= 512, "--read-buffer must be at least 512 bytes, got %d", c.ReadBufferSize)
	check(c.WriteBufferSize >= 512, "--write-buffer must be at least 512 bytes, got %d", c.WriteBufferSize)
	check(c.MaxPacketSize >= 64 && c.MaxPacketSize <= 268_435_460,
		"--max-packet-size must be between 64 and 268435460 bytes, got %d", c.MaxPacketSize)
	check(c.ReceiveMaximum >= 1 && c.ReceiveMaximum <= 65535,
		"--receive-maximum must be between 1 and 65535, got %d", c.ReceiveMaximum)
	check(c.MaxInflight >= 1 && c.MaxInflight <= 65535,
		"--max-inflight must be between 1 and 65535, got %d", c.MaxInflight)
	check(c.MaxQueuedMessages >= 0, "--max-queued-messages must be >= 0, got %d", c.MaxQueuedMessages)
	check(c.TopicAliasMaximum >= 0 && c.TopicAliasMaximum <= 65535,
		"--topic-alias-maximum must be between 0 and 65535, got %d", c.TopicAliasMaximum)
	check(c.TopicAliasOut >= 0 && c.TopicAliasOut <= maxTopicAliasOut,
		"--topic-alias-out must be between 0 and %d, got %d", maxTopicAliasOut, c.TopicAliasOut)
	check(c.MaxSessionExpiry >= 0 && c.MaxSessionExpiry <= 0xFFFFFFFF*time.Second,
		"--max-session-expiry must be between 0 and 4294967295s, got %s", c.MaxSessionExpiry)
	check(c.MinKeepAlive >= 0 && c.MaxKeepAlive >= 0 && c.MinKeepAlive <= 65535*time.Second && c.MaxKeepAlive <= 65535*time.Second,
		"--min-keepalive and --max-keepalive must be between 0 and 65535s")
	check(c.MaxKeepAlive == 0 || c.MinKeepAlive <= c.MaxKeepAlive,
		"--min-keepalive (%s) must not exceed --max-keepalive (%s)", c.MinKeepAlive, c.MaxKeepAlive)
	check(c.ServerKeepAlive >= 0 && c.ServerKeepAlive <= 65535*time.Second,
		"--server-keepalive must be between 0 and 65535s, got %s", c.ServerKeepAlive)
	check(c.ConnectTimeout > 0, "--connect-timeout must be positive, got %s", c.ConnectTimeout)
	check(c.OutboundHighWater >= 1024, "--outbound-high-water must be at least 1024 bytes, got %d", c.OutboundHighWater)
	check(c.WriteDelay >= 0 && c.WriteDelay <= time.Second, "--write-delay must be between 0 and 1s, got %s", c.WriteDelay)
	check(c.WriteDelayBusy >= 0 && c.WriteDelayBusy <= 1<<20, "--write-delay-busy must be between 0 and 1048576 writes, got %d", c.WriteDelayBusy)
	check(c.SlowTimeout >= 0, "--slow-timeout must be >= 0, got %s", c.SlowTimeout)
	switch c.SharedPolicy {
	case SharedRoundRobin, SharedRandom, SharedHash:
	default:
		errs = append(errs, fmt.Errorf("--shared-policy must be round-robin, random or hash, got %q", c.SharedPolicy))
	}
	check(c.SysInterval >= 0, "--sys-interval must be >= 0, got %s", c.SysInterval)
	switch c.Durability {
	case DurabilitySync, DurabilityBatch, DurabilityNone:
	default:
		errs = append(errs, fmt.Errorf("--durability must be sync, batch or none, got %q", c.Durability))
	}
	check(c.Durability == DurabilityNone || c.DataDir != "", "--data-dir must not be empty unless --durability=none")
	check(c.SyncInterval > 0, "--sync-interval must be positive, got %s", c.SyncInterval)
	check(c.PurgeInterval > 0, "--purge-interval must be positive, got %s", c.PurgeInterval)
	check(!c.ProxyProtocolCertCN || len(c.ProxyProtocolFrom) > 0,
		"--proxy-protocol-cert-cn needs --proxy-protocol-from: the CN in a PROXY header is trusted from the load balancers only")
	if c.TLS != nil {
		errs = append(errs, c.TLS.validate()...)
	}
	if c.Cluster != nil {
		if err := c.Cluster.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// QueueFullPolicy says what happens once the node's queues together hold
// MaxQueuedBytesTotal.
type QueueFullPolicy string

const (
	// QueueFullDropOldest makes room in the receiving session's queue,
	// oldest first; the publisher notices nothing.
	QueueFullDropOldest QueueFullPolicy = "drop-oldest"
	// QueueFullRefuse refuses QoS 1/2 publishes while the budget is
	// spent (PUBACK/PUBREC 0x97; MQTT 3 publishers are disconnected, as
	// they cannot be told), and queues nothing more.
	QueueFullRefuse QueueFullPolicy = "refuse"
)
