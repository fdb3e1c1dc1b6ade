package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

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

func FuzzParseProxy(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 5555 1883\r\n"))
	f.Add(proxyV2(1, 0x11, []byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2}))
	f.Add(proxyV2(0, 0, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, _, err := parseProxy(b)
		if err == nil && (n <= 0 || n > len(b)) {
			t.Fatalf("header length %d of %d bytes", n, len(b))
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
