package interlink

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// sealPair returns the two ends of one direction of a link.
func sealPair(t testing.TB) (sealer, opener *frameCipher) {
	t.Helper()
	var dn, an [nonceLen]byte
	dn[0], an[0] = 1, 2
	k, _ := linkKeys([]byte(testSecret), dn, an, "a", "b")
	return newFrameCipher(k), newFrameCipher(k)
}

func sealedAck(t *testing.T, c *frameCipher, seq uint64) []byte {
	t.Helper()
	f, err := c.finish(appendAck(nil, 7, seq), 0)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// readSealed reads frames from b with opener until one fails; it returns
// the ack seqs it opened and the error that stopped it.
func readSealed(opener *frameCipher, b []byte) ([]uint64, error) {
	fr := &frameReader{r: bufio.NewReader(bytes.NewReader(b)), max: 4096, c: opener}
	var seqs []uint64
	for {
		t, p, err := fr.next()
		if err != nil {
			return seqs, err
		}
		_, seq, err := decodeAck(p)
		if t != frameAck || err != nil {
			return seqs, errors.New("not the ack that was sealed")
		}
		seqs = append(seqs, seq)
	}
}

// A sealed frame opens on the other end only as it was sent, in its
// place: any changed byte, a replay, a swap or a gap fails.
func TestSealedFrames(t *testing.T) {
	s, o := sealPair(t)
	var stream []byte
	for i := range 3 {
		stream = append(stream, sealedAck(t, s, uint64(i+1))...)
	}
	n := len(stream) / 3
	seqs, err := readSealed(o, stream)
	if !errors.Is(err, io.EOF) || len(seqs) != 3 || seqs[2] != 3 {
		t.Fatalf("opened %v, then %v; want 1 2 3 then EOF", seqs, err)
	}
	if bytes.Contains(stream, appendAck(nil, 7, 1)[frameHeader:]) {
		t.Fatal("the payload is readable in the sealed frame")
	}
	if n != len(appendAck(nil, 7, 1))+tagLen {
		t.Fatalf("sealed frame of %d bytes, want the plain one plus a %d-byte tag", n, tagLen)
	}
	frame := func(i int) []byte { return stream[i*n : (i+1)*n] }
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	fresh := func() *frameCipher { _, o := sealPair(t); return o }
	for i := range n {
		b := bytes.Clone(stream)
		b[i] ^= 0x20
		seqs, err := readSealed(fresh(), b)
		if len(seqs) != 0 || !errors.Is(err, ErrFrame) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("byte %d flipped: opened %v, then %v", i, seqs, err)
		}
	}
	for _, c := range []struct {
		name string
		b    []byte
		good int
	}{
		{"replayed", cat(frame(0), frame(0)), 1},
		{"swapped", cat(frame(1), frame(0)), 0},
		{"dropped", cat(frame(0), frame(2)), 1},
		{"truncated to the tag", frame(0)[:frameHeader+tagLen-1], 0},
	} {
		seqs, err := readSealed(fresh(), c.b)
		if len(seqs) != c.good || !errors.Is(err, ErrFrame) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: opened %v, then %v; want %d good then a bad frame", c.name, seqs, err, c.good)
		}
	}
	// The length header is authenticated too: a frame relabelled shorter
	// or longer fails.
	b := bytes.Clone(frame(0))
	binary.BigEndian.PutUint32(b, binary.BigEndian.Uint32(b)-1)
	if _, err := readSealed(fresh(), b[:len(b)-1]); !errors.Is(err, errUnauthentic) {
		t.Errorf("shortened frame: %v", err)
	}
}

// Both ends derive the same keys; the directions' keys differ, and any
// change of nonce, name or secret gives others.
func TestLinkKeys(t *testing.T) {
	var dn, an [nonceLen]byte
	dn[0], an[0] = 1, 2
	up, down := linkKeys([]byte(testSecret), dn, an, "a", "b")
	if up == down {
		t.Fatal("both directions have the same key")
	}
	if u2, d2 := linkKeys([]byte(testSecret), dn, an, "a", "b"); u2 != up || d2 != down {
		t.Fatal("keys not deterministic")
	}
	other := [][nonceLen]byte{dn, an}
	other[0][15] ^= 1
	for _, k := range [][2][32]byte{
		pairOf(linkKeys([]byte(testSecret), other[0], an, "a", "b")),
		pairOf(linkKeys([]byte(testSecret), dn, other[0], "a", "b")),
		pairOf(linkKeys([]byte(testSecret), an, dn, "a", "b")),
		pairOf(linkKeys([]byte(testSecret), dn, an, "b", "a")),
		pairOf(linkKeys([]byte(testSecret), dn, an, "a", "bb")),
		pairOf(linkKeys([]byte(testSecret+"!"), dn, an, "a", "b")),
	} {
		if k[0] == up || k[1] == down || k[0] == down || k[1] == up {
			t.Fatal("a different input gave a key of this link")
		}
	}
}

