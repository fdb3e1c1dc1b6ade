package bench

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/gannetmq/gannet/codec"
)

// header is the start of every payload the generator sends: publisher
// index, sequence number and the send time, so a receiver can count losses,
// duplicates and latency. The rest of the payload is filler.
const headerSize = 4 + 8 + 8

func putHeader(b []byte, pub uint32, seq uint64, now int64) {
	binary.BigEndian.PutUint32(b, pub)
	binary.BigEndian.PutUint64(b[4:], seq)
	binary.BigEndian.PutUint64(b[12:], uint64(now))
}

// client is one MQTT connection. Its inbound side runs on a gnet event
// loop (OnTraffic), or over TLS and WebSocket on a goroutine of its own
// (stream.go); a publishing client also has a goroutine that writes
// batches with AsyncWrite and waits for window credit.
type client struct {
	run  *runner
	id   string
	user string // username sent in CONNECT; "" for none
	idx  uint32 // publisher index, when it publishes
	v    codec.Version
	conn gnet.Conn // nil for a stream client
	// stream is the connection of a client over TLS or WebSocket, which
	// a goroutine serves instead of an event loop (transport.go).
	stream *stream

	subscribe []codec.Subscription
	topic     []byte // publish topic
	shared    *sharedTrack

	// Loop-owned state.
	inbuf  []byte
	pub    codec.Publish
	ack    codec.Ack
	tracks map[uint32]*seqTrack

	connected chan struct{} // closed on CONNACK (and SUBACK when subscribing), refusal or close
	once      sync.Once
	slot      chan struct{} // conn: the window slot this client holds until connected is closed
	connectAt atomic.Int64  // when CONNECT was handed to the loop (Unix ns)
	acked     atomic.Bool   // CONNACK accepted the client
	refusal   atomic.Uint32 // 0x100 | the code of a refusing CONNACK; 0: none
	credit    chan struct{} // publish window
	pending   atomic.Int64  // QoS 0: messages since the last ping

	// Publisher state, owned by the goroutine that publishes for it.
	seq    uint64 // messages sent
	pid    uint16
	filler []byte
	closed atomic.Bool
	errs   atomic.Int64

	// The pacer writes a publisher's socket itself when nothing else does
	// (direct.go): wfd is its own descriptor for it and backlog what the
	// socket did not take yet.
	direct  bool
	wfd     int
	backlog []byte
	wbuf    []byte // send's buffer, reused when writing directly
}

func (c *client) ready() {
	c.once.Do(func() {
		close(c.connected)
		if c.slot != nil {
			<-c.slot
		}
	})
}

type handler struct {
	gnet.BuiltinEventEngine
}

func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*client)
	if !ok {
		return gnet.Close
	}
	buf, _ := gc.Next(-1)
	out, err := c.input(nil, buf)
	if err != nil {
		return gnet.Close
	}
	if len(out) > 0 {
		_, _ = gc.Write(out)
	}
	return gnet.None
}

// input decodes the packets in buf, the next bytes from the broker, and
// appends any answers to out. A packet cut short waits in c.inbuf for the
// rest. It is called by c's event loop, or by its goroutine for a stream
// client, never by both.
func (c *client) input(out, buf []byte) ([]byte, error) {
	held := len(c.inbuf) > 0
	if held {
		c.inbuf = append(c.inbuf, buf...)
		buf = c.inbuf
	}
	for len(buf) > 0 {
		fh, n, err := codec.DecodeFixedHeader(buf)
		if err == codec.ErrIncomplete || (err == nil && len(buf) < n+fh.Remaining) {
			break
		}
		if err != nil {
			c.errs.Add(1)
			c.run.errorf("%s: %v", c.id, err)
			return out, err
		}
		body := buf[n : n+fh.Remaining]
		buf = buf[n+fh.Remaining:]
		out = c.handle(out, fh, body)
	}
	switch {
	case !held:
		c.inbuf = append(c.inbuf[:0], buf...)
	case len(buf) < len(c.inbuf):
		// Keep the rest; nothing to move when no packet was complete (a
		// big packet arriving in many small reads).
		c.inbuf = c.inbuf[:copy(c.inbuf, buf)]
	}
	return out, nil
}

func (h *handler) OnClose(gc gnet.Conn, err error) gnet.Action {
	if c, ok := gc.Context().(*client); ok {
		c.closed.Store(true)
		// A refused client is closed by the broker: counted already.
		if !c.run.stopping.Load() && c.refusal.Load() == 0 {
			c.errs.Add(1)
			c.run.errorf("%s: connection closed: %v", c.id, err)
		}
		c.ready()
	}
	return gnet.None
}

