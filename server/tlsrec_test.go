package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

// loopTLS is how many TLS connections the event loops serve themselves,
// bridgedTLS how many take the bridge.
func loopTLS(s *Server) int64    { return s.tlsl.open.Load() - s.tlsl.bridged.Load() }
func bridgedTLS(s *Server) int64 { return s.tlsl.bridged.Load() }

// recClient is a TLS 1.3 client that runs its handshake in crypto/tls and
// then takes over its own record layer with the broker's code, as the
// broker does, to say what crypto/tls does not: KeyUpdate, a tampered or
// oversized record, a bare close_notify. As a net.Conn it reads and
// writes application data, for rawConn.
type recClient struct {
	net.Conn // the TCP connection: addresses, deadlines, Close
	t        testing.TB
	suite    *tlsSuite
	rd, wr   tlsKeys
	st       tls.ConnectionState
	in       []byte // bytes read that are not a whole record yet
	plain    []byte // application data not read yet
	tickets  int    // NewSessionTicket messages from the broker
	updates  int    // KeyUpdate messages from the broker
	alert    int    // the alert the broker sent; -1: none
}

// dialRec connects to addr with cfg (TLS 1.3) and takes over the record
// layer once the handshake is done.
func dialRec(t testing.TB, addr string, cfg *tls.Config) *recClient {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close() })
	// Reads end at record boundaries, as the broker's do, so that
	// crypto/tls takes nothing past the broker's Finished.
	p := &tlsPeer{TCPConn: raw.(*net.TCPConn), bound: true}
	cfg = cfg.Clone()
	cfg.MinVersion = tls.VersionTLS13
	cfg.KeyLogWriter = &p.keys
	tc := tls.Client(p, cfg)
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	_ = raw.SetDeadline(time.Time{})
	if p.hdrN != 0 || p.body != 0 || p.keys.client == nil || p.keys.server == nil {
		t.Fatalf("after the handshake: %d header and %d body bytes to read, secrets %x %x", p.hdrN, p.body, p.keys.client, p.keys.server)
	}
	rc := &recClient{Conn: raw, t: t, st: tc.ConnectionState(), alert: -1}
	rc.suite = tlsSuiteOf(rc.st.CipherSuite)
	if rc.suite == nil {
		t.Fatalf("suite %s", tls.CipherSuiteName(rc.st.CipherSuite))
	}
	if err := rc.rd.set(rc.suite, p.keys.server); err != nil {
		t.Fatal(err)
	}
	if err := rc.wr.set(rc.suite, p.keys.client); err != nil {
		t.Fatal(err)
	}
	return rc
}

// mqtt returns a rawConn speaking MQTT through rc.
func (rc *recClient) mqtt(v codec.Version) *rawConn {
	return &rawConn{t: rc.t, c: rc, r: bufio.NewReader(rc), v: v}
}

// record reads the next record and returns its type and content.
func (rc *recClient) record() (byte, []byte, error) {
	for {
		if len(rc.in) >= recHeader {
			if size := recHeader + int(binary.BigEndian.Uint16(rc.in[3:])); len(rc.in) >= size {
				typ, pt, _, err := rc.rd.open(rc.in[:size])
				pt = bytes.Clone(pt)
				rc.in = rc.in[size:]
				return typ, pt, err
			}
		}
		buf := make([]byte, 64<<10)
		n, err := rc.Conn.Read(buf)
		rc.in = append(rc.in, buf[:n]...)
		if n == 0 && err != nil {
			return 0, nil, err
		}
	}
}

// Read returns application data. Handshake messages are taken on the
// way (a KeyUpdate that asks for ours is answered); an alert ends the
// stream: io.EOF for close_notify.
func (rc *recClient) Read(b []byte) (int, error) {
	for len(rc.plain) == 0 {
		typ, pt, err := rc.record()
		if err != nil {
			return 0, err
		}
		switch typ {
		case recTypeAppData:
			rc.plain = append(rc.plain, pt...)
		case recTypeHandshake:
			rc.handshake(pt)
		case recTypeAlert:
			rc.alert = int(pt[1])
			if pt[1] == alertCloseNotify {
				return 0, io.EOF
			}
			return 0, fmt.Errorf("alert %d from the broker", pt[1])
		default:
			return 0, fmt.Errorf("record of type %d", typ)
		}
	}
	n := copy(b, rc.plain)
	rc.plain = rc.plain[n:]
	return n, nil
}

