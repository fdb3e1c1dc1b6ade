package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Write coalescing. Every write to a connection costs a system call and,
// on the receiving host, a wake-up; a subscriber that gets a message from
// each of a hundred publishers would otherwise be written a hundred times.
// A connection written less than Config.WriteDelay ago keeps what comes for
// it until the delay has passed since that write, then gets it all in one
// writev, but only while its loop is busy: while more than
// Config.WriteDelayBusy of its writes within the last delay went to
// receivers written less than the delay before. Light traffic sees no
// added latency, busy traffic at most the delay.
//
// A connection that may be waiting for an answer is written at once: one
// that sent, within the delay, anything but an acknowledgement of our
// deliveries (a PUBLISH awaiting its PUBACK, a PINGREQ, a SUBSCRIBE, the
// request of a request/response exchange), or an acknowledgement that
// freed its inflight window for queued messages. So synchronous
// publishers, request/response clients and consumers with a small receive
// maximum run at full speed; streams of deliveries to a receiver that only
// reads and acknowledges them are coalesced.
//
// Bytes for a client on another loop travel in that loop's inbox. The
// sender wakes the loop only when a receiver in the batch may be written at
// once; otherwise the loop's write timer, which is armed while it holds
// delayed clients, takes the inbox when it fires.

var epoch = time.Now()

// monotime is a monotonic clock in nanoseconds.
func monotime() int64 { return int64(time.Since(epoch)) }

// inbox holds bytes other goroutines leave for a loop's clients.
type inbox struct {
	mu sync.Mutex
	x  *xfer
	// held mirrors x != nil, for a look without the lock (takeFirst).
	held   atomic.Bool
	posted bool // a drain is queued on the loop
	timed  bool // the write timer is armed and will take the inbox
}

// coalesce is a loop's write-delay state; it belongs to the loop.
type coalesce struct {
	delay int64 // Config.WriteDelay
	// The loop's business (busy): how many writes it may be asked for
	// within one delay and still write each at once (0: none), those
	// asked for since busyFrom, and whether it holds bytes back now.
	busyAt   int32
	pushes   int32
	busyFrom int64
	hot      bool
	later    []waiter // clients whose bytes wait for the delay
	spare    []waiter
	// laterAt is when the timer fires; 0 when it is not armed.
	laterAt int64
	timer   *time.Timer
	in      inbox
	drain   runFunc
}

// waiter is an entry of loop.later; it stands while c.waitSeq is seq.
type waiter struct {
	c   *client
	seq uint16
}

func (l *loop) initCoalesce(delay time.Duration, busyAt int) {
	l.delay, l.busyAt = int64(delay), int32(busyAt)
	l.timer = time.AfterFunc(time.Hour, func() { _ = l.el.Execute(context.Background(), runFunc(l.flushLater)) })
	l.timer.Stop()
	l.drain = func() {
		l.in.mu.Lock()
		x := l.in.x
		l.in.x, l.in.posted = nil, false
		l.in.held.Store(false)
		l.in.mu.Unlock()
		if x != nil {
			x.run(monotime(), nil)
		}
	}
}

// ready marks c as waiting for an answer: its bytes go at once until the
// write delay has passed since the next write. It runs on c's loop, for
// every packet c sends but acknowledgements, so it only sets flags; the
// end of the read (answerNow) writes a client that was being held.
func (c *client) ready() {
	if c.loop.delay == 0 {
		return
	}
	c.asked = true
	if c.calmUntil.Load() != 0 {
		c.calmUntil.Store(0)
	}
}

// answerNow writes c at the end of a read in which it asked for something
// while its bytes were held: the answer joined the held bytes.
func (c *client) answerNow() {
	if c.asked && c.waiting {
		c.push(monotime())
	}
}

// push writes c's pending bytes at once or, if c is a busy receiver, when
// the write delay has passed since its last write. It runs on c's loop with
// c.dirty set; c stays dirty while it waits, so further bytes for it join
// pend without another push.
func (c *client) push(now int64) {
	l := c.loop
	if c.asked {
		c.asked, c.askedAt = false, now
	}
	if l.delay == 0 || c.closed || c.held > 0 || now-c.wroteAt >= l.delay || now-c.askedAt < l.delay || !l.busy(now) {
		c.write(now)
		return
	}
	c.waiting = true
	c.waitSeq++
	l.later = append(l.later, waiter{c, c.waitSeq})
	if l.laterAt == 0 {
		l.arm(c.wroteAt+l.delay, now)
	}
}