// handle processes one inbound packet and appends any answer to out.
func (c *client) handle(out []byte, fh codec.FixedHeader, body []byte) []byte {
	switch fh.Type {
	case codec.CONNACK:
		var ca codec.Connack
		if err := ca.Decode(fh, body, c.v); err != nil {
			c.errs.Add(1)
			c.run.errorf("%s: CONNACK: %v", c.id, err)
			return out
		}
		if ca.Code != codec.Success {
			c.refused(ca.Code)
			return out
		}
		c.acked.Store(true)
		if c.run.cfg.Scenario == "conn" {
			c.run.record(time.Now().UnixNano() - c.connectAt.Load())
		}
		if len(c.subscribe) == 0 {
			c.ready()
			return out
		}
		return (&codec.Subscribe{PacketID: 1, Subs: c.subscribe}).Append(out, c.v)
	case codec.SUBACK:
		c.ready()
	case codec.PUBLISH:
		if err := c.pub.Decode(fh, body, c.v); err != nil {
			c.errs.Add(1)
			return out
		}
		c.receive(c.pub.Payload)
		switch c.pub.QoS {
		case 1:
			out = (&codec.Ack{Kind: codec.PUBACK, PacketID: c.pub.PacketID}).Append(out, c.v)
		case 2:
			out = (&codec.Ack{Kind: codec.PUBREC, PacketID: c.pub.PacketID}).Append(out, c.v)
		}
	case codec.PUBREL:
		if c.ack.Decode(fh, body, c.v) == nil {
			out = (&codec.Ack{Kind: codec.PUBCOMP, PacketID: c.ack.PacketID}).Append(out, c.v)
		}
	case codec.PUBACK, codec.PUBCOMP:
		c.release(1)
	case codec.PUBREC:
		if c.ack.Decode(fh, body, c.v) == nil {
			out = (&codec.Ack{Kind: codec.PUBREL, PacketID: c.ack.PacketID}).Append(out, c.v)
		}
	case codec.PINGRESP:
		c.release(int(c.run.cfg.PingEvery))
	case codec.DISCONNECT:
		c.errs.Add(1)
		c.run.errorf("%s: broker sent DISCONNECT", c.id)
	}
	return out
}

// receive accounts one delivered message.
func (c *client) receive(payload []byte) {
	r := c.run
	if len(payload) < headerSize {
		return
	}
	pub := binary.BigEndian.Uint32(payload)
	seq := binary.BigEndian.Uint64(payload[4:])
	sent := int64(binary.BigEndian.Uint64(payload[12:]))
	var fresh bool
	if c.shared != nil {
		fresh = c.shared.add(pub, seq)
	} else {
		t := c.tracks[pub]
		if t == nil {
			t = &seqTrack{}
			c.tracks[pub] = t
		}
		fresh = t.add(seq)
	}
	if !fresh {
		r.dups.Add(1)
		return
	}
	r.received.Add(1)
	if r.measuring.Load() {
		r.windowRecv.Add(1)
		r.record(time.Now().UnixNano() - sent)
	}
}

func (c *client) release(n int) {
	for range n {
		select {
		case c.credit <- struct{}{}:
		default:
			return
		}
	}
}

// publish sends messages until stop is closed or count is reached. Each
// message waits for window credit: QoS 1/2 credit returns with the
// acknowledgement, QoS 0 credit in blocks with each PINGRESP, so the
// generator never runs further ahead of the broker than the window. When
// the rate is unlimited, all the credit at hand goes out in one write. (A
// fixed rate with a tick is paced by runner.pace instead.)
func (c *client) publish(stop <-chan struct{}, limiter *rateLimiter, count int64) {
	const batchMax = 64
	for count == 0 || int64(c.seq) < count {
		if !limiter.wait(stop) {
			return
		}
		select {
		case <-stop:
			return
		case <-c.credit:
		}
		n := 1
		for limiter.every == 0 && n < batchMax && (count == 0 || int64(c.seq)+int64(n) < count) {
			select {
			case <-c.credit:
				n++
				continue
			default:
			}
			break
		}
		if !c.send(n) {
			return
		}
	}
}