func pairOf(a, b [32]byte) [2][32]byte { return [2][32]byte{a, b} }

// mitm is a TCP proxy between a dialer and an acceptor that reads the
// frames going each way and, when armed, tampers with the first
// post-handshake frame of the chosen type: it flips a byte of it,
// sends it twice, or swaps it with the next frame.
type mitm struct {
	t      *testing.T
	ln     net.Listener
	target atomic.Pointer[string]
	conns  atomic.Int32 // connections proxied

	mu     sync.Mutex
	action string // flip-type, flip-body, flip-tag, flip-ack, replay, reorder; "" when spent
	fired  chan struct{}
	open   []net.Conn
}

func startMITM(t *testing.T) *mitm {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mitm{t: t, ln: ln, fired: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		m.mu.Lock()
		for _, c := range m.open {
			c.Close()
		}
		m.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go m.serve(c)
		}
	}()
	return m
}

func (m *mitm) arm(action string) {
	m.mu.Lock()
	m.action = action
	m.mu.Unlock()
}

// take returns what to do with a frame of type typ going up (dialer to
// acceptor) or down, after the handshake, and disarms the proxy if it
// fires.
func (m *mitm) take(up bool, typ byte) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	a := m.action
	want := frameBatch
	if a == "flip-ack" {
		want = frameAck
	}
	if a == "" || up == (a == "flip-ack") || typ != want {
		return ""
	}
	m.action = ""
	close(m.fired)
	return a
}

func (m *mitm) serve(c net.Conn) {
	target := m.target.Load()
	if target == nil {
		c.Close()
		return
	}
	up, err := net.Dial("tcp", *target)
	if err != nil {
		c.Close()
		return
	}
	m.conns.Add(1)
	m.mu.Lock()
	m.open = append(m.open, c, up)
	m.mu.Unlock()
	go m.pipe(up, c, true, 2) // HELLO, PROOF
	m.pipe(c, up, false, 1)   // WELCOME
}

// pipe copies frames from src to dst, the first handshake ones untouched.
func (m *mitm) pipe(dst, src net.Conn, up bool, handshake int) {
	defer dst.Close()
	defer src.Close()
	r := bufio.NewReader(src)
	var held []byte
	for i := 0; ; i++ {
		var h [frameHeader]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		f := make([]byte, frameHeader+int(binary.BigEndian.Uint32(h[:4]))-1)
		copy(f, h[:])
		if _, err := io.ReadFull(r, f[frameHeader:]); err != nil {
			return
		}
		out := [][]byte{f}
		if held != nil {
			out, held = [][]byte{f, held}, nil
		} else if i >= handshake {
			switch m.take(up, f[4]) {
			case "flip-type":
				f[4] ^= 0x01
			case "flip-body":
				f[frameHeader+(len(f)-frameHeader-tagLen)/2] ^= 0x01
			case "flip-tag", "flip-ack":
				f[len(f)-1] ^= 0x80
			case "replay":
				out = [][]byte{f, f}
			case "reorder":
				held, out = f, nil
			}
		}
		for _, o := range out {
			if _, err := dst.Write(o); err != nil {
				return
			}
		}
	}
}

// pairVia starts a and b with a's lanes to b running through a fresh
// mitm, one lane each.
func pairVia(t *testing.T) (*Node, *Node, *recorder, *mitm) {
	t.Helper()
	m := startMITM(t)
	ca, cb := testConfig("a"), testConfig("b")
	ca.Lanes, cb.Lanes = 1, 1
	cb.Advertise = m.ln.Addr().String()
	ra, rb := newRecorder(), newRecorder()
	a := startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	// a may dial m before this; m closes such a connection and a retries.
	target := b.Addr()
	m.target.Store(&target)
	waitUp(t, ra, "b")
	waitUp(t, rb, "a")
	waitFor(t, func() bool { return a.Members()[1].LanesUp == 1 && b.Members()[1].LanesUp == 1 })
	return a, b, rb, m
}

