package interlink

import (
	"sync"
	"sync/atomic"
	"time"
)

// pacer tells the broker when this node produces faster than a linked
// peer takes: a lane is behind while more than Node.mark bytes wait to be
// written on a live connection that keeps writing. The broker then holds
// publishers' input back (Node.Behind) instead of reading it only for the
// lane to drop it. A lane whose writer has taken nothing for
// Config.Backpressure (the peer stopped reading) stops counting until it
// writes again: its records are dropped at the lane's limit as before,
// and publishers are not held back for a peer that is not there.
type pacer struct {
	behind atomic.Int32 // lanes behind; read without the lock
	mu     sync.Mutex
	caught chan struct{} // closed while behind is 0
	watch  chan struct{} // wakes the watcher when a lane falls behind
}

func newPacer() *pacer {
	p := &pacer{caught: make(chan struct{}), watch: make(chan struct{}, 1)}
	close(p.caught)
	return p
}

func (p *pacer) up() {
	p.mu.Lock()
	if p.behind.Add(1) == 1 {
		p.caught = make(chan struct{})
		select {
		case p.watch <- struct{}{}:
		default:
		}
	}
	p.mu.Unlock()
}

func (p *pacer) down() {
	p.mu.Lock()
	if p.behind.Add(-1) == 0 {
		close(p.caught)
	}
	p.mu.Unlock()
}

// paceMark is the backlog from which a lane is behind: two batches waiting
// while one is on its way, and at most half of what the lane may hold.
// With Backpressure 0 no lane ever is.
func paceMark(cfg *Config) int {
	if cfg.Backpressure <= 0 {
		return int(^uint(0) >> 1)
	}
	return min(2*cfg.BatchBytes, unreliableLimit(cfg)/2)
}

// paceLocked updates the lane's part in the node's backlog after its
// unsent bytes, its connection or its progress changed.
// REQUIRES: l.mu held.
func (l *lane) paceLocked() {
	behind := l.mu.connected && l.mu.unsent > l.p.n.mark && !l.mu.stuck
	if behind == l.mu.behind {
		return
	}
	l.mu.behind = behind
	if behind {
		l.mu.tookAt = time.Now()
		l.p.n.pace.up()
	} else {
		l.p.n.pace.down()
	}
}

// tookLocked records that the writer took records to write.
// REQUIRES: l.mu held.
func (l *lane) tookLocked() {
	l.mu.tookAt = time.Now()
	l.mu.stuck = false
	l.paceLocked()
}

// watchPace runs while the node is up: whenever a lane is behind, it
// checks every quarter of Config.Backpressure for lanes that stopped
// writing, and stops counting them.
func (n *Node) watchPace() {
	defer n.wg.Done()
	if n.cfg.Backpressure <= 0 {
		return
	}
	t := time.NewTicker(max(n.cfg.Backpressure/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-n.pace.watch:
		case <-n.done:
			return
		}
		for n.pace.behind.Load() > 0 {
			select {
			case <-t.C:
			case <-n.done:
				return
			}
			now := time.Now()
			n.mu.Lock()
			peers := make([]*peer, 0, len(n.peers))
			for _, p := range n.peers {
				peers = append(peers, p)
			}
			n.mu.Unlock()
			for _, p := range peers {
				for _, l := range p.lanes {
					l.mu.Lock()
					if l.mu.behind && now.Sub(l.mu.tookAt) > n.cfg.Backpressure {
						l.mu.stuck = true
						l.paceLocked()
						n.log.Debug("peer not reading; not holding publishers back for it", "peer", p.name, "lane", l.idx)
					}
					l.mu.Unlock()
				}
			}
		}
	}
}

// Behind reports whether a lane to a linked peer is behind: more is
// waiting for it than its writer keeps up with. A broker holds
// publishers' input back while it is (without blocking), so that at
// overload the peer's pace sets the publishers' instead of the lane
// dropping QoS 0 messages it could not send. Cheap enough to call for
// every read.
func (n *Node) Behind() bool { return n.pace.behind.Load() > 0 }

// Caught returns a channel closed once no lane is behind. A lane that
// stopped writing stops counting within Config.Backpressure, so the
// channel closes within about that long.
func (n *Node) Caught() <-chan struct{} {
	n.pace.mu.Lock()
	defer n.pace.mu.Unlock()
	return n.pace.caught
}
