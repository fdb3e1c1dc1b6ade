package chaos

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// linkProxy stands between a node's interlink listener and the peers that
// dial it: the node advertises the proxy's address (--cluster-advertise),
// so every connection a peer makes to send to the node passes here. Each
// direction between two nodes has connections of its own (the dialer's
// lanes carry what it sends), so the proxy of node B carries A->B and the
// proxy of A carries B->A. It learns the dialer from the node name in the
// HELLO frame that opens each connection (interlink/doc.go), which lets
// it cut or delay one pair of nodes, or one node from all.
type linkProxy struct {
	ln     net.Listener
	target string // the node's private --cluster-listen

	mu    sync.Mutex
	cut   map[string]bool          // dialer -> refused and cut; "*" every dialer
	delay map[string]time.Duration // dialer -> added one-way delay; "*" every dialer
	conns map[*proxied]struct{}
}

// proxied is one connection through the proxy.
type proxied struct {
	from     string // dialer's node name, "" until its HELLO is read
	in, out  net.Conn
	closeOne sync.Once
}

func (c *proxied) close() {
	c.closeOne.Do(func() {
		_ = c.in.Close()
		_ = c.out.Close()
	})
}

// startProxy listens on a free loopback port and forwards to target.
func startProxy(target string) (*linkProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &linkProxy{ln: ln, target: target, cut: map[string]bool{}, delay: map[string]time.Duration{}, conns: map[*proxied]struct{}{}}
	go p.accept()
	return p, nil
}

func (p *linkProxy) addr() string { return p.ln.Addr().String() }

// close stops the proxy and every connection through it.
func (p *linkProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.close()
	}
}

func (p *linkProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.serve(in)
	}
}

// setCut cuts (or heals) the links from dialer ("*": from every peer):
// its connections close at once and new ones are closed as they come.
func (p *linkProxy) setCut(dialer string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !on {
		delete(p.cut, dialer)
		return
	}
	p.cut[dialer] = true
	for c := range p.conns {
		if dialer == "*" || c.from == dialer {
			c.close()
			delete(p.conns, c)
		}
	}
}

// setDelay adds d to every chunk forwarded in either direction on the
// links from dialer ("*": from every peer); 0 removes it.
func (p *linkProxy) setDelay(dialer string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d == 0 {
		delete(p.delay, dialer)
	} else {
		p.delay[dialer] = d
	}
}

func (p *linkProxy) isCut(from string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut["*"] || (from != "" && p.cut[from])
}

func (p *linkProxy) delayOf(from string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.delay["*"], p.delay[from])
}

func (p *linkProxy) serve(in net.Conn) {
	// The HELLO names the dialer; read it before dialing the node.
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	hello, from := readHello(in)
	_ = in.SetReadDeadline(time.Time{})
	if hello == nil || p.isCut(from) {
		_ = in.Close()
		return
	}
	out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		_ = in.Close()
		return
	}
	c := &proxied{from: from, in: in, out: out}
	p.mu.Lock()
	if p.cut["*"] || p.cut[from] {
		p.mu.Unlock()
		c.close()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	if _, err := out.Write(hello); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { p.pipe(c, out, in); done <- struct{}{} }()
	go func() { p.pipe(c, in, out); done <- struct{}{} }()
	<-done
}

// readHello reads the first interlink frame (4-byte length, then the
// frame) and the dialer's node name in it: type 1, magic "GNTL", version,
// then the name as a uvarint length and bytes. It returns the frame's
// bytes to pass on, and "" for a name it cannot read.
func readHello(r io.Reader) ([]byte, string) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, ""
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > 4096 {
		return hdr[:], "" // not a HELLO; let the node refuse it
	}
	frame := make([]byte, 4+n)
	copy(frame, hdr[:])
	if _, err := io.ReadFull(r, frame[4:]); err != nil {
		return nil, ""
	}
	b := frame[4:]
	if len(b) < 6 || b[0] != 1 || string(b[1:5]) != "GNTL" {
		return frame, ""
	}
	b = b[6:]
	l, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < l {
		return frame, ""
	}
	return frame, string(b[k : k+int(l)])
}

// chunk is bytes read at a moment, held back until their delay passes.
type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst, each chunk no sooner than the delay in force
// when it was read: a delay adds latency without cutting throughput.
func (p *linkProxy) pipe(c *proxied, dst, src net.Conn) {
	q := make(chan chunk, 256)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{b: buf[:n], at: time.Now().Add(p.delayOf(c.from))}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		if d := time.Until(ch.at); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(ch.b); err != nil {
			break
		}
	}
	c.close()
	for range q { // let the reader finish
	}
}
