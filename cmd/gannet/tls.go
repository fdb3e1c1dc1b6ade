package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/gannetmq/gannet/server"
)

// tlsFlags are the TLS listener's settings and the PROXY protocol's
// trusted ranges.
type tlsFlags struct {
	listen, wss      string
	cert, key        string
	clientCA         string
	clientAuth       string
	minVersion       string
	handshakeTimeout time.Duration
	maxHandshakes    int
	proxyFrom        string
}

func (f *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "tls-listen", "", "MQTT over TLS listen `address` (conventionally :8883), served beside --listen; empty: no TLS listener")
	fs.StringVar(&f.wss, "wss-listen", "", "MQTT over WebSocket over TLS listen `address` (conventionally :8084; path /mqtt, subprotocol mqtt or mqttv3.1), with --tls-cert, --tls-key and the other --tls-* settings; empty: off")
	fs.StringVar(&f.cert, "tls-cert", "", "the TLS listeners' certificate `file` (PEM, intermediates after the leaf); reloaded on SIGHUP")
	fs.StringVar(&f.key, "tls-key", "", "the private key `file` (PEM) of --tls-cert; reloaded on SIGHUP")
	fs.StringVar(&f.clientCA, "tls-client-ca", "", "CA certificates `file` (PEM) that client certificates are verified against; reloaded on SIGHUP")
	fs.StringVar(&f.clientAuth, "tls-client-auth", "", "client certificates: none, request (verified if given) or require; default: require with --tls-client-ca, none without")
	fs.StringVar(&f.minVersion, "tls-min-version", "1.2", "oldest TLS `version` accepted: 1.2 or 1.3")
	fs.DurationVar(&f.handshakeTimeout, "tls-handshake-timeout", 10*time.Second, "time a TLS client has for its handshake (and PROXY header) before it is closed")
	fs.IntVar(&f.maxHandshakes, "tls-max-handshakes", 1024, "TLS handshakes in progress at most; further clients wait in the accept queue")
	fs.StringVar(&f.proxyFrom, "proxy-protocol-from", "", "comma-separated `CIDR` ranges (or addresses) of the load balancers: connections from them must start with a PROXY protocol header, anyone else's that does is refused; implies --proxy-protocol, on both listeners")
}

// apply puts the settings into cfg.
func (f *tlsFlags) apply(cfg *server.Config) error {
	for _, s := range strings.Split(f.proxyFrom, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return fmt.Errorf("--proxy-protocol-from: %q is neither a CIDR range nor an address", s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		cfg.ProxyProtocolFrom = append(cfg.ProxyProtocolFrom, p.Masked())
	}
	if f.listen == "" && f.wss == "" {
		if f.cert != "" || f.key != "" || f.clientCA != "" || f.clientAuth != "" {
			return errors.New("--tls-cert, --tls-key, --tls-client-ca and --tls-client-auth need --tls-listen or --wss-listen")
		}
		return nil
	}
	tc := &server.TLSConfig{
		Listen: f.listen, WSSListen: f.wss, CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clientCA,
		ClientAuth: server.ClientAuth(f.clientAuth), HandshakeTimeout: f.handshakeTimeout, MaxHandshakes: f.maxHandshakes,
	}
	switch f.minVersion {
	case "1.2":
		tc.MinVersion = tls.VersionTLS12
	case "1.3":
		tc.MinVersion = tls.VersionTLS13
	default:
		return fmt.Errorf("--tls-min-version must be 1.2 or 1.3, got %q", f.minVersion)
	}
	if f.handshakeTimeout <= 0 {
		return fmt.Errorf("--tls-handshake-timeout must be positive, got %s", f.handshakeTimeout)
	}
	if f.maxHandshakes < 1 {
		return fmt.Errorf("--tls-max-handshakes must be at least 1, got %d", f.maxHandshakes)
	}
	cfg.TLS = tc
	return nil
}
