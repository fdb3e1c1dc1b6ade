package torture

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// publisher publishes numbered messages and keeps the ledger of those
// the broker acknowledged. It reconnects when its connection ends (the
// broker was killed), so that traffic goes on across a restart.
type publisher struct {
	addr    string
	id      string
	qos     byte
	retain  bool
	payload int
	topic   func(seq uint64) []byte
	// onAck, when set, sees each acknowledged sequence number (on the
	// reader goroutine) after it entered acked.
	onAck func(seq uint64)

	acked   ledger
	refused atomic.Int64 // PUBACKs with an error code
	next    atomic.Uint64

	mu  sync.Mutex
	c   *client
	buf []byte
}

// conn returns the current connection, making one when there is none or
// it ended.
func (p *publisher) conn(ctx context.Context) (*client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c != nil && !p.c.closed() {
		return p.c, nil
	}
	if p.c != nil {
		p.c.close()
		p.c = nil
	}
	c, _, err := connect(ctx, p.addr, clientConfig{id: p.id, cleanStart: true, inflight: 100, timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	c.serve()
	p.c = c
	return c, nil
}

// send publishes the next message, waiting for window credit at QoS 1.
func (p *publisher) send(ctx context.Context) error {
	c, err := p.conn(ctx)
	if err != nil {
		return err
	}
	seq := p.next.Add(1) - 1
	if p.buf == nil {
		p.buf = make([]byte, max(p.payload, stampSize))
	}
	stamp(p.buf, seq, time.Now())
	msg := &codec.Publish{QoS: p.qos, Retain: p.retain, Topic: p.topic(seq), Payload: p.buf}
	var onAck func(codec.ReasonCode)
	if p.qos > 0 {
		onAck = func(code codec.ReasonCode) {
			if code.IsError() {
				p.refused.Add(1)
				return
			}
			p.acked.add(seq)
			if p.onAck != nil {
				p.onAck(seq)
			}
		}
	}
	return c.publish(msg, onAck)
}

// run publishes rate messages per second until stop is closed,
// reconnecting (every 50 ms at most) while the broker is away.
func (p *publisher) run(ctx context.Context, rate int, stop <-chan struct{}) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var sent int64
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case now := <-tick.C:
			due := int64(now.Sub(start)) * int64(rate) / int64(time.Second)
			for sent < due {
				if err := p.send(ctx); err != nil {
					// Away: what was due while it was is not owed.
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					sent = int64(time.Since(start)) * int64(rate) / int64(time.Second)
					break
				}
				sent++
			}
		}
	}
}

// settle waits until every message sent on the current connection has
// its acknowledgement, or the connection ended, or timeout passed.
func (p *publisher) settle(ctx context.Context, timeout time.Duration) error {
	p.mu.Lock()
	c := p.c
	p.mu.Unlock()
	if c == nil {
		return nil
	}
	return poll(ctx, timeout, func() bool { return c.closed() || len(c.credit) == cap(c.credit) })
}

func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c != nil {
		p.c.close()
		p.c = nil
	}
}

// errTimeout is a poll whose condition never held.
var errTimeout = errors.New("timed out")

// poll checks cond every 10 ms until it holds or timeout passes: for
// conditions no signal announces, such as counters that the broker or
// many goroutines move.
func poll(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v", errTimeout, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// connectAll connects n clients, at most window at a time, making client
// i with cfg(i) and readying it with setup(i, c) (serve, subscribe).
func connectAll(ctx context.Context, addr string, n, window int, cfg func(i int) clientConfig,
	setup func(i int, c *client) error) ([]*client, error) {
	cs := make([]*client, n)
	slots := make(chan struct{}, window)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var first error
	for i := range n {
		slots <- struct{}{}
		errMu.Lock()
		failed := first != nil
		errMu.Unlock()
		if failed {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			c, _, err := connect(ctx, addr, cfg(i))
			if err == nil {
				cs[i] = c
				err = setup(i, c)
			}
			if err != nil {
				errMu.Lock()
				if first == nil {
					first = fmt.Errorf("client %d of %d: %w", i, n, err)
				}
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first != nil {
		closeAll(cs)
		return nil, first
	}
	return cs, nil
}

// closeAll closes every client of cs that is not nil, several at a time.
func closeAll(cs []*client) {
	var wg sync.WaitGroup
	for part := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := part; i < len(cs); i += 8 {
				if cs[i] != nil {
					cs[i].close()
				}
			}
		}()
	}
	wg.Wait()
}
