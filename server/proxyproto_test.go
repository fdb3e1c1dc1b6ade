package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

func proxyV2(cmd, fam byte, addrs []byte) []byte {
	b := append([]byte(nil), proxyV2Sig...)
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)))
	return append(b, addrs...)
}

func TestParseProxy(t *testing.T) {
	v4 := []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xB3, 0x07, 0x5B} // 203.0.113.7:5555 -> 10.0.0.1:1883
	v6 := make([]byte, 36)
	v6[15] = 1                  // ::1
	v6[32], v6[33] = 0x04, 0xD2 // port 1234
	cases := []struct {
		name string
		in   []byte
		n    int
		src  string
		err  string
	}{
		{"v1 tcp4", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\nMQTT"), 43, "203.0.113.7:5555", ""},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 40000 1883\r\n"), 47, "[2001:db8::1]:40000", ""},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), 15, "", ""},
		{"v1 partial", []byte("PROXY TCP4 203.0.113.7"), 0, "", "incomplete"},
		{"v1 prefix partial", []byte("PRO"), 0, "", "incomplete"},
		{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"), 0, "", "malformed"},
		{"v1 bad port", []byte("PROXY TCP4 1.2.3.4 10.0.0.1 70000 1883\r\n"), 0, "", "ports"},
		{"v1 too long", append([]byte("PROXY TCP4 "), bytes.Repeat([]byte("1"), 120)...), 0, "", "longer"},
		{"v2 tcp4", proxyV2(1, 0x11, v4), 28, "203.0.113.7:5555", ""},
		{"v2 tcp6", proxyV2(1, 0x21, v6), 52, "[::1]:1234", ""},
		{"v2 local", proxyV2(0, 0x00, nil), 16, "", ""},
		{"v2 partial", proxyV2(1, 0x11, v4)[:20], 0, "", "incomplete"},
		{"v2 truncated addresses", proxyV2(1, 0x11, v4[:4]), 0, "", "truncated"},
		{"v2 bad version", append(append([]byte(nil), proxyV2Sig...), 0x31, 0x11, 0, 0), 0, "", "version"},
		{"mqtt without header", []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T'}, 0, "", "does not start"},
	}
	for _, tc := range cases {
		n, src, err := parseProxy(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || n != tc.n || src != tc.src {
			t.Errorf("%s: (%d, %q, %v), want (%d, %q)", tc.name, n, src, err, tc.n, tc.src)
		}
	}
}

// tlv appends a PROXY v2 TLV to b.
func tlv(b []byte, typ byte, v []byte) []byte {
	b = append(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// sslTLV is a PP2_TYPE_SSL TLV as HAProxy's send-proxy-v2-ssl-cn writes
// it: client flags, verify result, the TLS version and the CN (when not
// nil).
func sslTLV(client byte, verify uint32, cn []byte) []byte {
	v := binary.BigEndian.AppendUint32([]byte{client}, verify)
	v = tlv(v, 0x21, []byte("TLSv1.3"))
	if cn != nil {
		v = tlv(v, pp2SubtypeSSLCN, cn)
	}
	return tlv(nil, pp2TypeSSL, v)
}

func TestProxyCertCN(t *testing.T) {
	v4 := []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xB3, 0x07, 0x5B}
	v6 := make([]byte, 36)
	v6[15] = 1
	const verified = pp2ClientSSL | 0x02 | pp2ClientCertSess // HAProxy: a certificate in this connection
	with := func(fam byte, addrs []byte, tlvs ...[]byte) []byte {
		return proxyV2(1, fam, append(slices.Clone(addrs), bytes.Join(tlvs, nil)...))
	}
	cases := []struct {
		name string
		in   []byte
		cn   string
		err  string
	}{
		{"v4 verified", with(0x11, v4, sslTLV(verified, 0, []byte("sensor-1"))), "sensor-1", ""},
		{"v6 verified", with(0x21, v6, sslTLV(verified, 0, []byte("sensor-1"))), "sensor-1", ""},
		{"resumed session", with(0x11, v4, sslTLV(pp2ClientSSL|pp2ClientCertSess, 0, []byte("sensor-1"))), "sensor-1", ""},
		{"after other TLVs", with(0x11, v4, tlv(nil, 0x04, make([]byte, 3)), tlv(nil, 0x01, []byte("mqtt")), sslTLV(verified, 0, []byte("ünïcode"))), "ünïcode", ""},
		{"verify failed", with(0x11, v4, sslTLV(verified, 20, []byte("sensor-1"))), "", ""},
		{"no certificate", with(0x11, v4, sslTLV(pp2ClientSSL, 0, []byte("sensor-1"))), "", ""},
		{"not TLS", with(0x11, v4, sslTLV(0x02|pp2ClientCertSess, 0, []byte("sensor-1"))), "", ""},
		{"no CN", with(0x11, v4, sslTLV(verified, 0, nil)), "", ""},
		{"empty CN", with(0x11, v4, sslTLV(verified, 0, []byte{})), "", ""},
		{"no TLVs", with(0x11, v4), "", ""},
		{"local", proxyV2(0, 0, sslTLV(verified, 0, []byte("sensor-1"))), "", ""},
		{"v1", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\n"), "", ""},
		{"TLV truncated", with(0x11, v4, sslTLV(verified, 0, []byte("sensor-1"))[:10]), "", "truncated"},
		{"TLV header truncated", with(0x11, v4, []byte{pp2TypeSSL, 0}), "", "truncated"},
		{"SSL TLV short", with(0x11, v4, tlv(nil, pp2TypeSSL, []byte{1, 0, 0})), "", "shorter"},
		{"sub-TLV truncated", with(0x11, v4, tlv(nil, pp2TypeSSL, []byte{verified, 0, 0, 0, 0, pp2SubtypeSSLCN, 0, 9, 'x'})), "", "truncated"},
		{"CN not UTF-8", with(0x11, v4, sslTLV(verified, 0, []byte{'a', 0xff})), "", "not text"},
		{"CN with NUL", with(0x11, v4, sslTLV(verified, 0, []byte("admin\x00x"))), "", "not text"},
		{"CN too long", with(0x11, v4, sslTLV(verified, 0, bytes.Repeat([]byte("a"), proxyCNMax+1))), "", "not text"},
	}
	for _, tc := range cases {
		n, _, err := parseProxy(tc.in)
		if err != nil || n != len(tc.in) {
			t.Fatalf("%s: parseProxy (%d, %v), want the whole %d bytes", tc.name, n, err, len(tc.in))
		}
		cn, err := proxyCertCN(tc.in[:n])
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: (%q, %v), want an error with %q", tc.name, cn, err, tc.err)
			}
			continue
		}
		if err != nil || cn != tc.cn {
			t.Errorf("%s: (%q, %v), want %q", tc.name, cn, err, tc.cn)
		}
	}
}

func FuzzParseProxy(f *testing.F) {
	v4 := []byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2}
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\n"))
	f.Add(proxyV2(1, 0x11, v4))
	f.Add(proxyV2(0, 0, nil))
	f.Add(proxyV2(1, 0x11, append(slices.Clone(v4), sslTLV(7, 0, []byte("sensor-1"))...)))
	f.Add(proxyV2(1, 0x21, append(make([]byte, 36), tlv(sslTLV(5, 1, []byte("x")), 0x04, nil)...)))
	f.Add(proxyV2(1, 0x31, append(make([]byte, 216), sslTLV(7, 0, nil)...)))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, _, err := parseProxy(b)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("header length %d of %d bytes", n, len(b))
		}
		cn, err := proxyCertCN(b[:n])
		if err == nil && (len(cn) > proxyCNMax || !utf8.ValidString(cn) || strings.ContainsRune(cn, 0)) {
			t.Fatalf("CN %q taken from %x", cn, b[:n])
		}
	})
}

