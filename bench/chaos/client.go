package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// Client timing. The clients ping every pingEvery and give a connection
// up when nothing arrives for silentAfter, so that a client of a paused
// node moves on after about as long as the cluster takes to declare the
// node failed.
const (
	keepAlive   = 2 // seconds, as sent in CONNECT
	pingEvery   = time.Second
	silentAfter = 3 * time.Second
	dialTimeout = 5 * time.Second // the broker waits up to 3 s for a takeover
)

// Topics. Publisher p sends to dataTopic(p, k) and, every retainEvery-th
// message, a retained message to retainTopic(p); subscribers take
// dataFilter and probeFilter.
const (
	dataFilter  = "chaos/t/#"
	probeFilter = "chaos/probe/#"
)

func dataTopic(pub string, k int) string { return "chaos/t/" + pub + "/" + strconv.Itoa(k) }
func retainTopic(pub string) string      { return "chaos/r/" + pub }
func probeTopic(node string) string      { return "chaos/probe/" + node }

// payload is what a message carries: its publisher and sequence number.
func payload(pub string, seq int64) []byte { return []byte(pub + " " + strconv.FormatInt(seq, 10)) }

// parsePayload reads what payload wrote.
func parsePayload(b []byte) (pub string, seq int64, ok bool) {
	p, s, found := strings.Cut(string(b), " ")
	if !found {
		return "", 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return p, n, err == nil
}

// target is a node a client may connect to.
type target struct{ name, addr string }

// base is what publishers and subscribers share: an id, the nodes to
// connect to as a load balancer would pick them, and the history.
type base struct {
	id      string
	h       *History
	targets []target
	home    int // first node
	rng     *rand.Rand
	conns   int // connections made; the current one's number
	last    int // node of the current or last connection
}

// connect connects to a node, the home node first and then nodes picked
// at random (a different one from the last after a failure), until one
// accepts or ctx ends. It returns nil when ctx ended first.
func (b *base) connect(ctx context.Context, receiveMax uint16) (*mqttConn, *codec.Connack, target) {
	i := b.home
	if b.conns > 0 {
		i = b.rng.IntN(len(b.targets))
	}
	for ctx.Err() == nil {
		t := b.targets[i]
		c, ca, err := dialMQTT(ctx, t.addr, connectOpts{id: b.id, keepAlive: keepAlive, receiveMax: receiveMax, timeout: dialTimeout})
		if err == nil {
			b.conns++
			b.last = i
			b.h.Add(Op{Kind: OpConnect, Client: b.id, Node: t.name, Conn: b.conns, Present: ca.SessionPresent})
			return c, ca, t
		}
		if ctx.Err() != nil {
			break
		}
		o := Op{Kind: OpConnectFail, Client: b.id, Node: t.name, Note: err.Error()}
		if ca != nil {
			o.Code = byte(ca.Code)
		}
		b.h.Add(o)
		// Another node next time, after a short pause.
		i = (i + 1 + b.rng.IntN(len(b.targets)-1)) % len(b.targets)
		sleep(ctx, time.Duration(50+b.rng.IntN(200))*time.Millisecond)
	}
	return nil, nil, target{}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// pinger sends PINGREQ every pingEvery until done is closed.
func pinger(c *mqttConn, done <-chan struct{}) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if c.send(&codec.Pingreq{}) != nil {
				return
			}
		}
	}
}

// outMsg is a message a publisher sent and the broker has not finished.
type outMsg struct {
	seq    int64
	topic  string
	retain bool
	pid    uint16
	rec    bool // QoS 2: PUBREC received, PUBREL owed
}

// publisher sends numbered messages at a steady rate with a persistent
// session, keeping at most window unfinished. After a reconnect it
// finishes what the broker did not: with the session present, PUBLISH
// again with DUP and the same packet id (or PUBREL after a PUBREC); with
// the session lost, QoS 1 messages are sent again, and QoS 2 messages
// never PUBRECed are given up as in doubt rather than risk a second copy
// (their publisher cannot know whether the broker kept them).
type publisher struct {
	base
	qos         byte
	topics      int
	interval    time.Duration
	window      int
	retainEvery int64

	stopping atomic.Bool // no new messages; run ends once pending is empty

	mu      sync.Mutex
	pending map[uint16]*outMsg
	nextPID uint16
	seq     int64
	sent    atomic.Int64
}

