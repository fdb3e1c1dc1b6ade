package server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/gobwas/ws"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

// maskedFrame encodes a client frame: masked, as RFC 6455 requires.
func maskedFrame(fin bool, op ws.OpCode, payload []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n <= 0xffff:
		f = binary.BigEndian.AppendUint16(append(f, 0x80|126), uint16(n))
	default:
		f = binary.BigEndian.AppendUint64(append(f, 0x80|127), uint64(n))
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	f = append(f, mask[:]...)
	p := bytes.Clone(payload)
	ws.Cipher(p, mask, 0)
	return append(f, p...)
}

func TestReadWSFrame(t *testing.T) {
	big := bytes.Repeat([]byte("m"), 70_000)
	for _, tc := range []struct {
		name string
		in   []byte
		max  int
		want []byte
		op   ws.OpCode
		code ws.StatusCode // 0: no error
	}{
		{"short binary", maskedFrame(true, ws.OpBinary, []byte{0x10, 0x02}), 100, []byte{0x10, 0x02}, ws.OpBinary, 0},
		{"16-bit length", maskedFrame(true, ws.OpBinary, big[:300]), 1000, big[:300], ws.OpBinary, 0},
		{"64-bit length", maskedFrame(false, ws.OpContinuation, big), 100_000, big, ws.OpContinuation, 0},
		{"ping", maskedFrame(true, ws.OpPing, []byte("hi")), 100, []byte("hi"), ws.OpPing, 0},
		{"too long", maskedFrame(true, ws.OpBinary, big[:200]), 100, nil, 0, ws.StatusMessageTooBig},
		{"unmasked", []byte{0x82, 0x01, 0x00}, 100, nil, 0, ws.StatusProtocolError},
		{"reserved bit", append([]byte{0xC2}, maskedFrame(true, ws.OpBinary, []byte{1})[1:]...), 100, nil, 0, ws.StatusProtocolError},
		{"fragmented ping", maskedFrame(false, ws.OpPing, nil), 100, nil, 0, ws.StatusProtocolError},
		{"long ping", maskedFrame(true, ws.OpPing, big[:126]), 1000, nil, 0, ws.StatusProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := bytes.Clone(tc.in)
			f, n, code, err := readWSFrame(in, tc.max)
			if tc.code != 0 {
				if !errors.Is(err, errWSProtocol) || code != tc.code {
					t.Fatalf("got %v, code %d; want a protocol error with code %d", err, code, tc.code)
				}
				return
			}
			if err != nil || n != len(tc.in) || f.op != tc.op || !bytes.Equal(f.payload, tc.want) {
				t.Fatalf("got op %v, %d bytes, payload %d bytes, err %v", f.op, n, len(f.payload), err)
			}
			// Every prefix is incomplete, never an error or a frame.
			for i := range min(len(tc.in), 20) {
				if _, _, _, err := readWSFrame(bytes.Clone(tc.in[:i]), tc.max); err != errWSIncomplete {
					t.Fatalf("prefix of %d bytes: %v, want incomplete", i, err)
				}
			}
		})
	}
}

const wsRequest = "GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"

func TestWSUpgrade(t *testing.T) {
	resp, err := wsUpgrade([]byte(wsRequest))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HTTP/1.1 101", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Sec-WebSocket-Protocol: mqtt"} {
		if !strings.Contains(string(resp), want) {
			t.Fatalf("answer lacks %q:\n%s", want, resp)
		}
	}
	if resp, err := wsUpgrade([]byte(strings.Replace(wsRequest, "mqtt\r\n\r\n", "mqttv3.1\r\n\r\n", 1))); err != nil ||
		!strings.Contains(string(resp), "Sec-WebSocket-Protocol: mqttv3.1") {
		t.Fatalf("mqttv3.1: %v\n%s", err, resp)
	}
	for name, req := range map[string]string{
		"wrong path":  strings.Replace(wsRequest, "/mqtt", "/other", 1),
		"no upgrade":  strings.Replace(wsRequest, "Upgrade: websocket\r\n", "", 1),
		"no key":      strings.Replace(wsRequest, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1),
		"old version": strings.Replace(wsRequest, "Version: 13", "Version: 8", 1),
		"POST":        strings.Replace(wsRequest, "GET", "POST", 1),
		"not HTTP":    "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\r\n\r\n",
	} {
		resp, err := wsUpgrade([]byte(req))
		if !errors.Is(err, errWSProtocol) {
			t.Errorf("%s: %v, want a refusal", name, err)
		}
		if len(resp) > 0 && !strings.HasPrefix(string(resp), "HTTP/1.1 4") {
			t.Errorf("%s: answer %q, want an HTTP 4xx", name, resp)
		}
	}
}