// A frame tampered with on the way (one byte flipped in either direction,
// a frame replayed, two frames swapped) closes the link; it reconnects and
// every reliable record sent across arrives exactly once, in order.
func TestTamperedLinkClosesAndLosesNothing(t *testing.T) {
	for _, action := range []string{"flip-type", "flip-body", "flip-tag", "flip-ack", "replay", "reorder"} {
		t.Run(action, func(t *testing.T) {
			a, b, rb, m := pairVia(t)
			m.arm(action)
			const n = 3000
			sent := make(chan error, 1)
			go func() {
				for i := range n {
					if err := a.Send("b", 0, 3, body(i), true); err != nil {
						sent <- err
						return
					}
					if i%100 == 99 {
						time.Sleep(time.Millisecond) // several batches
					}
				}
				sent <- nil
			}()
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			select {
			case <-m.fired:
			case <-time.After(10 * time.Second):
				t.Fatal("the proxy never tampered with a frame")
			}
			rb.waitCount(t, "a", n)
			waitFor(t, func() bool { return a.Members()[1].Queued == 0 })
			victim := b // the acceptor reads what goes up
			if action == "flip-ack" {
				victim = a
			}
			if got := victim.stats.unauthentic.Get(); got != 1 {
				t.Errorf("%d frames failed to open, want 1", got)
			}
			if got := m.conns.Load(); got < 2 {
				t.Errorf("%d connections through the proxy, want a reconnect", got)
			}
			rb.mu.Lock()
			defer rb.mu.Unlock()
			if len(rb.got["a"]) != n {
				t.Fatalf("%d records arrived, want %d", len(rb.got["a"]), n)
			}
			for i, r := range rb.got["a"] {
				if v, _ := binary.Uvarint(r.Body); v != uint64(i) || !r.Reliable {
					t.Fatalf("record %d is %d (reliable %v)", i, v, r.Reliable)
				}
			}
		})
	}
}

// A wrong secret, or none on one side, cannot link. (Gossip is encrypted
// with a key from the secret, so such a node cannot even join; the lane
// dials the acceptor directly to see the handshake refuse it.)
func TestWrongSecretRejected(t *testing.T) {
	for _, c := range []struct{ name, acceptor, dialer string }{
		{"wrong secret", "the first secret of two", "the second secret of two"},
		{"insecure dialer", testSecret, ""},
		{"insecure acceptor", "", testSecret},
	} {
		t.Run(c.name, func(t *testing.T) {
			ca, cb := testConfig("a"), testConfig("b")
			ca.Secret, ca.Insecure = c.acceptor, c.acceptor == ""
			cb.Secret, cb.Insecure = c.dialer, c.dialer == ""
			a := startNode(t, ca, newRecorder())
			b, err := New(cb, newRecorder())
			if err != nil {
				t.Fatal(err)
			}
			p := &peer{n: b, name: "a", st: b.stats.peer("a")}
			p.mu.addr = a.Addr()
			l := &lane{p: p, wake: make(chan struct{}, 1)}
			if _, _, err := l.dial(); err == nil {
				t.Fatal("linked")
			}
			waitFor(t, func() bool { return a.stats.handshakeFailures.Get() == 1 })
		})
	}
}

// logBuffer collects a node's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func logTo(c *Config) *logBuffer {
	lb := &logBuffer{}
	c.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return lb
}

// A peer of the previous interlink version is refused at handshake, with
// a log line that names both versions.
func TestOldVersionRefused(t *testing.T) {
	c := testConfig("a")
	logs := logTo(&c)
	a := startNode(t, c, newRecorder())
	conn, err := net.Dial("tcp", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h := hello{node: "old", epoch: 1}
	f := h.append(nil)
	f[frameHeader+len(magic)] = 1
	if _, err := conn.Write(f); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, p, _, err := readFrame(bufio.NewReader(conn), nil, 4096)
	if err != nil || typ != frameReject {
		t.Fatalf("got frame %d, %v; want REJECT", typ, err)
	}
	if r := (&reader{b: p}); !strings.Contains(r.str("reason", 4096), "version 1, this node speaks 2") {
		t.Fatalf("reject reason %q", p)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "peer rejected") && strings.Contains(logs.String(), "interlink version 1, this node speaks 2")
	})
}

// A connection that says nothing, or not all of its HELLO, is closed when
// the handshake deadline passes.
func TestHandshakeDeadline(t *testing.T) {
	c := testConfig("a")
	c.HandshakeTimeout = 300 * time.Millisecond
	a := startNode(t, c, newRecorder())
	for _, say := range [][]byte{nil, {0, 0, 0, 40, frameHello, 'G'}} {
		conn, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := conn.Write(say); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		took := time.Since(start)
		conn.Close()
		if !errors.Is(err, io.EOF) {
			t.Fatalf("read %v, want the acceptor to close", err)
		}
		if took < 250*time.Millisecond || took > 5*time.Second {
			t.Fatalf("closed after %s, want about the 300ms deadline", took)
		}
	}
	waitFor(t, func() bool { return a.stats.handshakeFailures.Get() == 2 && a.pending.Load() == 0 })
}