func (rc *recClient) handshake(pt []byte) {
	for len(pt) >= 4 {
		n := int(pt[1])<<16 | int(pt[2])<<8 | int(pt[3])
		switch pt[0] {
		case 4:
			rc.tickets++
		case hsKeyUpdate:
			rc.updates++
			if err := rc.rd.update(rc.suite); err != nil {
				rc.t.Error(err)
			}
			if pt[4] == 1 {
				rc.keyUpdate(false)
			}
		default:
			rc.t.Errorf("handshake message of type %d from the broker", pt[0])
		}
		pt = pt[4+n:]
	}
}

// Write seals b into records.
func (rc *recClient) Write(b []byte) (int, error) {
	for i := 0; i < len(b); i += recMaxPlain {
		if err := rc.writeRecord(recTypeAppData, b[i:min(len(b), i+recMaxPlain)]); err != nil {
			return i, err
		}
	}
	return len(b), nil
}

func (rc *recClient) writeRecord(typ byte, content []byte) error {
	_, err := rc.Conn.Write(rc.wr.sealMsg(nil, typ, content...))
	return err
}

// keyUpdate sends KeyUpdate and moves to the next key.
func (rc *recClient) keyUpdate(requested bool) {
	req := byte(0)
	if requested {
		req = 1
	}
	if err := rc.writeRecord(recTypeHandshake, []byte{hsKeyUpdate, 0, 0, 1, req}); err != nil {
		rc.t.Fatal(err)
	}
	if err := rc.wr.update(rc.suite); err != nil {
		rc.t.Fatal(err)
	}
}