// The frame reader and the upgrade parser never panic and never read
// beyond their input; what the frame reader accepts re-encodes to itself.
func FuzzWSInput(f *testing.F) {
	f.Add([]byte(wsRequest))
	f.Add(maskedFrame(true, ws.OpBinary, []byte{0x10, 0x02, 0, 0}))
	f.Add(maskedFrame(true, ws.OpPing, []byte("x")))
	f.Add([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = wsUpgrade(bytes.Clone(b))
		in := bytes.Clone(b)
		fr, n, _, err := readWSFrame(in, 1<<16)
		if err != nil {
			return
		}
		if n > len(b) || len(fr.payload) > 1<<16 {
			t.Fatalf("frame of %d bytes from %d, payload %d", n, len(b), len(fr.payload))
		}
		again := maskedFrame(fr.fin, fr.op, fr.payload)
		if f2, n2, _, err := readWSFrame(again, 1<<16); err != nil || n2 != len(again) || !bytes.Equal(f2.payload, fr.payload) {
			t.Fatalf("re-encoded frame reads back as %v, %d, %v", f2, n2, err)
		}
	})
}

// wsDial opens a TCP connection to the WebSocket listener and upgrades it.
func wsDial(t *testing.T, s *Server) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", s.WSAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Write([]byte(wsRequest)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	return c, r
}

// wsRead reads one unmasked server frame.
func wsRead(t *testing.T, c net.Conn, r *bufio.Reader) (ws.OpCode, []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := ws.ReadHeader(r)
	if err != nil {
		t.Fatalf("frame header: %v", err)
	}
	if h.Masked {
		t.Fatal("the broker masked a frame")
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatal(err)
	}
	return h.OpCode, p
}