func newPublisher(b base, qos byte, rate float64, window int) *publisher {
	return &publisher{base: b, qos: qos, topics: 2, interval: time.Duration(float64(time.Second) / rate), window: window,
		retainEvery: 25, pending: make(map[uint16]*outMsg)}
}

// stop asks for no new messages: run returns once the sent ones are
// finished (or its context ends).
func (p *publisher) stop() { p.stopping.Store(true) }

func (p *publisher) unfinished() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

func (p *publisher) run(ctx context.Context) {
	for ctx.Err() == nil {
		if p.stopping.Load() && p.unfinished() == 0 {
			return
		}
		c, ca, t := p.connect(ctx, 65535)
		if c == nil {
			return
		}
		err := p.serve(ctx, c, ca.SessionPresent, t)
		c.close()
		p.h.Add(Op{Kind: OpDisconnect, Client: p.id, Node: t.name, Conn: p.conns, Note: why(err)})
	}
}

// sortedLocked returns the pending messages in the order they were sent.
// REQUIRES: p.mu held.
func (p *publisher) sortedLocked() []*outMsg {
	ms := make([]*outMsg, 0, len(p.pending))
	for _, m := range p.pending {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b *outMsg) int { return int(a.seq - b.seq) })
	return ms
}

// resume finishes, on a new connection, what the last one left.
func (p *publisher) resume(c *mqttConn, present bool, t target) error {
	p.mu.Lock()
	var out []appender
	for _, m := range p.sortedLocked() {
		op := Op{Client: p.id, Node: t.name, Conn: p.conns, Pub: p.id, Seq: m.seq, Topic: m.topic, QoS: p.qos, PID: m.pid, Retain: m.retain}
		switch {
		case present && m.rec:
			out = append(out, &codec.Ack{Kind: codec.PUBREL, PacketID: m.pid})
		case present:
			op.Kind, op.Dup = OpSend, true
			p.h.Add(op)
			out = append(out, &codec.Publish{Dup: true, QoS: p.qos, Retain: m.retain, Topic: []byte(m.topic), PacketID: m.pid, Payload: payload(p.id, m.seq)})
		case p.qos == 1:
			op.Kind, op.Note = OpSend, "again, in a new session"
			p.h.Add(op)
			out = append(out, &codec.Publish{QoS: 1, Retain: m.retain, Topic: []byte(m.topic), PacketID: m.pid, Payload: payload(p.id, m.seq)})
		case m.rec:
			// The broker owns it (PUBRECed): nothing left to send.
			delete(p.pending, m.pid)
		default:
			op.Kind, op.Note = OpInDoubt, "session lost before PUBREC"
			p.h.Add(op)
			delete(p.pending, m.pid)
		}
	}
	p.mu.Unlock()
	for _, a := range out {
		if err := c.send(a); err != nil {
			return err
		}
	}
	return nil
}

func (p *publisher) serve(ctx context.Context, c *mqttConn, present bool, t target) error {
	if err := p.resume(c, present, t); err != nil {
		return err
	}
	done := make(chan struct{})
	readErr := make(chan error, 1)
	go func() { readErr <- p.readLoop(c, t) }()
	go pinger(c, done)
	defer close(done)
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("run over")
		case err := <-readErr:
			return err
		case <-tick.C:
		}
		if p.stopping.Load() {
			if p.unfinished() == 0 {
				_ = c.send(&codec.Disconnect{})
				return fmt.Errorf("done")
			}
			continue
		}
		if pub := p.next(t); pub != nil {
			if err := c.send(pub); err != nil {
				return err
			}
		}
	}
}