// Past Config.PendingHandshakes idle connections, new ones are closed at
// once; when the idle ones go, peers link again.
func TestPendingHandshakeCap(t *testing.T) {
	const limit, extra = 4, 6
	c := testConfig("a")
	c.PendingHandshakes = limit
	c.HandshakeTimeout = 30 * time.Second
	logs := logTo(&c)
	ra := newRecorder()
	a := startNode(t, c, ra)
	var idle []net.Conn
	for range limit {
		conn, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		idle = append(idle, conn)
	}
	waitFor(t, func() bool { return a.pending.Load() == limit })
	for range extra {
		conn, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection over the cap: read %v, want a close", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("connection over the cap closed after %s, want at once", took)
		}
	}
	if got := a.stats.handshakesShed.Get(); got != extra {
		t.Fatalf("%d connections refused, want %d", got, extra)
	}
	if !strings.Contains(logs.String(), "too many handshakes pending") {
		t.Errorf("no log line for the refusals:\n%s", logs)
	}
	for _, conn := range idle {
		conn.Close()
	}
	waitFor(t, func() bool { return a.pending.Load() == 0 })
	cb := testConfig("b")
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	startNode(t, cb, newRecorder())
	waitUp(t, ra, "b")
}

// Gossip is encrypted with a secret and refuses a member that speaks it
// plain; --cluster-insecure leaves it plain, and says so once at start.
func TestGossipEncryption(t *testing.T) {
	sc := testConfig("s")
	s := startNode(t, sc, newRecorder())
	ic := testConfig("i")
	ic.Secret, ic.Insecure = "", true
	logs := logTo(&ic)
	i := startNode(t, ic, newRecorder())
	if !s.gossipEncrypted || i.gossipEncrypted {
		t.Fatalf("gossip encrypted: with a secret %v, insecure %v", s.gossipEncrypted, i.gossipEncrypted)
	}
	if got := strings.Count(logs.String(), "level=WARN"); got != 1 || !strings.Contains(logs.String(), "without a secret") {
		t.Fatalf("insecure node logged %d warnings, want the one about the secret:\n%s", got, logs)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name, mc.BindAddr, mc.BindPort = "plain", "127.0.0.1", 0
	mc.Logger = log.New(io.Discard, "", 0)
	plain, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = plain.Shutdown() }()
	if _, err := plain.Join([]string{s.ml.LocalNode().Address()}); err == nil {
		t.Fatal("a member without the key joined the encrypted gossip")
	}
	if _, err := plain.Join([]string{i.ml.LocalNode().Address()}); err != nil {
		t.Fatalf("joining the insecure node's gossip: %v", err)
	}
	waitFor(t, func() bool { return i.ml.NumMembers() == 2 })
	if s.ml.NumMembers() != 1 {
		t.Fatalf("the encrypted node lists %d members", s.ml.NumMembers())
	}
}

// A node needs a long enough secret, or Insecure, and not both.
func TestSecretRequired(t *testing.T) {
	for _, c := range []struct {
		secret   string
		insecure bool
		want     string
	}{
		{"", false, "needs a secret of at least 16 bytes"},
		{"fifteen bytes!!", false, "at least 16 bytes, got 15"},
		{testSecret, true, "one or the other"},
		{testSecret, false, ""},
		{"", true, ""},
	} {
		cfg := testConfig("a")
		cfg.Secret, cfg.Insecure = c.secret, c.insecure
		err := cfg.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("secret %q insecure %v: %v, want %q", c.secret, c.insecure, err, c.want)
		}
	}
}

// BenchmarkSeal measures sealing a BATCH frame and opening it on the
// other end, per payload size (a default 64 KiB batch of 200-byte JSON
// messages is about 9 KiB after s2).
func BenchmarkSeal(b *testing.B) {
	for _, size := range []int{256, 9 << 10, 64 << 10} {
		b.Run("payload="+sizeName(size), func(b *testing.B) {
			s, o := sealPair(b)
			payload := bytes.Repeat([]byte{0x5a}, size)
			var f []byte
			fr := &frameReader{max: size, c: o}
			rd := bytes.NewReader(nil)
			fr.r = bufio.NewReaderSize(rd, size+64)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				f, err = s.finish(appendBytesFrame(f[:0], frameBatch, payload), 0)
				if err != nil {
					b.Fatal(err)
				}
				rd.Reset(f)
				fr.r.Reset(rd)
				if _, _, err := fr.next(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func sizeName(n int) string {
	if n >= 1<<10 {
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}