// syncBuf is a log sink tests can read while the broker writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestProxyProtocolListener(t *testing.T) {
	logs := &syncBuf{}
	s := startBroker(t, func(c *Config) {
		c.ProxyProtocol = true
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	// The header and CONNECT in one write, as HAProxy sends them.
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawConn{t: t, c: conn, r: bufio.NewReader(conn), v: codec.V311}
	t.Cleanup(func() { conn.Close() })
	hdr := []byte("PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\n")
	rc.write(append(hdr, (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, ClientID: []byte("behind-lb"), CleanStart: true, KeepAlive: 30}).Append(nil, codec.V311)...))
	if ack, ok := rc.expect().(*codec.Connack); !ok || ack.Code != 0 {
		t.Fatalf("CONNACK: %#v", ack)
	}
	waitFor(t, "the client's own address in the log", func() bool {
		return strings.Contains(logs.String(), "client=behind-lb remote=203.0.113.7:5555")
	})

	// Without a header the connection is refused.
	plain := dialRaw(t, s, codec.V311)
	plain.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, ClientID: []byte("direct"), CleanStart: true})
	plain.expectClosed()
	waitFor(t, "the refusal logged", func() bool { return strings.Contains(logs.String(), "bad PROXY protocol header") })
}

// With ProxyProtocolCertCN, the CN a trusted balancer sends in the PROXY
// header reaches the authentication chain as a verified certificate's
// would; without it, or when the balancer does not vouch for the
// certificate, it does not; a malformed SSL TLV refuses the connection.
func TestProxyProtocolCertCN(t *testing.T) {
	v4 := []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xB3, 0x07, 0x5B}
	header := func(tlvs []byte) []byte { return proxyV2(1, 0x11, append(slices.Clone(v4), tlvs...)) }
	broker := func(certCN bool) (*Server, *recorder) {
		rec := &recorder{}
		ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{rec}, AllowAnonymous: true})
		return startBroker(t, func(c *Config) {
			c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			c.ProxyProtocolCertCN = certCN
			c.Auth = ch
		}), rec
	}
	connect := func(s *Server, hdr []byte, id string) *rawConn {
		rc := dialRaw(t, s, codec.V311)
		rc.write(append(hdr, connectBytes(id)...))
		return rc
	}
	accepted := func(rc *rawConn) {
		t.Helper()
		if ca, ok := rc.expect().(*codec.Connack); !ok || ca.Code != codec.Success {
			t.Fatalf("CONNACK %v", ca)
		}
	}

	s, rec := broker(true)
	accepted(connect(s, header(sslTLV(7, 0, []byte("sensor-1"))), "vouched"))
	if r := rec.request(t, "vouched"); r.CertCN != "sensor-1" || r.Remote != "203.0.113.7:5555" {
		t.Errorf("vouched for: CN %q, remote %q", r.CertCN, r.Remote)
	}
	accepted(connect(s, header(sslTLV(7, 2, []byte("sensor-1"))), "unverified"))
	if r := rec.request(t, "unverified"); r.CertCN != "" {
		t.Errorf("a certificate HAProxy did not verify gave CN %q", r.CertCN)
	}
	connect(s, header(sslTLV(7, 0, []byte{0xff, 0xfe})), "bad-cn").expectClosed()
	waitFor(t, "the bad header counted", func() bool { return s.stats.proxyBad.Get() == 1 })

	s, rec = broker(false)
	accepted(connect(s, header(sslTLV(7, 0, []byte("sensor-1"))), "not-asked"))
	if r := rec.request(t, "not-asked"); r.CertCN != "" {
		t.Errorf("without ProxyProtocolCertCN the header gave CN %q", r.CertCN)
	}

	// Only with ProxyProtocolFrom: a header from anyone could claim a name.
	cfg := DefaultConfig()
	cfg.ProxyProtocol, cfg.ProxyProtocolCertCN = true, true
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--proxy-protocol-from") {
		t.Errorf("Validate: %v, want --proxy-protocol-from required", err)
	}
}