// send writes n messages (credit for them taken) in one write. It reports
// false once the connection is gone.
func (c *client) send(n int) bool {
	if c.closed.Load() {
		return false
	}
	cfg := &c.run.cfg
	if c.filler == nil {
		c.filler = make([]byte, max(cfg.Payload, headerSize))
	}
	p := codec.Publish{QoS: cfg.QoS, Retain: cfg.Retain, Topic: c.topic, Payload: c.filler}
	var buf []byte
	if c.direct || c.stream != nil {
		buf = c.wbuf[:0] // written (or copied to the backlog) before send returns
	} else {
		buf = make([]byte, 0, n*(p.Size(c.v)+8)) // the event loop writes it later
	}
	now := time.Now().UnixNano()
	for range n {
		if cfg.QoS > 0 {
			c.pid++
			if c.pid == 0 {
				c.pid = 1
			}
			p.PacketID = c.pid
		}
		if cfg.Retain {
			p.Topic = append(append([]byte(nil), c.topic...), []byte("/"+itoa(int(c.seq%uint64(cfg.RetainedTopics))))...)
		}
		putHeader(c.filler, c.idx, c.seq, now)
		if cfg.JSON {
			fillJSON(c.filler[headerSize:], c.idx, c.seq, now)
		}
		buf = p.Append(buf, c.v)
		if cfg.QoS == 0 && c.pending.Add(1)%cfg.PingEvery == 0 {
			buf = (&codec.Pingreq{}).Append(buf, c.v)
		}
		c.seq++
	}
	switch {
	case c.direct:
		c.wbuf = buf[:0]
		if !c.writeDirect(buf) {
			return false
		}
	case c.stream != nil:
		c.wbuf = buf[:0]
		if c.stream.write(buf) != nil {
			return false
		}
	default:
		if err := c.conn.AsyncWrite(buf, nil); err != nil {
			return false
		}
	}
	c.run.sent.Add(int64(n))
	if c.run.measuring.Load() {
		c.run.windowSent.Add(int64(n))
	}
	c.run.pubSeq[c.idx].Store(c.seq)
	return true
}

// pace sends a fixed rate for every publisher from one goroutine: each
// tick, the messages due since the last one are dealt round-robin to the
// publishers that have window credit, and each publisher's share goes out
// in one write. A publisher without credit is passed over; what it misses
// stays due and goes out when credit returns, as with a publisher that
// waits. One wake-up per tick instead of one per message leaves the
// generator's CPU mostly in the writes themselves (direct.go); messages
// leave in bursts of rate x tick spread over the publishers.
func (r *runner) pace(pubs []*client, stop <-chan struct{}, count int64) {
	t := time.NewTicker(r.cfg.Tick)
	defer t.Stop()
	for _, c := range pubs {
		c.openDirect()
	}
	defer func() {
		for _, c := range pubs {
			c.closeDirect()
		}
	}()
	start := time.Now()
	var sent int64
	share := make([]int, len(pubs))
	next := 0
	for {
		var now time.Time
		select {
		case <-stop:
			return
		case now = <-t.C:
		}
		due := int64(now.Sub(start)) * int64(r.cfg.Rate) / int64(time.Second)
		for misses := 0; sent < due && misses < len(pubs); next = (next + 1) % len(pubs) {
			c := pubs[next]
			if count > 0 && int64(c.seq)+int64(share[next]) >= count {
				misses++
				continue
			}
			select {
			case <-c.credit:
				share[next]++
				sent++
				misses = 0
			default:
				misses++
			}
		}
		live := 0
		for i, c := range pubs {
			if n := share[i]; n > 0 {
				share[i] = 0
				if !c.send(n) {
					continue
				}
			} else if len(c.backlog) > 0 && !c.writeDirect(nil) {
				continue
			}
			if (count == 0 || int64(c.seq) < count) && !c.closed.Load() {
				live++
			}
		}
		if live == 0 {
			return
		}
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

// rateLimiter spaces publishes to a total rate shared by all publishers.
type rateLimiter struct {
	every time.Duration // 0: unlimited
	next  atomic.Int64
}

func (l *rateLimiter) wait(stop <-chan struct{}) bool {
	if l.every == 0 {
		return true
	}
	at := time.Duration(l.next.Add(int64(l.every)))
	d := time.Until(time.Unix(0, int64(at)))
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}

// fillJSON writes a telemetry reading into b, padded with spaces: the kind
// of payload devices send, so that compression figures mean something.
func fillJSON(b []byte, pub uint32, seq uint64, now int64) {
	r := seq*2654435761 + uint64(pub)*40503
	j := fmt.Appendf(b[:0], `{"device":"sensor-%05d","ts":%d,"temp":%d.%d,"hum":%d.%d,"bat":3.%02d,"rssi":-%d,"status":"ok","fw":"2.4.1","site":"plant-7/line-%d","seq":%d}`,
		pub, now/1e6, 18+r%9, r/7%10, 40+r/11%20, r/13%10, 60+r/17%40, 50+r/19%40, pub%8, seq)
	if len(j) > len(b) {
		j = j[:len(b)]
	}
	copy(b, j)
	for i := len(j); i < len(b); i++ {
		b[i] = ' '
	}
}
