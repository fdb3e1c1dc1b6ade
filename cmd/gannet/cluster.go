package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/gannetmq/gannet/interlink"
)

// secretEnv holds the cluster secret when --cluster-secret-file does not.
const secretEnv = "GANNET_CLUSTER_SECRET"

// podIPEnv is the node's own address, advertised when --cluster-listen
// binds every address and --cluster-advertise is not set. A Kubernetes pod
// gets it from the downward API (status.podIP).
const podIPEnv = "POD_IP"

// clusterFlags are the flags that make the broker a cluster node.
type clusterFlags struct {
	ic         interlink.Config
	join       string
	resolver   string
	comp       string
	secretFile string
}

func registerClusterFlags(fs *flag.FlagSet) *clusterFlags {
	cf := &clusterFlags{ic: interlink.DefaultConfig()}
	ic := &cf.ic
	host, _ := os.Hostname()
	fs.StringVar(&ic.NodeName, "node-name", host, "this node's name, unique in the cluster")
	fs.StringVar(&ic.Listen, "cluster-listen", "", "interlink TCP listen `address`; setting it makes this broker a cluster node, which needs --cluster-secret-file or GANNET_CLUSTER_SECRET (or --cluster-insecure)")
	fs.StringVar(&ic.GossipListen, "gossip-listen", "", "membership gossip (TCP and UDP) listen `address`; default: the --cluster-listen port + 1")
	fs.StringVar(&ic.Advertise, "cluster-advertise", "", "interlink `address` peers dial to reach this node; default: --cluster-listen, or when that binds every address (0.0.0.0, ::, no host) "+
		"the address in the "+podIPEnv+" environment variable (a Kubernetes pod's, from the downward API) with the --cluster-listen port, else the first address of this host's interfaces that is not a loopback one, else 127.0.0.1 (a warning is logged)")
	fs.StringVar(&cf.join, "join", "", "comma-separated seed nodes, each its --cluster-listen `host:port` (gossip port + 1 assumed) or gossip=host:port; "+
		"a host name is looked up and every address it has is tried (a Kubernetes headless Service names every pod), "+
		"again every --cluster-failure-timeout while this node has no peer and every 30s after, so that nodes that started apart find each other")
	fs.StringVar(&cf.resolver, "join-resolver", "", "DNS server `address` (host:port) that looks up the host names in --join instead of the system's resolver (/etc/resolv.conf): "+
		"for seed names that only a DNS server of their own serves, such as Consul's on 127.0.0.1:8600")
	fs.StringVar(&cf.secretFile, "cluster-secret-file", "", fmt.Sprintf("`file` holding the secret every node of the cluster shares, at least %d bytes (trailing newlines are ignored): "+
		"peers prove it at handshake, and it keys the encryption of gossip and of the links between nodes (with --cluster-tls-* the links are TLS and the secret keys gossip). "+
		"Or put the secret in the %s environment variable (not both); never on the command line, where every local user sees it", interlink.MinSecretLen, secretEnv))
	fs.BoolVar(&ic.Insecure, "cluster-insecure", false, "run a cluster node without a secret: peers are not authenticated and links and gossip travel in the clear, "+
		"so anyone who reaches the cluster or gossip port can join, read every message and inject their own (a warning is logged at start); "+
		"with --cluster-tls-* the links stay TLS and only gossip is in the clear")
	fs.StringVar(&ic.CertFile, "cluster-tls-cert", "", "this node's certificate `file` (PEM, intermediates after the leaf) for the links to other nodes: with --cluster-tls-key and --cluster-tls-ca "+
		"the links between nodes are TLS 1.3 with certificates from the cluster CA on both sides, and the secret keys gossip; every node of the cluster needs the three; reloaded on SIGHUP")
	fs.StringVar(&ic.KeyFile, "cluster-tls-key", "", "the private key `file` (PEM) of --cluster-tls-cert; reloaded on SIGHUP")
	fs.StringVar(&ic.CAFile, "cluster-tls-ca", "", "the cluster CA's certificates `file` (PEM): every node's certificate must chain to it, and any certificate it issued is taken as a node "+
		"of this cluster, so give the cluster a CA of its own; host names are not checked; reloaded on SIGHUP")
	fs.DurationVar(&ic.HandshakeTimeout, "cluster-handshake-timeout", ic.HandshakeTimeout, "time a connecting peer has to prove the secret (and its certificate, with --cluster-tls-*); also bounds this node's own handshakes")
	fs.IntVar(&ic.PendingHandshakes, "cluster-pending-handshakes", ic.PendingHandshakes, "connections from peers that have not yet proved the secret; past it new ones are closed at once")
	fs.StringVar(&cf.comp, "interlink-compression", ic.Compression.String(), "how batches to peers are compressed: none, s2 or zstd")
	fs.IntVar(&ic.BatchBytes, "interlink-batch-bytes", ic.BatchBytes, "a batch to a peer is written when it holds this many `bytes`")
	fs.DurationVar(&ic.BatchDelay, "interlink-batch-delay", ic.BatchDelay, "or this long after its first record")
	fs.IntVar(&ic.Lanes, "interlink-lanes", ic.Lanes, "TCP connections per peer: the first carries control records, the others messages; one publisher's messages always take the same one")
	fs.IntVar(&ic.QueueLimit, "interlink-queue", ic.QueueLimit, "QoS 1/2 messages kept per peer until it acknowledges them; past it publishes are refused (0x97)")
	fs.DurationVar(&ic.Backpressure, "interlink-backpressure", ic.Backpressure, "while a peer takes messages more slowly than clients publish them, clients' input is read only as fast as the peer takes it; a peer that takes nothing for this long stops holding clients back and its QoS 0 messages are dropped; 0: never hold back, drop at once")
	fs.DurationVar(&ic.FailureTimeout, "cluster-failure-timeout", ic.FailureTimeout, "about how long a silent peer takes to be declared failed")
	fs.DurationVar(&ic.ForgetAfter, "cluster-forget-after", ic.ForgetAfter, "how long a failed peer's routes are kept for its return; what was queued for it is kept --max-session-expiry longer; 0: forever")
	return cf
}