// busy counts a write the delay could merge with the next (to a receiver
// written less than the delay ago) and reports whether the loop holds
// bytes back: it had more than busyAt such writes in the delay before, or
// has in this one. It runs on the loop.
func (l *loop) busy(now int64) bool {
	if since := now - l.busyFrom; since >= l.delay {
		l.hot = since < 2*l.delay && l.pushes > l.busyAt
		l.busyFrom, l.pushes = now, 0
	}
	l.pushes++
	if l.pushes > l.busyAt {
		l.hot = true
	}
	return l.hot
}

// write flushes c and records when, for the write delay.
func (c *client) write(now int64) {
	c.flush()
	c.wroteAt = now
	c.waiting = false
	if d := c.loop.delay; d != 0 && c.loop.hot && !c.asked && now-c.askedAt >= d {
		c.calmUntil.Store(now + d)
	}
}

// arm sets the write timer to fire at due.
func (l *loop) arm(due, now int64) {
	l.laterAt = due
	l.timer.Reset(time.Duration(due - now))
	l.in.mu.Lock()
	l.in.timed = true
	l.in.mu.Unlock()
}

// flushLater runs when the write timer fires: it takes the inbox, writes
// the clients whose delay has passed and sets the timer for the rest.
func (l *loop) flushLater() {
	now := monotime()
	l.laterAt = 0
	l.takeInbox(now, nil)
	list := l.later
	l.later = l.spare[:0]
	for _, w := range list {
		if w.c.waiting && w.c.waitSeq == w.seq {
			w.c.push(now) // written, or held again until its own time
		}
	}
	clear(list)
	l.spare = list[:0]
	// Disarmed: take what arrived meanwhile, or tell senders to wake us.
	for l.laterAt == 0 {
		l.in.mu.Lock()
		x := l.in.x
		l.in.x = nil
		l.in.held.Store(false)
		if x == nil {
			l.in.timed = false
		}
		l.in.mu.Unlock()
		if x == nil {
			return
		}
		x.run(now, nil)
	}
}

// takeFirst runs what waits in the inbox before the loop writes bytes of
// its own to a client: the inbox's came first (a delivery another
// goroutine made while the client's window had room), and a message the
// loop sends now (the queue's next, pumped by an acknowledgement) must
// not pass them. The clients it gives bytes to are written with ob, the
// unit of work under way (xfer.run). It runs on the loop.
func (l *loop) takeFirst(ob *outbox) {
	if l.in.held.Load() {
		l.takeInbox(monotime(), ob)
	}
}

// takeInbox runs the bytes waiting in the inbox, their clients written
// now or with ob (xfer.run). It runs on the loop.
func (l *loop) takeInbox(now int64, ob *outbox) {
	l.in.mu.Lock()
	x := l.in.x
	l.in.x = nil
	l.in.held.Store(false)
	l.in.mu.Unlock()
	if x != nil {
		x.run(now, ob)
	}
}

// post hands x to loop l. The loop is woken unless every receiver in x is
// a busy one and the loop's write timer will take the inbox anyway.
func (l *loop) post(x *xfer, now int64) {
	wait := l.delay != 0 && x.calm(now)
	l.in.mu.Lock()
	if l.in.x == nil {
		l.in.x, x = x, nil
		l.in.held.Store(true)
	} else {
		l.in.x.merge(x)
	}
	wake := !l.in.posted && !(wait && l.in.timed)
	if wake {
		l.in.posted = true
	}
	l.in.mu.Unlock()
	if x != nil {
		x.release()
	}
	if wake {
		if err := l.el.Execute(context.Background(), l.drain); err != nil {
			// The engine is shutting down; the bytes have nowhere to go.
			l.in.mu.Lock()
			x, l.in.x = l.in.x, nil
			l.in.held.Store(false)
			l.in.mu.Unlock()
			if x != nil {
				x.release()
			}
		}
	}
}

// calm reports whether every receiver in x was written less than the write
// delay ago and may not be waiting for an answer.
func (x *xfer) calm(now int64) bool {
	for _, it := range x.items {
		if it.cl.calmUntil.Load() <= now {
			return false
		}
	}
	return true
}
