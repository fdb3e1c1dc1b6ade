// Command gannet runs one Gannet MQTT broker node.
//
// With no flags it listens for MQTT on :1883 and for HTTP (health checks and
// Prometheus metrics) on :8080, and keeps its data in ./data. Run
// `gannet --help` for every setting. Every flag can also be set by the
// environment variable GANNET_<FLAG> and by the key of its name in the
// --config file (config.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/gannetmq/gannet/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "passwd" {
		os.Exit(runPasswd(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "apikey" {
		os.Exit(runAPIKey(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run parses args, starts the broker and blocks until SIGINT or SIGTERM;
// SIGHUP reloads the configuration (config.go: what can change without a
// restart) and the password file, the ACL file, the JWT keys and the TLS
// certificates (the listener's and the cluster links'). --print-config
// prints the configuration to stdout instead. It returns the process exit
// code: 2 for a bad flag, setting or file, 1 for a failure to start.
func run(args []string, stdout, stderr io.Writer) int {
	st, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "gannet: %v\n", err)
		return 2
	}
	if st.printConfig {
		for _, w := range st.warnings {
			fmt.Fprintf(stderr, "gannet: warning: %s\n", w)
		}
		st.print(stdout)
		return 0
	}
	cfg, af := st.cfg, st.af
	setProcs(cfg.EventLoops) // before the chain, whose workers it counts (procs.go)
	level := new(slog.LevelVar)
	level.Set(st.level) // a reload may change it
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(stderr, opts)
	if st.format == "json" {
		h = slog.NewJSONHandler(stderr, opts)
	}
	cfg.Logger = slog.New(h)
	for _, w := range st.warnings {
		cfg.Logger.Warn(w)
	}
	if cfg.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		// The runtime collects harder as the broker nears its limit.
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}

	chain, closers, err := af.build(cfg.Logger)
	if err != nil {
		fmt.Fprintf(stderr, "gannet: %v\n", st.annotate(err))
		return 2
	}
	if chain == nil {
		cfg.Logger.Warn("no authentication configured: anyone who reaches the MQTT port can connect, " +
			"take over any client id, subscribe to # and publish anywhere (see --password-file and --acl-file)")
	} else {
		defer chain.Close()
		for _, c := range closers {
			defer c.Close()
		}
		cfg.Auth = chain
	}

	rl := &reloader{args: args, cur: st, level: level, log: cfg.Logger}
	cfg.Reload = func() error { return rl.reload("source", "api") }
	srv, err := server.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "gannet: %v\n", st.annotate(err))
		return 2
	}
	rl.srv = srv
	// Catch the signals before Start: /readyz turns 200 inside Start, and a
	// SIGTERM sent as soon as it does must stop the broker cleanly rather
	// than kill the process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	if err := srv.Start(); err != nil {
		cfg.Logger.Error("cannot start", "err", err)
		return 1
	}
	var got os.Signal
	for got = range sig {
		if got != syscall.SIGHUP {
			break
		}
		_ = rl.reload("signal", got.String()) // logged
	}
	cfg.Logger.Info("shutting down", "signal", got.String())
	drainOnTerm(srv, &cfg, got, sig) // SIGTERM drains first (admin.go)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		cfg.Logger.Error("shutdown", "err", err)
		return 1
	}
	return 0
}