// TLS 1.3 connections are served on the loops, TLS 1.2 ones on the
// bridge; clients on either and on plain TCP (crypto/tls, paho over
// ssl://, Mosquitto's clients over OpenSSL) exchange small messages and
// messages of 1 MB, many records each, every sender to every receiver.
func TestTLSLoopExchange(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	if n := len(s.tlsl.loops); n != 2 {
		t.Fatalf("the listener knows %d event loops, want 2", n)
	}
	tls12 := tlsClientConfig(pki, nil)
	tls12.MaxVersion = tls.VersionTLS12

	type receiver struct {
		name string
		got  func(t *testing.T) (string, []byte)
	}
	var receivers []receiver
	type sender struct {
		name string
		pub  func(t *testing.T, topic string, payload []byte)
	}
	var senders []sender
	for _, p := range []struct {
		name string
		c    paho3.Client
	}{
		{"plain", dialV3(t, s, "plain", true, nil)},
		{"loop-paho", dialV3TLS(t, s, "loop-paho", tlsClientConfig(pki, nil))},
		{"bridge-paho", dialV3TLS(t, s, "bridge-paho", tls12)},
	} {
		ch := make(chan paho3.Message, 64)
		wait(t, p.c.Subscribe("all/#", 1, func(_ paho3.Client, m paho3.Message) { ch <- m }))
		receivers = append(receivers, receiver{p.name, func(t *testing.T) (string, []byte) {
			m := receive(t, ch)
			return m.Topic(), m.Payload()
		}})
		senders = append(senders, sender{p.name, func(t *testing.T, topic string, payload []byte) {
			wait(t, p.c.Publish(topic, 1, false, payload))
		}})
	}
	// crypto/tls, MQTT 5, byte by byte: one connection receives, another
	// publishes (QoS 1, waiting for the PUBACK), as a receiver must not
	// be read by two.
	rawSub := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V5)
	rawSub.connect("loop-raw-sub", nil)
	rawSub.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("all/#")}}})
	if _, ok := rawSub.expect().(*codec.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	receivers = append(receivers, receiver{"loop-raw", func(t *testing.T) (string, []byte) {
		p, ok := rawSub.expect().(*codec.Publish)
		if !ok {
			t.Fatal("expected PUBLISH")
		}
		return string(p.Topic), bytes.Clone(p.Payload)
	}})
	rawPub := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V5)
	rawPub.connect("loop-raw-pub", nil)
	senders = append(senders, sender{"loop-raw", func(t *testing.T, topic string, payload []byte) {
		rawPub.send(&codec.Publish{QoS: 1, PacketID: rawPub.nextID(), Topic: []byte(topic), Payload: payload})
		if _, ok := rawPub.expect().(*codec.Ack); !ok {
			t.Fatal("expected PUBACK")
		}
	}})

	var sub *mosquittoSub
	mosq := haveMosquitto()
	want := 2 * (len(senders) + 2)
	if mosq {
		sub = startMosquittoSub(t, s, "--cafile", pki.caFile, "--tls-version", "tlsv1.3", "-t", "all/#", "-C", strconv.Itoa(want))
		file := filepath.Join(t.TempDir(), "payload")
		for _, v := range []string{"tlsv1.3", "tlsv1.2"} {
			name := "mosquitto-" + v
			senders = append(senders, sender{name, func(t *testing.T, topic string, payload []byte) {
				if err := os.WriteFile(file, payload, 0o600); err != nil {
					t.Fatal(err)
				}
				runMosquitto(t, "mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(portOf(s.TLSAddr())), "--cafile", pki.caFile,
					"--tls-version", v, "-q", "1", "-t", topic, "-f", file)
			}})
		}
	} else {
		t.Log("mosquitto_pub and mosquitto_sub not installed (Debian package mosquitto-clients): Go clients only")
	}
	wantLoop := int64(3) // paho, two raw
	if mosq {
		wantLoop++ // mosquitto_sub
	}
	if got := loopTLS(s); got != wantLoop {
		t.Errorf("%d TLS connections on the loops, want %d", got, wantLoop)
	}
	if got := bridgedTLS(s); got != 1 {
		t.Errorf("%d TLS connections on the bridge, want 1 (the TLS 1.2 client)", got)
	}

	// Printable payloads (mosquitto_sub prints them), one per sender and
	// size.
	sent := map[string][]byte{}
	for i, snd := range senders {
		for _, size := range []int{20, 1_000_000} {
			payload := bytes.Repeat([]byte{byte('a' + i)}, size)
			copy(payload, fmt.Sprintf("%s %d ", snd.name, size))
			topic := fmt.Sprintf("all/%s/%d", snd.name, size)
			sent[topic] = payload
			snd.pub(t, topic, payload)
		}
	}
	for _, r := range receivers {
		got := map[string]bool{}
		for range len(sent) {
			topic, payload := r.got(t)
			if want, ok := sent[topic]; !ok || !bytes.Equal(payload, want) {
				t.Fatalf("%s got %s with %d bytes, want %d", r.name, topic, len(payload), len(want))
			}
			got[topic] = true
		}
		if len(got) != len(sent) {
			t.Errorf("%s got %d distinct messages, want %d", r.name, len(got), len(sent))
		}
	}
	if mosq {
		lines := strings.Split(strings.TrimSuffix(sub.wait(t), "\n"), "\n")
		got := map[string]bool{}
		for _, line := range lines {
			topic, payload, _ := strings.Cut(line, " ")
			if want, ok := sent[topic]; !ok || payload != string(want) {
				t.Fatalf("mosquitto_sub got %s with %d bytes, want %d", topic, len(payload), len(want))
			}
			got[topic] = true
		}
		if len(got) != len(sent) {
			t.Errorf("mosquitto_sub got %d distinct messages, want %d", len(got), len(sent))
		}
	}
}

func haveMosquitto() bool {
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	return true
}

// runMosquitto runs one of Mosquitto's clients to its end.
func runMosquitto(t *testing.T, tool string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
}

// mosquittoSub is mosquitto_sub over TLS to the broker, printing each
// message as its topic, a space and its payload.
type mosquittoSub struct {
	out  *syncBuf
	done chan error
}

// startMosquittoSub starts mosquitto_sub against s's TLS listener and
// returns once the broker holds one more subscription.
func startMosquittoSub(t *testing.T, s *Server, args ...string) *mosquittoSub {
	t.Helper()
	before := s.subs.Count()
	sub := &mosquittoSub{out: &syncBuf{}, done: make(chan error, 1)}
	cmd := exec.Command("mosquitto_sub", append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(portOf(s.TLSAddr())),
		"-F", "%t %p", "-W", "30"}, args...)...)
	cmd.Stdout, cmd.Stderr = sub.out, sub.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { sub.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitFor(t, "mosquitto_sub subscribed", func() bool { return s.subs.Count() > before })
	return sub
}