// next is the next new message, or nil while the window is full.
func (p *publisher) next(t target) *codec.Publish {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) >= p.window {
		return nil
	}
	p.seq++
	m := &outMsg{seq: p.seq, topic: dataTopic(p.id, int(p.seq)%p.topics)}
	if p.seq%p.retainEvery == 0 {
		m.topic, m.retain = retainTopic(p.id), true
	}
	for {
		p.nextPID++
		if p.nextPID == 0 {
			p.nextPID = 1
		}
		if p.pending[p.nextPID] == nil {
			break
		}
	}
	m.pid = p.nextPID
	p.pending[m.pid] = m
	p.sent.Add(1)
	p.h.Add(Op{Kind: OpSend, Client: p.id, Node: t.name, Conn: p.conns, Pub: p.id, Seq: m.seq, Topic: m.topic, QoS: p.qos, PID: m.pid, Retain: m.retain})
	return &codec.Publish{QoS: p.qos, Retain: m.retain, Topic: []byte(m.topic), PacketID: m.pid, Payload: payload(p.id, m.seq)}
}

func (p *publisher) readLoop(c *mqttConn, t target) error {
	var ack codec.Ack
	for {
		fh, body, err := c.read(silentAfter)
		if err != nil {
			return err
		}
		switch fh.Type {
		case codec.PUBACK, codec.PUBREC, codec.PUBCOMP:
			if err := ack.Decode(fh, body, codec.V5); err != nil {
				return fmt.Errorf("bad %v: %w", fh.Type, err)
			}
			if rel := p.acked(&ack, t); rel {
				if err := c.send(&codec.Ack{Kind: codec.PUBREL, PacketID: ack.PacketID}); err != nil {
					return err
				}
			}
		case codec.DISCONNECT:
			var d codec.Disconnect
			_ = d.Decode(fh, body, codec.V5)
			return fmt.Errorf("DISCONNECT 0x%02x %v", byte(d.Code), d.Code)
		}
	}
}

// acked applies an acknowledgement; it reports whether a PUBREL is owed.
func (p *publisher) acked(a *codec.Ack, t target) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.pending[a.PacketID]
	if m == nil {
		return false // an answer to a resend that was already answered
	}
	op := Op{Client: p.id, Node: t.name, Conn: p.conns, Pub: p.id, Seq: m.seq, Topic: m.topic, QoS: p.qos, PID: m.pid, Retain: m.retain, Code: byte(a.Code)}
	switch {
	case a.Kind == codec.PUBCOMP:
		op.Kind = OpComplete
		delete(p.pending, a.PacketID)
	case a.Code.IsError():
		op.Kind = OpRefused
		delete(p.pending, a.PacketID)
	case a.Kind == codec.PUBREC:
		if !m.rec {
			m.rec = true
			op.Kind = OpAck
		} else {
			p.h.Add(Op{Kind: OpAck, Client: p.id, Node: t.name, Conn: p.conns, Pub: p.id, Seq: m.seq, PID: m.pid, Note: "PUBREC again"})
			return true
		}
	default:
		op.Kind = OpAck
		delete(p.pending, a.PacketID)
	}
	p.h.Add(op)
	return op.Kind == OpAck && a.Kind == codec.PUBREC
}

// subscriber holds a persistent session subscribed to every data topic
// and the probe topics, and records what arrives. QoS 2 messages are
// handed on at their PUBLISH (MQTT's method A): a PUBLISH whose packet id
// still awaits its PUBREL is a resend, recorded as such and not handed on.
type subscriber struct {
	base
	qos byte

	mu  sync.Mutex
	rx  map[uint16]bool
	cur *mqttConn

	got atomic.Int64 // deliveries, resends excluded
}

func newSubscriber(b base, qos byte) *subscriber {
	return &subscriber{base: b, qos: qos, rx: make(map[uint16]bool)}
}

