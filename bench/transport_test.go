package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/server"
)

// pki is a CA made for one test (ECDSA P-256, as the benchmarks use) and
// the files of the certificates it issued.
type pki struct {
	t      *testing.T
	dir    string
	ca     *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{t: t, dir: t.TempDir(), ca: ca, key: key}
	p.caFile = p.write(name+".pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(name, kind string, der []byte) string {
	p.t.Helper()
	f := filepath.Join(p.dir, name)
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return f
}

// issue makes a certificate for the server (127.0.0.1 and localhost) or
// a client and returns its certificate and key files.
func (p *pki) issue(name string, client bool) (certFile, keyFile string) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if client {
		tmpl.ExtKeyUsage, tmpl.DNSNames, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write(name+".pem", "CERTIFICATE", der), p.write(name+"-key.pem", "PRIVATE KEY", kder)
}

// tlsBroker starts a broker with every listener (MQTT, TLS, WebSocket,
// WebSocket over TLS) on loopback ports, its certificate issued by p;
// with clientCA it requires client certificates issued by that CA. It is
// shut down at the test's cleanup.
func tlsBroker(t *testing.T, p *pki, clientCA string) *server.Server {
	t.Helper()
	cert, key := p.issue("broker", false)
	return startBroker(t, func(c *server.Config) {
		c.WSListen = "127.0.0.1:0"
		c.TLS = &server.TLSConfig{Listen: "127.0.0.1:0", WSSListen: "127.0.0.1:0", CertFile: cert, KeyFile: key, ClientCAFile: clientCA}
	})
}

// transports are the four ways to the broker, with where each listens
// and how its description starts.
func transports(s *server.Server, ca string) []struct {
	name, addr, desc string
	tr               Transport
} {
	return []struct {
		name, addr, desc string
		tr               Transport
	}{
		{"tcp", s.Addr(), "tcp", Transport{}},
		{"tls", s.TLSAddr(), "tls: TLS 1.3, ", Transport{TLS: true, CAFile: ca}},
		{"ws", s.WSAddr(), "ws /mqtt", Transport{WS: true}},
		{"wss", s.WSSAddr(), "wss /mqtt: TLS 1.3, ", Transport{TLS: true, CAFile: ca, WS: true}},
	}
}

// Messages flow over every transport: closed loop at QoS 1, paced at QoS
// 0, and the conn scenario's connections are all accepted.
func TestTransports(t *testing.T) {
	p := newPKI(t, "bench-ca")
	s := tlsBroker(t, p, "")
	for _, tc := range transports(s, p.caFile) {
		t.Run(tc.name, func(t *testing.T) {
			if tc.addr == "" {
				t.Fatalf("the broker has no %s listener", tc.name)
			}
			check := func(what string, res *Result, err error, want int64) {
				t.Helper()
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if res.Expected != want || res.Received != want || res.Lost != 0 || res.Duplicates != 0 || res.Errors != 0 {
					t.Fatalf("%s: expected %d, received %d, lost %d, duplicates %d, errors %d %v; want %d each",
						what, res.Expected, res.Received, res.Lost, res.Duplicates, res.Errors, res.FirstErrors, want)
				}
				if !strings.HasPrefix(res.Transport, tc.desc) {
					t.Fatalf("%s: transport %q, want it to start with %q", what, res.Transport, tc.desc)
				}
			}
			res, err := Run(context.Background(), Config{Scenario: "p2p", Addr: tc.addr, Clients: 3, QoS: 1, Count: 300, Transport: tc.tr})
			check("p2p QoS 1", res, err, 900)
			// The pacer's path: a fixed rate, each publisher's share
			// written by one goroutine.
			res, err = Run(context.Background(), Config{Scenario: "p2p", Addr: tc.addr, Clients: 3, QoS: 0, Count: 100, Rate: 3000, Transport: tc.tr})
			check("p2p QoS 0 at 3000/s", res, err, 300)

			res, err = Run(context.Background(), Config{Scenario: "conn", Addr: tc.addr, Clients: 20, ConnectWindow: 5, Transport: tc.tr})
			if err != nil {
				t.Fatal(err)
			}
			if res.Connected != 20 || res.Failed() || res.Errors != 0 || !strings.HasPrefix(res.Transport, tc.desc) {
				t.Fatalf("conn: connected %d of 20, refused %d, unanswered %d, errors %v, transport %q",
					res.Connected, res.Refused, res.Unanswered, res.FirstErrors, res.Transport)
			}
			if res.TLSResumed != 0 {
				t.Fatalf("conn: %d sessions resumed without --tls-resume", res.TLSResumed)
			}
		})
	}
}

// Packets bigger than a WebSocket frame, and frames bigger than a read,
// arrive whole: the generator splits its writes into frames of
// wsFrameMax and reads the broker's 64-bit frame lengths.
func TestWebSocketLargeMessages(t *testing.T) {
	p := newPKI(t, "bench-ca")
	s := tlsBroker(t, p, "")
	for _, tc := range transports(s, p.caFile)[2:] {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Run(context.Background(), Config{Scenario: "p2p", Addr: tc.addr, Clients: 2, QoS: 1, Count: 20,
				Payload: 150 << 10, Transport: tc.tr})
			if err != nil {
				t.Fatal(err)
			}
			if res.Received != 40 || res.Lost != 0 || res.Errors != 0 {
				t.Fatalf("received %d of 40, lost %d, errors %d %v", res.Received, res.Lost, res.Errors, res.FirstErrors)
			}
		})
	}
}