// wait returns mosquitto_sub's output once it exits.
func (sub *mosquittoSub) wait(t *testing.T) string {
	t.Helper()
	select {
	case err := <-sub.done:
		if err != nil {
			t.Fatalf("mosquitto_sub: %v\n%s", err, sub.out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mosquitto_sub still running after 30s:\n%s", sub.out.String())
	}
	return sub.out.String()
}

// The loop goes on from the sequence number crypto/tls left: after the
// session tickets it sends during the handshake, which with client
// certificates asked for (or required) go after the client's
// certificate; a resumed session, mutual TLS included, lands on the loop
// as well, and the client certificate's names reach the chain.
func TestTLSLoopSessionTickets(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	cert := pki.client(leafSpec{cn: "device-7", dns: []string{"device-7.example"}})
	for _, tc := range []struct {
		name     string
		clientCA bool
		policy   ClientAuth
		cert     *tls.Certificate
		cn       string
	}{
		{"no client certificates", false, "", nil, ""},
		{"certificates requested, none given", true, ClientAuthRequest, nil, ""},
		{"certificates requested and given", true, ClientAuthRequest, &cert, "device-7"},
		{"certificates required", true, ClientAuthRequire, &cert, "device-7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			ch := newChain(t, auth.ChainConfig{Sources: []auth.Source{rec}, AllowAnonymous: true})
			s := tlsBroker(t, pki, tc.clientCA, func(c *Config) {
				c.Auth = ch
				if tc.policy != "" {
					c.TLS.ClientAuth = tc.policy
				}
			})
			plain := dialRaw(t, s, codec.V311)
			plain.connect("plain", nil)
			subscribeCodes(plain, "from/#")

			cfg := tlsClientConfig(pki, tc.cert)
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			// Our own record layer reads the ticket records before the
			// CONNACK, and could not open the CONNACK if the broker's
			// sequence number were off; crypto/tls's takes the ticket
			// for the next connection to resume with.
			for i, step := range []struct{ own, resumed bool }{{true, false}, {false, false}, {false, true}, {true, true}} {
				id := fmt.Sprintf("ticket-%d", i)
				var rc *rawConn
				var st tls.ConnectionState
				var own *recClient
				if step.own {
					own = dialRec(t, s.TLSAddr(), cfg)
					rc, st = own.mqtt(codec.V5), own.st
				} else {
					rc = dialTLSRaw(t, s, cfg, codec.V5)
					st = rc.c.(*tls.Conn).ConnectionState()
				}
				if st.DidResume != step.resumed {
					t.Fatalf("connection %d: resumed %v, want %v", i, st.DidResume, step.resumed)
				}
				if ca := rc.connect(id, nil); ca.Code != codec.Success {
					t.Fatalf("connection %d: CONNACK %v", i, ca.Code)
				}
				if own != nil && own.tickets == 0 {
					t.Errorf("connection %d: no session ticket before the CONNACK", i)
				}
				if req := rec.request(t, id); req.Listener != "tls" || req.CertCN != tc.cn {
					t.Errorf("connection %d: listener %q, CN %q; want tls, %q", i, req.Listener, req.CertCN, tc.cn)
				}
				subscribeCodes(rc, "to/#")
				plain.send(&codec.Publish{Topic: []byte("to/x"), Payload: []byte("down")})
				if p, ok := rc.expect().(*codec.Publish); !ok || string(p.Payload) != "down" {
					t.Fatalf("connection %d: got %v, want the plain client's message", i, p)
				}
				rc.send(&codec.Publish{Topic: []byte("from/x"), Payload: []byte("up")})
				if p, ok := plain.expect().(*codec.Publish); !ok || string(p.Payload) != "up" {
					t.Fatalf("connection %d: plain client got %v, want the TLS client's message", i, p)
				}
				if n := loopTLS(s); n != 1 {
					t.Errorf("connection %d: %d TLS connections on the loops, want 1", i, n)
				}
				rc.send(&codec.Disconnect{})
				rc.expectClosed()
				if own != nil && own.alert != alertCloseNotify {
					t.Errorf("connection %d: the broker closed with alert %d, want close_notify", i, own.alert)
				}
				_ = rc.c.Close()
				waitFor(t, "the connection gone", func() bool { return s.tlsl.open.Load() == 0 })
			}
		})
	}
}

// A client's KeyUpdate moves the broker to its next key for reading and,
// when the client asks, for writing too after its own KeyUpdate; a
// KeyUpdate split over two records counts as one. MQTT flows both ways
// throughout.
func TestTLSLoopKeyUpdate(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	plain := dialRaw(t, s, codec.V311)
	plain.connect("plain", nil)
	subscribeCodes(plain, "up/#")
	own := dialRec(t, s.TLSAddr(), tlsClientConfig(pki, nil))
	rc := own.mqtt(codec.V311)
	rc.connect("updater", nil)
	subscribeCodes(rc, "down/#")

	exchange := func(step string) {
		t.Helper()
		plain.send(&codec.Publish{Topic: []byte("down/x"), Payload: []byte(step)})
		if p, ok := rc.expect().(*codec.Publish); !ok || string(p.Payload) != step {
			t.Fatalf("%s: TLS client got %v", step, p)
		}
		rc.send(&codec.Publish{QoS: 1, PacketID: rc.nextID(), Topic: []byte("up/x"), Payload: []byte(step)})
		if _, ok := rc.expect().(*codec.Ack); !ok {
			t.Fatalf("%s: expected PUBACK", step)
		}
		if p, ok := plain.expect().(*codec.Publish); !ok || string(p.Payload) != step {
			t.Fatalf("%s: plain client got %v", step, p)
		}
	}
	exchange("before")

	own.keyUpdate(true)
	exchange("after an update requested")
	if own.updates != 1 {
		t.Fatalf("the broker sent %d KeyUpdates, want 1", own.updates)
	}

	own.keyUpdate(false)
	exchange("after an update not requested")

	// Split over two records, both under the old key.
	for _, part := range [][]byte{{hsKeyUpdate, 0, 0}, {1, 1}} {
		if err := own.writeRecord(recTypeHandshake, part); err != nil {
			t.Fatal(err)
		}
	}
	if err := own.wr.update(own.suite); err != nil {
		t.Fatal(err)
	}
	exchange("after a split update")
	if own.updates != 2 {
		t.Fatalf("the broker sent %d KeyUpdates, want 2", own.updates)
	}
	if n := s.tlsl.recordErrors.Get(); n != 0 {
		t.Errorf("%d record errors counted", n)
	}
}

// The broker updates its own key before a key has sealed tlsRekeyAfter
// records; clients (crypto/tls, paho, mosquitto_sub) follow.
func TestTLSLoopRekeys(t *testing.T) {
	old := tlsRekeyAfter
	tlsRekeyAfter = 3
	t.Cleanup(func() { tlsRekeyAfter = old }) // after the broker stopped
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	var sub *mosquittoSub
	if haveMosquitto() {
		sub = startMosquittoSub(t, s, "--cafile", pki.caFile, "-t", "rekey/#", "-C", "20")
	}
	own := dialRec(t, s.TLSAddr(), tlsClientConfig(pki, nil))
	rc := own.mqtt(codec.V311)
	rc.connect("own", nil)
	subscribeCodes(rc, "rekey/#")
	got := make(chan paho3.Message, 20)
	pc := dialV3TLS(t, s, "paho", tlsClientConfig(pki, nil))
	wait(t, pc.Subscribe("rekey/#", 0, func(_ paho3.Client, m paho3.Message) { got <- m }))
	pub := dialRaw(t, s, codec.V311)
	pub.connect("pub", nil)
	for i := range 20 {
		payload := strconv.Itoa(i)
		pub.send(&codec.Publish{Topic: []byte("rekey/x"), Payload: []byte(payload)})
		if p, ok := rc.expect().(*codec.Publish); !ok || string(p.Payload) != payload {
			t.Fatalf("message %d: own record layer got %v", i, p)
		}
		if m := receive(t, got); string(m.Payload()) != payload {
			t.Fatalf("message %d: paho got %q", i, m.Payload())
		}
	}
	if own.updates < 5 {
		t.Errorf("the broker updated its key %d times in 20 messages and more, want 5 or more", own.updates)
	}
	if sub != nil {
		if out := sub.wait(t); strings.Count(out, "rekey/x ") != 20 {
			t.Errorf("mosquitto_sub got:\n%s", out)
		}
	}
}

// A record that does not open, or claims more than a record may hold,
// closes the connection with the alert RFC 8446 names, and is counted and
// logged; other clients notice nothing.
func TestTLSLoopBadRecords(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	logs := &syncBuf{}
	s := tlsBroker(t, pki, false, logTo(t, logs))
	bystander := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V311)
	bystander.connect("bystander", nil)

	for i, tc := range []struct {
		name   string
		record func(own *recClient) []byte
		alert  int
	}{
		{"tampered", func(own *recClient) []byte {
			r := own.wr.sealMsg(nil, recTypeAppData, connectBytes("tampered")...)
			r[len(r)-20] ^= 0x40
			return r
		}, alertBadRecordMAC},
		{"under the wrong key", func(own *recClient) []byte {
			own.wr.seq++
			return own.wr.sealMsg(nil, recTypeAppData, connectBytes("skipped")...)
		}, alertBadRecordMAC},
		{"too long", func(*recClient) []byte {
			hdr := []byte{recTypeAppData, 3, 3, 0, 0}
			binary.BigEndian.PutUint16(hdr[3:], recMaxCipher+1)
			return append(hdr, make([]byte, 100)...)
		}, alertRecordOverflow},
		{"plaintext handshake", func(*recClient) []byte { return []byte{recTypeHandshake, 3, 3, 0, 1, 0} }, alertUnexpectedMessage},
		{"NewSessionTicket from the client", func(own *recClient) []byte {
			return own.wr.sealMsg(nil, recTypeHandshake, 4, 0, 0, 0)
		}, alertUnexpectedMessage},
		{"KeyUpdate not ending its record", func(own *recClient) []byte {
			return own.wr.sealMsg(nil, recTypeHandshake, hsKeyUpdate, 0, 0, 1, 0, hsKeyUpdate)
		}, alertUnexpectedMessage},
		{"application data inside a split KeyUpdate", func(own *recClient) []byte {
			r := own.wr.sealMsg(nil, recTypeHandshake, hsKeyUpdate, 0)
			return own.wr.sealMsg(r, recTypeAppData, connectBytes("between")...)
		}, alertUnexpectedMessage},
		{"KeyUpdate asking for something unknown", func(own *recClient) []byte {
			return own.wr.sealMsg(nil, recTypeHandshake, hsKeyUpdate, 0, 0, 1, 2)
		}, alertIllegalParameter},
		{"alert of three bytes", func(own *recClient) []byte {
			return own.wr.sealMsg(nil, recTypeAlert, 2, 40, 0)
		}, alertDecodeError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			own := dialRec(t, s.TLSAddr(), tlsClientConfig(pki, nil))
			if _, err := own.Conn.Write(tc.record(own)); err != nil {
				t.Fatal(err)
			}
			rc := own.mqtt(codec.V311)
			if got := rc.expectClosed(); len(got) != 0 {
				t.Errorf("got %v before the close", got)
			}
			if own.alert != tc.alert {
				t.Errorf("alert %d, want %d", own.alert, tc.alert)
			}
			waitFor(t, "the error counted", func() bool { return s.tlsl.recordErrors.Get() == uint64(i+1) })
			waitFor(t, "the error logged", func() bool {
				return strings.Count(logs.String(), "reason=\"TLS record\"") == i+1
			})
		})
	}
	subscribeCodes(bystander, "still/here")
	waitFor(t, "only the bystander left", func() bool { return s.tlsl.open.Load() == 1 })
}