func (s *subscriber) run(ctx context.Context) {
	for ctx.Err() == nil {
		c, ca, t := s.connect(ctx, 100)
		if c == nil {
			return
		}
		s.mu.Lock()
		s.cur = c
		if !ca.SessionPresent {
			clear(s.rx) // [MQTT-3.2.2-4]: a new session, no state kept
		}
		s.mu.Unlock()
		stop := context.AfterFunc(ctx, c.close)
		err := s.serve(c, ca.SessionPresent, t)
		stop()
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		c.close()
		if ctx.Err() != nil {
			err = fmt.Errorf("run over")
		}
		s.h.Add(Op{Kind: OpDisconnect, Client: s.id, Node: t.name, Conn: s.conns, Note: why(err)})
	}
}

// reconnect ends the current connection, as a client restarting would:
// the next one takes the session over from wherever its parts are.
func (s *subscriber) reconnect() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		_ = s.cur.send(&codec.Disconnect{})
		s.cur.close()
	}
}

func (s *subscriber) serve(c *mqttConn, present bool, t target) error {
	done := make(chan struct{})
	defer close(done)
	if !present {
		sub := &codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{
			{Filter: []byte(dataFilter), QoS: s.qos}, {Filter: []byte(probeFilter), QoS: 1}}}
		if err := c.send(sub); err != nil {
			return err
		}
	}
	go pinger(c, done)
	var pub codec.Publish
	var ack codec.Ack
	for {
		fh, body, err := c.read(silentAfter)
		if err != nil {
			return err
		}
		switch fh.Type {
		case codec.PUBLISH:
			if err := pub.Decode(fh, body, codec.V5); err != nil {
				return fmt.Errorf("bad PUBLISH: %w", err)
			}
			if err := s.deliver(c, &pub, t); err != nil {
				return err
			}
		case codec.PUBREL:
			if err := ack.Decode(fh, body, codec.V5); err != nil {
				return fmt.Errorf("bad PUBREL: %w", err)
			}
			s.mu.Lock()
			delete(s.rx, ack.PacketID)
			s.mu.Unlock()
			s.h.Add(Op{Kind: OpReleased, Client: s.id, Node: t.name, Conn: s.conns, PID: ack.PacketID})
			if err := c.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: ack.PacketID}); err != nil {
				return err
			}
		case codec.SUBACK:
			var sa codec.Suback
			if err := sa.Decode(fh, body, codec.V5); err != nil {
				return fmt.Errorf("bad SUBACK: %w", err)
			}
			for i, f := range []string{dataFilter, probeFilter} {
				if i < len(sa.Codes) {
					s.h.Add(Op{Kind: OpSubscribe, Client: s.id, Node: t.name, Conn: s.conns, Topic: f, Code: byte(sa.Codes[i])})
				}
			}
		case codec.DISCONNECT:
			var d codec.Disconnect
			_ = d.Decode(fh, body, codec.V5)
			return fmt.Errorf("DISCONNECT 0x%02x %v", byte(d.Code), d.Code)
		}
	}
}

func (s *subscriber) deliver(c *mqttConn, p *codec.Publish, t target) error {
	op := Op{Kind: OpDeliver, Client: s.id, Node: t.name, Conn: s.conns, Topic: string(p.Topic), QoS: p.QoS, PID: p.PacketID, Dup: p.Dup, Retain: p.Retain}
	if strings.HasPrefix(op.Topic, "chaos/probe/") {
		op.Kind, op.Note = OpProbe, string(p.Payload)
	} else if pub, seq, ok := parsePayload(p.Payload); ok {
		op.Pub, op.Seq = pub, seq
	} else {
		op.Note = fmt.Sprintf("payload %q", p.Payload)
	}
	var answer appender
	switch p.QoS {
	case 1:
		answer = &codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID}
	case 2:
		answer = &codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID}
		s.mu.Lock()
		if s.rx[p.PacketID] {
			op.Kind = OpRedeliver
		}
		s.rx[p.PacketID] = true
		s.mu.Unlock()
	}
	s.h.Add(op)
	if op.Kind == OpDeliver {
		s.got.Add(1)
	}
	if answer != nil {
		return c.send(answer)
	}
	return nil
}