// removedClusterFlags refuses --cluster-secret, which put the secret where
// every local user could read it, before flag parsing calls it unknown.
func removedClusterFlags(args []string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "cluster-secret" {
			return fmt.Errorf("--cluster-secret is gone: on the command line the secret shows in the process list; "+
				"put it in a file for --cluster-secret-file or in %s", secretEnv)
		}
	}
	return nil
}

// config returns the cluster configuration, nil when --cluster-listen is
// not set. getenv reads the environment (os.Getenv).
func (cf *clusterFlags) config(getenv func(string) string) (*interlink.Config, error) {
	ic := cf.ic
	if ic.Listen == "" {
		for _, f := range []struct {
			set  bool
			name string
		}{{cf.join != "", "--join"}, {cf.resolver != "", "--join-resolver"}, {cf.secretFile != "", "--cluster-secret-file"}, {ic.Insecure, "--cluster-insecure"},
			{ic.CertFile != "", "--cluster-tls-cert"}, {ic.KeyFile != "", "--cluster-tls-key"}, {ic.CAFile != "", "--cluster-tls-ca"}} {
			if f.set {
				return nil, fmt.Errorf("%s needs --cluster-listen", f.name)
			}
		}
		return nil, nil
	}
	c, err := interlink.ParseCompression(cf.comp)
	if err != nil {
		return nil, err
	}
	ic.Compression = c
	for _, j := range strings.Split(cf.join, ",") {
		if j = strings.TrimSpace(j); j != "" {
			ic.Join = append(ic.Join, j)
		}
	}
	if cf.resolver != "" {
		if len(ic.Join) == 0 {
			return nil, fmt.Errorf("--join-resolver needs --join")
		}
		if _, port, err := net.SplitHostPort(cf.resolver); err != nil || port == "" {
			return nil, fmt.Errorf("--join-resolver must be a DNS server's host:port, got %q", cf.resolver)
		}
		ic.Resolver = dnsResolver(cf.resolver)
	}
	if v := strings.TrimSpace(getenv(podIPEnv)); v != "" && ic.Advertise == "" {
		if ip, err := netip.ParseAddr(v); err != nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("the %s environment variable must be this node's IP address, got %q", podIPEnv, v)
		}
		ic.AdvertiseIP = v
	}
	env := getenv(secretEnv)
	var from string
	switch {
	case cf.secretFile != "" && env != "":
		return nil, fmt.Errorf("the cluster secret is given both by --cluster-secret-file and by %s: give it one way", secretEnv)
	case cf.secretFile != "":
		from = "--cluster-secret-file " + cf.secretFile
		b, err := os.ReadFile(cf.secretFile)
		if err != nil {
			return nil, fmt.Errorf("--cluster-secret-file: %w", err)
		}
		ic.Secret = strings.TrimRight(string(b), "\r\n")
		if ic.Secret == "" {
			return nil, fmt.Errorf("--cluster-secret-file %s is empty", cf.secretFile)
		}
	case env != "":
		from = secretEnv
		ic.Secret = env
	}
	switch {
	case ic.Secret == "" && !ic.Insecure:
		also := ""
		if ic.CertFile != "" || ic.KeyFile != "" || ic.CAFile != "" {
			also = " (with --cluster-tls-* too: the links are TLS, and the secret keys gossip)"
		}
		return nil, fmt.Errorf("a cluster node needs a secret of at least %d bytes, shared by every node%s: "+
			"--cluster-secret-file FILE or the %s environment variable; --cluster-insecure runs the cluster without one, open to anyone who reaches its ports",
			interlink.MinSecretLen, also, secretEnv)
	case ic.Secret != "" && ic.Insecure:
		return nil, fmt.Errorf("--cluster-insecure, and a cluster secret from %s: give one or the other", from)
	case ic.Secret != "" && len(ic.Secret) < interlink.MinSecretLen:
		return nil, fmt.Errorf("the cluster secret from %s is %d bytes; it must be at least %d", from, len(ic.Secret), interlink.MinSecretLen)
	}
	// The certificate files are read now, so that a bad one is a bad
	// flag rather than a failure to start.
	if err := ic.CheckTLS(); err != nil {
		return nil, err
	}
	return &ic, nil
}

// dnsResolver looks names up by asking the DNS server at addr (host:port),
// over UDP and, for a truncated answer, TCP, as the system's resolver
// would ask the servers of /etc/resolv.conf, whose search domains and
// options it still applies.
func dnsResolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}