// close_notify from a client ends its connection as end-of-file does:
// the will is sent, and the broker answers with its own close_notify
// before its FIN. A client that sends DISCONNECT gets close_notify too.
func TestTLSLoopCloseNotify(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	plain := dialRaw(t, s, codec.V311)
	plain.connect("plain", nil)
	subscribeCodes(plain, "will/#")

	own := dialRec(t, s.TLSAddr(), tlsClientConfig(pki, nil))
	rc := own.mqtt(codec.V311)
	rc.connect("leaver", func(p *codec.Connect) {
		p.WillFlag, p.WillTopic, p.WillPayload = true, []byte("will/leaver"), []byte("gone")
	})
	if err := own.writeRecord(recTypeAlert, []byte{1, alertCloseNotify}); err != nil {
		t.Fatal(err)
	}
	if p, ok := plain.expect().(*codec.Publish); !ok || string(p.Topic) != "will/leaver" {
		t.Fatalf("got %v, want the will", p)
	}
	rc.expectClosed()
	if own.alert != alertCloseNotify {
		t.Errorf("the broker answered with alert %d, want close_notify", own.alert)
	}

	// A fatal alert closes the connection: the will is sent, and the
	// broker sends nothing more (RFC 8446 6.2).
	own = dialRec(t, s.TLSAddr(), tlsClientConfig(pki, nil))
	rc = own.mqtt(codec.V311)
	rc.connect("failer", func(p *codec.Connect) {
		p.WillFlag, p.WillTopic, p.WillPayload = true, []byte("will/failer"), []byte("gone")
	})
	if err := own.writeRecord(recTypeAlert, []byte{2, 80}); err != nil { // internal_error
		t.Fatal(err)
	}
	if p, ok := plain.expect().(*codec.Publish); !ok || string(p.Topic) != "will/failer" {
		t.Fatalf("got %v, want the will", p)
	}
	rc.expectClosed()
	if own.alert != -1 {
		t.Errorf("the broker answered a fatal alert with alert %d", own.alert)
	}

	// crypto/tls's CloseWrite sends close_notify too.
	tc := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V311)
	tc.connect("closer", func(p *codec.Connect) {
		p.WillFlag, p.WillTopic, p.WillPayload = true, []byte("will/closer"), []byte("gone")
	})
	if err := tc.c.(*tls.Conn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if p, ok := plain.expect().(*codec.Publish); !ok || string(p.Topic) != "will/closer" {
		t.Fatalf("got %v, want the will", p)
	}
	if _, err := tc.read(); err != io.EOF {
		t.Errorf("read %v, want EOF after the broker's close_notify", err)
	}
	waitFor(t, "the TLS connections gone", func() bool { return s.tlsl.open.Load() == 0 })
}