// A broker whose certificate does not chain to --ca, or does not name the
// host dialled, is refused; --insecure-skip-verify accepts it.
func TestTLSVerification(t *testing.T) {
	p := newPKI(t, "bench-ca")
	s := tlsBroker(t, p, "")
	other := newPKI(t, "other-ca")
	conn := func(tr Transport) *Result {
		t.Helper()
		res, err := Run(context.Background(), Config{Scenario: "conn", Addr: s.TLSAddr(), Clients: 3, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for _, c := range []struct {
		tr   Transport
		want string
	}{
		{Transport{TLS: true, CAFile: other.caFile}, "certificate signed by unknown authority"},
		{Transport{TLS: true, CAFile: p.caFile, ServerName: "broker.example"}, "broker.example"},
	} {
		res := conn(c.tr)
		if res.Connected != 0 || res.Unanswered != 3 || !res.Failed() {
			t.Fatalf("%+v: connected %d, unanswered %d: want every handshake refused", c.tr, res.Connected, res.Unanswered)
		}
		if len(res.FirstErrors) == 0 || !strings.Contains(res.FirstErrors[0], c.want) || !strings.Contains(res.FirstErrors[0], "TLS handshake") {
			t.Fatalf("%+v: errors %q, want a TLS handshake error naming %q", c.tr, res.FirstErrors, c.want)
		}
	}
	res := conn(Transport{TLS: true, InsecureSkipVerify: true, ServerName: "broker.example"})
	if res.Connected != 3 || res.Failed() {
		t.Fatalf("--insecure-skip-verify: connected %d of 3, errors %v", res.Connected, res.FirstErrors)
	}
}

// A broker that requires client certificates takes the generator's
// --cert and --key, and refuses it without them.
func TestTLSClientCertificate(t *testing.T) {
	p := newPKI(t, "bench-ca")
	s := tlsBroker(t, p, p.caFile)
	cert, key := p.issue("bench-client", true)
	res, err := Run(context.Background(), Config{Scenario: "p2p", Addr: s.TLSAddr(), Clients: 2, QoS: 1, Count: 50,
		Transport: Transport{TLS: true, CAFile: p.caFile, CertFile: cert, KeyFile: key}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Received != 100 || res.Errors != 0 {
		t.Fatalf("with a client certificate: received %d of 100, errors %v", res.Received, res.FirstErrors)
	}
	res, err = Run(context.Background(), Config{Scenario: "conn", Addr: s.TLSAddr(), Clients: 2,
		Transport: Transport{TLS: true, CAFile: p.caFile}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != 0 || res.Unanswered != 2 || len(res.FirstErrors) == 0 || !strings.Contains(res.FirstErrors[0], "certificate required") {
		t.Fatalf("without a client certificate: connected %d, unanswered %d, errors %q; want refused for want of a certificate",
			res.Connected, res.Unanswered, res.FirstErrors)
	}
}

// Without Resume every connection makes a full handshake; with it, the
// connections after the first resume the session of an earlier one.
func TestTLSResumption(t *testing.T) {
	p := newPKI(t, "bench-ca")
	s := tlsBroker(t, p, "")
	const clients = 6
	for _, resume := range []bool{false, true} {
		// One CONNECT at a time: each connection starts once the one
		// before has its CONNACK, and with it the broker's ticket.
		res, err := Run(context.Background(), Config{Scenario: "conn", Addr: s.TLSAddr(), Clients: clients, ConnectWindow: 1,
			Transport: Transport{TLS: true, CAFile: p.caFile, Resume: resume}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Connected != clients || res.Failed() {
			t.Fatalf("resume %v: connected %d of %d, errors %v", resume, res.Connected, clients, res.FirstErrors)
		}
		switch {
		case !resume && (res.TLSResumed != 0 || !strings.HasSuffix(res.Transport, "full handshakes")):
			t.Fatalf("without resumption: %d resumed, transport %q", res.TLSResumed, res.Transport)
		case resume && res.TLSResumed != clients-1:
			t.Fatalf("with resumption: %d of %d connections resumed, want all but the first", res.TLSResumed, clients)
		}
	}
}

// recordConn is a net.Conn that keeps what is written to it.
type recordConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *recordConn) Write(b []byte) (int, error) { return c.out.Write(b) }

// serverFrame is a frame as a broker writes it: final or not, unmasked.
func serverFrame(op ws.OpCode, fin bool, p []byte) []byte {
	var b bytes.Buffer
	if err := ws.WriteHeader(&b, ws.Header{Fin: fin, OpCode: op, Length: int64(len(p))}); err != nil {
		panic(err)
	}
	b.Write(p)
	return b.Bytes()
}

// clientFrames reads what the generator wrote as frames, checking that
// every one is masked, and unmasks them.
func clientFrames(t *testing.T, b []byte) []ws.Frame {
	t.Helper()
	var fs []ws.Frame
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		h, err := ws.ReadHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		if !h.Masked || !h.Fin || h.Length > int64(r.Len()) {
			t.Fatalf("frame %+v (%d bytes follow): a client's frames are masked (and the generator's final)", h, r.Len())
		}
		f := ws.Frame{Header: h, Payload: make([]byte, h.Length)}
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			t.Fatal(err)
		}
		fs = append(fs, ws.UnmaskFrameInPlace(f))
	}
	return fs
}

// The broker's frames reach the MQTT decoder whatever the read boundaries
// fall on: every length form, empty and continuation frames, and pings
// between them, which are answered with pongs carrying their payload.
func TestWebSocketFrameReader(t *testing.T) {
	// Seven PUBLISHes of growing sizes as one byte stream.
	var mqtt []byte
	for i := range 7 {
		payload := make([]byte, headerSize+i*i*2000)
		putHeader(payload, 1, uint64(i), 0)
		mqtt = (&codec.Publish{Topic: []byte("t"), Payload: payload}).Append(mqtt, codec.V311)
	}
	// Cut into frames of every length form, with pings in between.
	var wire []byte
	pings := 0
	rest := mqtt
	for i, n := range []int{0, 1, 125, 126, 300, 65535, 65536, 70000} {
		n = min(n, len(rest))
		op := ws.OpBinary
		if i > 0 {
			op = ws.OpContinuation
		}
		wire = append(wire, serverFrame(op, false, rest[:n])...)
		rest = rest[n:]
		wire = append(wire, serverFrame(ws.OpPing, true, []byte{byte(i)})...)
		pings++
	}
	wire = append(wire, serverFrame(ws.OpContinuation, true, rest)...)
	wire = append(wire, serverFrame(ws.OpPing, true, nil)...) // ends the input
	pings++
	for _, chunk := range []int{1, 2, 3, 7, 1000, len(wire)} {
		rc := &recordConn{}
		r := &runner{}
		c := &client{id: "c", run: r, v: codec.V311, tracks: map[uint32]*seqTrack{}, stream: &stream{nc: rc, ws: true}}
		for b := wire; len(b) > 0; {
			n := min(chunk, len(b))
			if err := c.streamInput(b[:n]); err != nil {
				t.Fatalf("chunks of %d: %v", chunk, err)
			}
			b = b[n:]
		}
		if got := r.received.Load(); got != 7 || len(c.inbuf) != 0 {
			t.Fatalf("chunks of %d: %d of 7 PUBLISHes decoded, %d bytes left over", chunk, got, len(c.inbuf))
		}
		pongs := clientFrames(t, rc.out.Bytes())
		if len(pongs) != pings {
			t.Fatalf("chunks of %d: %d frames written, want %d pongs", chunk, len(pongs), pings)
		}
		for i, f := range pongs {
			want := []byte{byte(i)}
			if i == pings-1 {
				want = nil
			}
			if f.Header.OpCode != ws.OpPong || !bytes.Equal(f.Payload, want) {
				t.Fatalf("chunks of %d: frame %d is %v %x, want pong %x", chunk, i, f.Header.OpCode, f.Payload, want)
			}
		}
	}

	// A close frame ends the stream and is answered with the same code.
	rc := &recordConn{}
	c := &client{id: "c", run: &runner{}, v: codec.V311, stream: &stream{nc: rc, ws: true}}
	var code [2]byte
	binary.BigEndian.PutUint16(code[:], 1001)
	err := c.streamInput(serverFrame(ws.OpClose, true, code[:]))
	if err == nil || !strings.Contains(err.Error(), "status 1001") {
		t.Fatalf("close: %v, want the stream ended with status 1001", err)
	}
	if f := clientFrames(t, rc.out.Bytes()); len(f) != 1 || f[0].Header.OpCode != ws.OpClose || !bytes.Equal(f[0].Payload, code[:]) {
		t.Fatalf("close answered with %+v", f)
	}
	// Frames a broker must not send end it too.
	for _, bad := range [][]byte{
		serverFrame(ws.OpText, true, []byte("hi")),
		{0x82 | 0x40, 0},         // a reserved bit
		{0x82, 0x80, 1, 2, 3, 4}, // masked
		serverFrame(ws.OpPing, false, nil),
	} {
		c := &client{id: "c", run: &runner{}, v: codec.V311, stream: &stream{nc: &recordConn{}, ws: true}}
		if err := c.streamInput(bad); err == nil {
			t.Fatalf("frame % x accepted", bad)
		}
	}
}

// A write becomes frames of wsFrameMax at most, each masked, in one write
// call, and their payloads are the bytes written.
func TestWebSocketFrameWriter(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, wsFrameMax + 1, 3*wsFrameMax + 17} {
		p := make([]byte, n)
		_, _ = io.ReadFull(rand.Reader, p)
		rc := &recordConn{}
		s := &stream{nc: rc, ws: true}
		if err := s.write(p); err != nil {
			t.Fatal(err)
		}
		var got []byte
		fs := clientFrames(t, rc.out.Bytes())
		for _, f := range fs {
			if f.Header.OpCode != ws.OpBinary || len(f.Payload) > wsFrameMax {
				t.Fatalf("%d bytes: frame %v of %d bytes", n, f.Header.OpCode, len(f.Payload))
			}
			got = append(got, f.Payload...)
		}
		if want := max(1, (n+wsFrameMax-1)/wsFrameMax); len(fs) != want || !bytes.Equal(got, p) {
			t.Fatalf("%d bytes: %d frames carrying %d bytes (equal %v), want %d frames", n, len(fs), len(got), bytes.Equal(got, p), want)
		}
	}
}