// MQTT over WebSocket on the event loops: packets split across frames and
// several packets in one frame, ping and close frames, and a real client
// (paho over ws://) exchanging messages with a plain TCP client.
func TestWebSocket(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.WSListen = "127.0.0.1:0" })
	c, r := wsDial(t, s)
	connect := (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true,
		KeepAlive: 30, ClientID: []byte("ws-raw")}).Append(nil, codec.V311)
	sub := (&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("ws/#")}}}).Append(nil, codec.V311)
	// CONNECT split over three frames, SUBSCRIBE and PINGREQ in one.
	var out []byte
	out = append(out, maskedFrame(false, ws.OpBinary, connect[:3])...)
	out = append(out, maskedFrame(false, ws.OpContinuation, connect[3:7])...)
	out = append(out, maskedFrame(true, ws.OpContinuation, connect[7:])...)
	out = append(out, maskedFrame(true, ws.OpBinary, append(sub, 0xC0, 0))...)
	out = append(out, maskedFrame(true, ws.OpPing, []byte("p"))...)
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	var stream []byte
	gotPong := false
	for len(stream) < 4+5+2 { // CONNACK, SUBACK, PINGRESP
		op, p := wsRead(t, c, r)
		switch op {
		case ws.OpBinary:
			stream = append(stream, p...)
		case ws.OpPong:
			gotPong = string(p) == "p"
		default:
			t.Fatalf("frame %v", op)
		}
	}
	if !gotPong {
		// The pong may follow the data of the same flush.
		if op, p := wsRead(t, c, r); op != ws.OpPong || string(p) != "p" {
			t.Fatalf("no pong: %v %q", op, p)
		}
	}
	if !bytes.Equal(stream, []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 0, 0xD0, 0}) {
		t.Fatalf("MQTT stream % x, want CONNACK, SUBACK, PINGRESP", stream)
	}

	// A real client over ws:// publishes to the raw one and receives from
	// a plain TCP client.
	o := paho3.NewClientOptions().AddBroker("ws://" + s.WSAddr() + "/mqtt").SetClientID("ws-paho").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	pc := paho3.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho over ws: %v", tok.Error())
	}
	defer pc.Disconnect(100)
	got := make(chan string, 1)
	if tok := pc.Subscribe("tcp/#", 1, func(_ paho3.Client, m paho3.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	big := strings.Repeat("x", 100_000) // several TCP segments, one frame
	if tok := pc.Publish("ws/big", 1, false, big); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	var pub []byte
	for len(pub) < 100_000 {
		op, p := wsRead(t, c, r)
		if op != ws.OpBinary {
			t.Fatalf("frame %v", op)
		}
		pub = append(pub, p...)
	}
	pkt, _, err := codec.Decode(pub, codec.V311, 0)
	if err != nil || string(pkt.(*codec.Publish).Payload) != big {
		t.Fatalf("the raw client's copy: %v", err)
	}
	plain := dialRaw(t, s, codec.V311)
	plain.connect("plain", nil)
	plain.send(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("tcp/x"), Payload: []byte("from tcp")})
	plain.expect()
	select {
	case m := <-got:
		if m != "from tcp" {
			t.Fatalf("paho got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("paho over ws received nothing")
	}

	// Close: answered with a close frame, then the connection ends.
	if _, err := c.Write(maskedFrame(true, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))); err != nil {
		t.Fatal(err)
	}
	if op, _ := wsRead(t, c, r); op != ws.OpClose {
		t.Fatalf("answer to close: %v", op)
	}
}

// Bad WebSocket input: an HTTP error for a bad upgrade, a close frame with
// the reason for bad frames; other clients are not disturbed.
func TestWebSocketRefusals(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.WSListen = "127.0.0.1:0" })
	c, err := net.Dial("tcp", s.WSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte(strings.Replace(wsRequest, "/mqtt", "/nope", 1)))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("wrong path: %v, %v; want 404", resp, err)
	}
	for name, frame := range map[string][]byte{
		"unmasked": {0x82, 0x02, 0x10, 0x00},
		"text":     maskedFrame(true, ws.OpText, []byte("hello")),
	} {
		c, r := wsDial(t, s)
		_, _ = c.Write(frame)
		op, p := wsRead(t, c, r)
		if op != ws.OpClose {
			t.Fatalf("%s: got %v, want close", name, op)
		}
		code, _ := ws.ParseCloseFrameData(p)
		want := ws.StatusProtocolError
		if name == "text" {
			want = ws.StatusUnsupportedData
		}
		if code != want {
			t.Fatalf("%s: close code %d, want %d", name, code, want)
		}
	}
	// Plain MQTT to the WebSocket port is an HTTP refusal.
	c2, err := net.Dial("tcp", s.WSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	req := (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, ClientID: []byte("x")}).Append(nil, codec.V311)
	_, _ = c2.Write(append(req, "\r\n\r\n"...))
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(c2), nil); err != nil || resp.StatusCode/100 != 4 {
		t.Fatalf("MQTT to the WebSocket port: %v, %v; want an HTTP 4xx", resp, err)
	}
	// The broker still upgrades (wsDial asserts 101).
	wsDial(t, s)
}