// MQTT over WebSocket over TLS 1.3 is served on the loops as well.
func TestTLSLoopWebSocket(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	certFile, keyFile := pki.serverFiles(100, "server.pem", "server-key.pem")
	s := startBroker(t, func(c *Config) {
		c.TLS = &TLSConfig{WSSListen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}
	})
	got := make(chan paho3.Message, 4)
	o := paho3.NewClientOptions().AddBroker("wss://" + s.WSSAddr() + "/mqtt").SetClientID("wss").
		SetTLSConfig(tlsClientConfig(pki, nil)).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	pc := paho3.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho over wss: %v", tok.Error())
	}
	defer pc.Disconnect(100)
	if n, b := s.tlsl.open.Load(), bridgedTLS(s); n != 1 || b != 0 {
		t.Fatalf("%d TLS connections, %d on the bridge; want 1 on a loop", n, b)
	}
	wait(t, pc.Subscribe("wss/#", 1, func(_ paho3.Client, m paho3.Message) { got <- m }))
	big := bytes.Repeat([]byte("0123456789"), 100_000)
	for _, payload := range [][]byte{[]byte("small"), big} {
		wait(t, pc.Publish("wss/x", 1, false, payload))
		if m := receive(t, got); !bytes.Equal(m.Payload(), payload) {
			t.Fatalf("got %d bytes, want %d", len(m.Payload()), len(payload))
		}
	}
}