// parseFlags builds the broker's settings from the command line, the
// GANNET_* environment variables and the --config file, in that order of
// precedence (config.go). Usage and flag errors go to out.
func parseFlags(args []string, out io.Writer) (*settings, error) {
	cfg := server.DefaultConfig()
	af := new(authFlags)
	fs := flag.NewFlagSet("gannet", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, `Usage: gannet [flags]
       gannet passwd [-c] [-D] [-b] [-H algorithm] [-I iterations] FILE USER [PASSWORD]
       gannet apikey add|delete|list --file FILE [--name NAME] [--role read|write]

Gannet is a clustered MQTT broker (MQTT 3.1, 3.1.1 and 5.0). With no flags it
serves MQTT on :1883 and HTTP on :8080 (/metrics in Prometheus format,
/healthz, /readyz) and keeps its data in ./data.

Flags:
`)
		fs.PrintDefaults()
	}

	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "MQTT TCP listen `address`")
	fs.StringVar(&cfg.WSListen, "ws-listen", "", "MQTT over WebSocket listen `address` (conventionally :8083; path /mqtt, subprotocol mqtt or mqttv3.1); empty: off")
	fs.StringVar(&cfg.HTTPListen, "http-listen", cfg.HTTPListen, "HTTP listen `address` for /metrics, /healthz, /readyz, the admin API /api/v1/ and the dashboard at /; without --api-key-file GET /api/v1/ and /metrics are open to whoever reaches it: put it on a private interface (e.g. 10.0.0.5:8080 or 127.0.0.1:8080); empty disables it")
	fs.StringVar(&cfg.HTTPTLSCertFile, "http-tls-cert", "", "certificate `file` (PEM chain) that makes the HTTP listener serve HTTPS only; reloaded on SIGHUP")
	fs.StringVar(&cfg.HTTPTLSKeyFile, "http-tls-key", "", "private key `file` (PEM) of --http-tls-cert; reloaded on SIGHUP")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` for persistent state")
	durability := fs.String("durability", string(cfg.Durability), "when a QoS 1/2 publish is acknowledged: sync (after its write is fsynced), batch (after the write; an OS crash or power loss can lose the last --sync-interval) or none (memory only)")
	fs.DurationVar(&cfg.SyncInterval, "sync-interval", cfg.SyncInterval, "how often --durability=batch fsyncs the store's log")
	fs.Uint64Var(&cfg.MinFreeDisk, "min-free-disk", cfg.MinFreeDisk, "free `bytes` on the data volume below which QoS 1/2 publishes are refused (0x97) until space returns")
	fs.DurationVar(&cfg.PurgeInterval, "purge-interval", cfg.PurgeInterval, "how often expired messages are removed from offline sessions and the retained store")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	format := fs.String("log-format", "text", "log `format`: text or json")

	fs.IntVar(&cfg.EventLoops, "event-loops", cfg.EventLoops, "number of network event loops; 0 means one per CPU")
	fs.IntVar(&cfg.ReadBufferSize, "read-buffer", cfg.ReadBufferSize, "read buffer per event loop, in `bytes`")
	fs.IntVar(&cfg.WriteBufferSize, "write-buffer", cfg.WriteBufferSize, "initial outbound buffer per connection, in `bytes`")
	fs.IntVar(&cfg.MaxPacketSize, "max-packet-size", cfg.MaxPacketSize, "largest packet accepted from a client, in `bytes`; announced to MQTT 5 clients")
	fs.IntVar(&cfg.ReceiveMaximum, "receive-maximum", cfg.ReceiveMaximum, "unacknowledged QoS 1/2 publishes a client may send before it is disconnected (0x93)")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", cfg.MaxInflight, "outbound QoS 1/2 messages awaiting acknowledgement per session (also capped by the client's receive maximum)")
	fs.IntVar(&cfg.MaxQueuedMessages, "max-queued-messages", cfg.MaxQueuedMessages, "QoS 1/2 messages queued per session while it is offline or its window is full; the oldest is dropped beyond this")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", cfg.MaxSessions, "sessions the broker holds, connected or not; past it a CONNECT asking for a new persistent session is refused with 0x97 (3 for MQTT 3); clean and resumed sessions are not; 0: no bound")
	fs.Var(sizeFlag{&cfg.MemoryLimit}, "memory-limit", "memory the broker may use, e.g. 2GiB (also the Go runtime's limit, unless GOMEMLIMIT is set): past 90% of it new connections and new persistent sessions are refused (0x97 / 3) and QoS 0 to slow receivers is dropped first, until it is back under 80%; 0: none (default 0)")
	fs.Float64Var(&cfg.MaxPublishRate, "max-publish-rate", cfg.MaxPublishRate, "PUBLISH packets per second per client (bursts of one second's worth); past it the client's input is read more slowly, and one that sends 256 KiB more while held is disconnected (0x96 for MQTT 5); a client that connects again takes up its buckets where it left them; 0: no bound")
	fs.IntVar(&cfg.FlappingMaxCount, "flapping-max-count", cfg.FlappingMaxCount, "a client id that connects more than this many times within --flapping-window is banned for --flapping-ban (CONNACK 0x8A, MQTT 3: 5; a ban the API lists and lifts, kept and sent to the cluster); 0: off")
	fs.DurationVar(&cfg.FlappingWindow, "flapping-window", cfg.FlappingWindow, "the window --flapping-max-count counts connections in")
	fs.DurationVar(&cfg.FlappingBan, "flapping-ban", cfg.FlappingBan, "how long a flapping client id is banned")
	fs.Float64Var(&cfg.MaxPublishBytesRate, "max-publish-bytes-rate", cfg.MaxPublishBytesRate, "PUBLISH, SUBSCRIBE and UNSUBSCRIBE `bytes` per second per client, as --max-publish-rate; 0: no bound")
	fs.IntVar(&cfg.MaxRetained, "max-retained", cfg.MaxRetained, "retained messages this node's clients may leave; past it a message on a new topic is delivered but not retained (counted); 0: no bound")
	fs.Int64Var(&cfg.MaxRetainedBytes, "max-retained-bytes", cfg.MaxRetainedBytes, "`bytes` (topics and payloads) of retained messages; past it as --max-retained; 0: no bound")
	fs.Int64Var(&cfg.MaxQueuedBytes, "max-queued-bytes", cfg.MaxQueuedBytes, "`bytes` a session's queue may hold (topic, payload and about 128 bytes per message); the oldest is dropped beyond this; 0: no bound")
	fs.Int64Var(&cfg.MaxQueuedBytesTotal, "max-queued-bytes-total", cfg.MaxQueuedBytesTotal, "`bytes` all session queues of the node may hold together; past it see --queue-full-policy; 0: no bound")
	queueFull := fs.String("queue-full-policy", string(cfg.QueueFullPolicy), "past --max-queued-bytes-total: drop-oldest (the receiving session's oldest messages make room) or refuse (QoS 1/2 publishes get 0x97, MQTT 3 publishers are disconnected)")
	fs.IntVar(&cfg.TopicAliasMaximum, "topic-alias-maximum", cfg.TopicAliasMaximum, "topic aliases an MQTT 5 client may use towards the broker")
	fs.IntVar(&cfg.TopicAliasOut, "topic-alias-out", cfg.TopicAliasOut, "topic aliases the broker sets towards an MQTT 5 client that allows them, for the topics it received most recently (at most 1024); 0: none")
	fs.DurationVar(&cfg.MaxSessionExpiry, "max-session-expiry", cfg.MaxSessionExpiry, "longest session expiry granted; also the expiry of MQTT 3 persistent sessions")
	fs.DurationVar(&cfg.MinKeepAlive, "min-keepalive", cfg.MinKeepAlive, "shortest keepalive an MQTT 5 client may use (raised to this and announced); 0: no bound")
	fs.DurationVar(&cfg.MaxKeepAlive, "max-keepalive", cfg.MaxKeepAlive, "longest keepalive a client may use: an MQTT 5 client's is lowered to this and announced, an MQTT 3 client (keepalive 0 included) is closed after 1.5 times this without a packet; 0: no bound")
	fs.DurationVar(&cfg.ServerKeepAlive, "server-keepalive", cfg.ServerKeepAlive, "keepalive imposed on every MQTT 5 client, announced in CONNACK; 0: the client's own")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", cfg.ConnectTimeout, "time a new connection has to send CONNECT; each gets up to a quarter more, spread over the connections, so that a storm of silent ones is not closed in one burst")
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "client connections at most, all listeners together; past it a CONNECT is answered 0x97 quota exceeded (3 for MQTT 3); 0: bounded only by the open-file limit (less 1024 kept free)")
	fs.IntVar(&cfg.MaxConnectionsPerIP, "max-connections-per-ip", cfg.MaxConnectionsPerIP, "client connections at most from one source address (the PROXY header's where one is trusted); past it as --max-connections; 0: no bound")
	fs.DurationVar(&cfg.TCPKeepAlive, "tcp-keepalive", cfg.TCPKeepAlive, "idle time after which the kernel probes a client's TCP connection, so that one whose peer vanished without a word is closed; 0: no probes")
	fs.IntVar(&cfg.MaxSubscriptions, "max-subscriptions", cfg.MaxSubscriptions, "subscriptions per session; past it SUBACK says 0x97 quota exceeded (0x80 for MQTT 3), and a SUBSCRIBE listing more filters than this ends the connection (DISCONNECT 0x97; MQTT 3: a close); 0: no bound")
	fs.IntVar(&cfg.MaxTopicLevels, "max-topic-levels", cfg.MaxTopicLevels, "levels ('/'-separated) of a topic a client publishes to or a filter it subscribes to; past it PUBACK/PUBREC 0x90 (MQTT 5 QoS 1/2; otherwise dropped, acknowledged for MQTT 3) or SUBACK 0x8F/0x80; 0: no bound")
	fs.IntVar(&cfg.MaxTopicLength, "max-topic-length", cfg.MaxTopicLength, "`bytes` of a topic or filter, refused as for --max-topic-levels; 0: the protocol's 65535")
	fs.IntVar(&cfg.MaxClientIDLength, "max-client-id-length", cfg.MaxClientIDLength, "`bytes` of a client id; past it CONNACK 0x85 (2 for MQTT 3)")
	fs.Float64Var(&cfg.MaxConnectionRate, "max-connection-rate", cfg.MaxConnectionRate, "new connections per second on each listener (a token bucket, bursts of one second's worth); past it a connection is closed before anything is read; 0: no bound")
	fs.IntVar(&cfg.OutboundHighWater, "outbound-high-water", cfg.OutboundHighWater, "outbound `bytes` buffered for a connection past which QoS 0 messages to it are dropped and QoS 1/2 wait in its session queue")
	fs.DurationVar(&cfg.SlowTimeout, "slow-timeout", cfg.SlowTimeout, "close a connection that stays above the outbound high-water mark this long; 0: never")
	fs.DurationVar(&cfg.WriteDelay, "write-delay", cfg.WriteDelay, "coalesce writes to busy receivers while an event loop is busy (see --write-delay-busy): a connection written less than this long ago gets its next deliveries together when this much time has passed; connections waiting for an answer, and loops with less traffic, are written at once; 0: write at once")
	fs.IntVar(&cfg.WriteDelayBusy, "write-delay-busy", cfg.WriteDelayBusy, "an event loop is busy, and --write-delay applies, while more than this many of its writes within one --write-delay (and for the next --write-delay) go to receivers written less than --write-delay before; 0: always")
	shared := fs.String("shared-policy", string(cfg.SharedPolicy), "which member of a shared subscription group gets a message: round-robin, random or hash (by publisher)")
	fs.DurationVar(&cfg.SysInterval, "sys-interval", cfg.SysInterval, "how often $SYS/broker statistics are published; 0 disables them")
	fs.BoolVar(&cfg.ProxyProtocol, "proxy-protocol", false, "expect a PROXY protocol v1/v2 header on every MQTT connection (behind HAProxy or a load balancer); anyone reaching the port can then claim any address: prefer --proxy-protocol-from")
	fs.BoolVar(&cfg.ProxyProtocolCertCN, "proxy-protocol-cert-cn", false, "take a client certificate's CN from the PROXY v2 header of a load balancer that terminated TLS and verified the certificate (HAProxy send-proxy-v2-ssl-cn), for --auth-cert cn and ACLs as if the broker had verified it; needs --proxy-protocol-from")

	cf := registerClusterFlags(fs)
	af.register(fs)
	tf := new(tlsFlags)
	tf.register(fs)
	registerAdminFlags(fs, &cfg)
	fs.String("config", "", "read settings from this TOML `file`: each key is a flag's name (max-inflight = 64, listen = \":1883\"); "+
		"flags and GANNET_* environment variables take precedence over it; SIGHUP reloads it (deploy/gannet.toml shows every setting)")
	printConfig := fs.Bool("print-config", false, "print every setting's effective value and where it came from (default, flag, environment or config file line), secrets masked, and exit")

	if err := removedClusterFlags(args); err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	ly, err := loadLayers(fs, af, os.Environ())
	if err != nil {
		return nil, err
	}
	st := &settings{af: af, printConfig: *printConfig, layers: ly}
	err = func() error {
		cfg.SharedPolicy = server.SharedPolicy(*shared)
		cfg.QueueFullPolicy = server.QueueFullPolicy(*queueFull)
		ic, err := cf.config(os.Getenv)
		if err != nil {
			return err
		}
		cfg.Cluster = ic
		cfg.Durability = server.Durability(*durability)
		if err := st.level.UnmarshalText([]byte(*level)); err != nil {
			return fmt.Errorf("--log-level must be debug, info, warn or error, got %q", *level)
		}
		st.format = strings.ToLower(*format)
		if st.format != "text" && st.format != "json" {
			return fmt.Errorf("--log-format must be text or json, got %q", *format)
		}
		if err := tf.apply(&cfg); err != nil {
			return err
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		return af.validate()
	}()
	if err != nil {
		return nil, st.annotate(err)
	}
	st.cfg = cfg
	return st, nil
}