// wsUpgradeOn sends the upgrade request on c and checks the answer is 101.
func wsUpgradeOn(t *testing.T, c net.Conn) *bufio.Reader {
	t.Helper()
	if _, err := c.Write([]byte(wsRequest)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	return r
}

// MQTT over WebSocket over TLS (--wss-listen alone, without --tls-listen):
// a raw client splitting packets across frames, paho over wss:// with a
// client certificate that the chain sees, and the refusals of TLS without
// an upgrade and of an upgrade without TLS.
func TestWebSocketOverTLS(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	certFile, keyFile := pki.serverFiles(100, "server.pem", "server-key.pem")
	cert := pki.client(leafSpec{cn: "device-1"})
	rec := &recorder{}
	ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{rec}, AllowAnonymous: true})
	s := startBroker(t, func(c *Config) {
		c.TLS = &TLSConfig{WSSListen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile,
			ClientCAFile: pki.caFile, ClientAuth: ClientAuthRequest}
		c.Auth = ch
	})
	if s.TLSAddr() != "" || s.WSSAddr() == "" {
		t.Fatalf("TLSAddr %q, WSSAddr %q: want only the WebSocket listener", s.TLSAddr(), s.WSSAddr())
	}

	// A raw client: CONNECT split over two frames, SUBSCRIBE in a third.
	tc, err := tls.Dial("tcp", s.WSSAddr(), tlsClientConfig(pki, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	r := wsUpgradeOn(t, tc)
	connect := (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true,
		KeepAlive: 30, ClientID: []byte("wss-raw")}).Append(nil, codec.V311)
	sub := (&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("wss/#")}}}).Append(nil, codec.V311)
	var out []byte
	out = append(out, maskedFrame(false, ws.OpBinary, connect[:5])...)
	out = append(out, maskedFrame(true, ws.OpContinuation, connect[5:])...)
	out = append(out, maskedFrame(true, ws.OpBinary, sub)...)
	if _, err := tc.Write(out); err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for len(stream) < 4+5 { // CONNACK, SUBACK
		op, p := wsRead(t, tc, r)
		if op != ws.OpBinary {
			t.Fatalf("frame %v", op)
		}
		stream = append(stream, p...)
	}
	if !bytes.Equal(stream, []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 0}) {
		t.Fatalf("MQTT stream % x, want CONNACK, SUBACK", stream)
	}
	if req := rec.request(t, "wss-raw"); req.Listener != "wss" || req.CertCN != "" {
		t.Errorf("raw client's request: listener %q, CN %q; want wss and no certificate", req.Listener, req.CertCN)
	}

	// paho over wss:// with a client certificate publishes to the raw
	// client.
	o := paho3.NewClientOptions().AddBroker("wss://" + s.WSSAddr() + "/mqtt").SetClientID("wss-paho").
		SetTLSConfig(tlsClientConfig(pki, &cert)).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	pc := paho3.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho over wss: %v", tok.Error())
	}
	defer pc.Disconnect(100)
	if req := rec.request(t, "wss-paho"); req.Listener != "wss" || req.CertCN != "device-1" {
		t.Errorf("paho's request: listener %q, CN %q; want wss and device-1", req.Listener, req.CertCN)
	}
	big := strings.Repeat("y", 70_000) // more than one TLS record
	if tok := pc.Publish("wss/big", 1, false, big); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	var pub []byte
	for {
		op, p := wsRead(t, tc, r)
		if op != ws.OpBinary {
			t.Fatalf("frame %v", op)
		}
		pub = append(pub, p...)
		if pkt, _, err := codec.Decode(pub, codec.V311, 0); err == nil {
			if got := string(pkt.(*codec.Publish).Payload); got != big {
				t.Fatalf("the raw client got %d bytes, want %d", len(got), len(big))
			}
			break
		}
	}
	if _, err := tc.Write(maskedFrame(true, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))); err != nil {
		t.Fatal(err)
	}
	if op, _ := wsRead(t, tc, r); op != ws.OpClose {
		t.Fatalf("answer to close: %v", op)
	}

	// MQTT over TLS without the upgrade: an HTTP refusal.
	tc2, err := tls.Dial("tcp", s.WSSAddr(), tlsClientConfig(pki, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer tc2.Close()
	_, _ = tc2.Write(append(connect, "\r\n\r\n"...))
	_ = tc2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(tc2), nil); err != nil || resp.StatusCode/100 != 4 {
		t.Fatalf("MQTT over TLS to the WebSocket port: %v, %v; want an HTTP 4xx", resp, err)
	}

	// An upgrade without TLS: a failed handshake, counted.
	before := s.tlsl.failures[tlsNotTLS].Get()
	plain, err := net.Dial("tcp", s.WSSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, _ = plain.Write([]byte(wsRequest))
	_ = plain.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(plain), nil); err == nil {
		t.Fatalf("plaintext upgrade on the TLS port answered %v", resp.Status)
	}
	waitFor(t, "not_tls counted", func() bool { return s.tlsl.failures[tlsNotTLS].Get() == before+1 })
}