// Handing over many connections at once, each sending CONNECT right
// behind its Finished, spreads them evenly over the loops and keeps the
// counts right while they come and go.
func TestTLSLoopManyConnections(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	s := tlsBroker(t, pki, false, nil)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make(chan *tls.Conn, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tls.Dial("tcp", s.TLSAddr(), tlsClientConfig(pki, nil))
			if err != nil {
				errs <- err
				return
			}
			conns <- c
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			id := fmt.Sprintf("many-%d", i)
			if _, err := c.Write(connectBytes(id)); err != nil {
				errs <- err
				return
			}
			ack := make([]byte, 4)
			if _, err := io.ReadFull(c, ack); err != nil || !slices.Equal(ack, []byte{0x20, 2, 0, 0}) {
				errs <- fmt.Errorf("%s: CONNACK % x, %v", id, ack, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Error(err)
	}
	// Count on each loop, where its connections may be read.
	counts := make(chan int, 2)
	for _, l := range s.loopList() {
		err := l.el.Execute(context.Background(), runFunc(func() {
			k := 0
			for _, c := range l.conns {
				if c.tls != nil && c.tls.rec != nil && c.connected {
					k++
				}
			}
			counts <- k
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if k := <-counts; k != n/2 {
			t.Errorf("a loop serves %d of the %d TLS connections, want %d", k, n, n/2)
		}
	}
	if got := s.tlsl.open.Load(); got != n || bridgedTLS(s) != 0 {
		t.Errorf("%d TLS connections, %d bridged; want %d on the loops", got, bridgedTLS(s), n)
	}
	for c := range conns {
		_ = c.Close()
	}
	waitFor(t, "every connection gone", func() bool {
		return s.tlsl.open.Load() == 0 && s.stats.connections.Load() == 0
	})
}

// FuzzTLSRecords feeds the record reader arbitrary bytes, and streams of
// records sealed from the input, split anywhere and optionally with one
// byte changed: it never panics, reads back what was sealed, and refuses
// a changed record.
func FuzzTLSRecords(f *testing.F) {
	f.Add([]byte{recTypeAppData, 3, 3, 0, 17}, uint16(0), uint16(0))
	f.Add([]byte("\x17\x03\x03\x40\x11hello"), uint16(3), uint16(9))
	f.Add(bytes.Repeat([]byte{0}, 40), uint16(20), uint16(100))
	f.Add([]byte{hsKeyUpdate, 0, 0, 1, 1}, uint16(2), uint16(0))
	suite := tlsSuiteOf(tls.TLS_AES_128_GCM_SHA256)
	secret := bytes.Repeat([]byte{7}, 32)
	f.Fuzz(func(t *testing.T, b []byte, split, flip uint16) {
		var k tlsKeys
		if err := k.set(suite, secret); err != nil {
			t.Fatal(err)
		}
		if _, pt, n, err := k.open(bytes.Clone(b)); err == nil && (n > len(b) || len(pt) > recMaxPlain) {
			t.Fatalf("record of %d bytes from %d, content %d", n, len(b), len(pt))
		}

		// Seal: b's first byte picks the content types, its bytes are the
		// content, cut into records of up to 300 bytes.
		var w tlsKeys
		if err := w.set(suite, secret); err != nil {
			t.Fatal(err)
		}
		var stream []byte
		var contents [][]byte
		var types []byte
		rest := b
		for i := 0; ; i++ {
			n := 0
			if len(rest) > 0 {
				n = min(len(rest), 1+int(rest[0])%300)
			}
			typ := byte(recTypeAppData)
			if i%3 == 2 {
				typ = recTypeHandshake
			}
			stream = w.sealMsg(stream, typ, rest[:n]...)
			contents, types = append(contents, rest[:n]), append(types, typ)
			if rest = rest[n:]; len(rest) == 0 {
				break
			}
		}
		changed := -1
		if flip != 0 && len(stream) > 0 {
			changed = int(flip) % len(stream)
			stream[changed] ^= 0x20
		}
		// Read in two parts, as a read may end anywhere.
		var r tlsKeys
		if err := r.set(suite, secret); err != nil {
			t.Fatal(err)
		}
		cut := int(split) % (len(stream) + 1)
		buf := bytes.Clone(stream[:cut])
		done, rec := 0, 0
		for step := 0; step < 2; step++ {
			for {
				typ, pt, n, err := r.open(buf)
				if err == errTLSIncomplete {
					break
				}
				if err != nil {
					if changed < 0 {
						t.Fatalf("record %d: %v", rec, err)
					}
					var ae *tlsAlertError
					if !errors.As(err, &ae) {
						t.Fatalf("record %d: %v, want an alert", rec, err)
					}
					return
				}
				if changed >= done && changed < done+n {
					t.Fatalf("record %d opened with byte %d changed", rec, changed-done)
				}
				if typ != types[rec] || !bytes.Equal(pt, contents[rec]) {
					t.Fatalf("record %d reads back as type %d, %q; want %d, %q", rec, typ, pt, types[rec], contents[rec])
				}
				buf, done, rec = buf[n:], done+n, rec+1
			}
			buf = append(bytes.Clone(buf), stream[cut:]...)
			cut = len(stream)
		}
		if rec != len(contents) && changed < 0 {
			t.Fatalf("read %d records, sealed %d", rec, len(contents))
		}
	})
}
