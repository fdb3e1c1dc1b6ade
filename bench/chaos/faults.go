package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Fault kinds, as -faults names them.
const (
	FaultKill  = "kill"  // kill -9, down a while, restart on the same data
	FaultPause = "pause" // SIGSTOP longer than the failure timeout, then SIGCONT
	FaultCut   = "cut"   // interlink links cut: one node from all, or one pair
	FaultDelay = "delay" // interlink links delayed
	FaultDisk  = "disk"  // the data volume full: the store's writes fail
)

// AllFaults is every fault kind, in the order they are listed.
var AllFaults = []string{FaultKill, FaultPause, FaultCut, FaultDelay, FaultDisk}

// injector applies faults one at a time, chosen and timed from its own
// random source, so that a seed replays the same schedule (the broker's
// answers may still differ from run to run in their timing).
type injector struct {
	c      *cluster
	rng    *rand.Rand
	kinds  []string
	counts map[string]int
}

// run injects faults until ctx ends, then heals whatever is still broken.
func (in *injector) run(ctx context.Context) {
	for ctx.Err() == nil {
		sleep(ctx, time.Duration(500+in.rng.IntN(2000))*time.Millisecond)
		if ctx.Err() != nil {
			break
		}
		in.c.restartCrashed(ctx)
		kind := in.kinds[in.rng.IntN(len(in.kinds))]
		n := in.c.nodes[in.rng.IntN(len(in.c.nodes))]
		in.counts[kind]++
		switch kind {
		case FaultKill:
			in.kill(ctx, n)
		case FaultPause:
			in.pause(ctx, n)
		case FaultCut:
			in.cut(ctx, n)
		case FaultDelay:
			in.delay(ctx, n)
		case FaultDisk:
			in.disk(ctx, n)
		}
	}
}

// between returns a duration in [lo, hi).
func (in *injector) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(in.rng.Int64N(int64(hi-lo)))
}

// hold waits d, or less when ctx ends: a fault is always healed.
func hold(ctx context.Context, d time.Duration) { sleep(ctx, d) }

func (in *injector) fault(n *node, note string) {
	in.c.h.Add(Op{Kind: OpFault, Node: n.name, Note: note})
}

func (in *injector) heal(n *node, note string) {
	in.c.h.Add(Op{Kind: OpHeal, Node: n.name, Note: note})
}

func (in *injector) kill(ctx context.Context, n *node) {
	down := in.between(500*time.Millisecond, 3*time.Second)
	in.fault(n, fmt.Sprintf("kill -9, down %v", down.Round(time.Millisecond)))
	n.kill()
	hold(ctx, down)
	// Restart even when the run is over: the checker needs every node.
	if err := in.c.startNode(context.WithoutCancel(ctx), n); err != nil {
		in.heal(n, "restart failed: "+err.Error())
		return
	}
	in.heal(n, "restarted")
}

func (in *injector) pause(ctx context.Context, n *node) {
	d := in.between(in.c.failureTimeout*3/2, in.c.failureTimeout*4)
	if !n.running() {
		return
	}
	in.fault(n, fmt.Sprintf("SIGSTOP for %v", d.Round(time.Millisecond)))
	n.pause()
	hold(ctx, d)
	n.resume()
	in.heal(n, "SIGCONT")
}

// cut isolates n from every peer, or cuts the links between n and one
// peer, both directions.
func (in *injector) cut(ctx context.Context, n *node) {
	d := in.between(time.Second, 5*time.Second)
	peers := in.c.others(n)
	if in.rng.IntN(2) == 0 {
		i := in.rng.IntN(len(peers))
		peers = peers[i : i+1]
	}
	names := nodeNames(peers)
	in.fault(n, fmt.Sprintf("cut links %s <-> %s for %v", n.name, strings.Join(names, ","), d.Round(time.Millisecond)))
	for _, p := range peers {
		n.proxy.setCut(p.name, true)
		p.proxy.setCut(n.name, true)
	}
	hold(ctx, d)
	for _, p := range peers {
		n.proxy.setCut(p.name, false)
		p.proxy.setCut(n.name, false)
	}
	in.heal(n, "links restored")
}

// delay slows every link to and from n.
func (in *injector) delay(ctx context.Context, n *node) {
	d := in.between(2*time.Second, 6*time.Second)
	lat := in.between(20*time.Millisecond, 300*time.Millisecond)
	in.fault(n, fmt.Sprintf("links to and from %s delayed %v for %v", n.name, lat.Round(time.Millisecond), d.Round(time.Millisecond)))
	n.proxy.setDelay("*", lat)
	for _, p := range in.c.others(n) {
		p.proxy.setDelay(n.name, lat)
	}
	hold(ctx, d)
	n.proxy.setDelay("*", 0)
	for _, p := range in.c.others(n) {
		p.proxy.setDelay(n.name, 0)
	}
	in.heal(n, "delay removed")
}

// disk fills n's data volume until writes fail, then frees it.
func (in *injector) disk(ctx context.Context, n *node) {
	if !n.mounted {
		return
	}
	d := in.between(time.Second, 4*time.Second)
	filled, err := n.fillDisk()
	if err != nil {
		in.fault(n, "cannot fill the disk: "+err.Error())
		_ = n.freeDisk()
		return
	}
	in.fault(n, fmt.Sprintf("disk full (%d MiB of ballast) for %v", filled>>20, d.Round(time.Millisecond)))
	hold(ctx, d)
	if err := n.freeDisk(); err != nil {
		in.heal(n, "cannot free the disk: "+err.Error())
		return
	}
	in.heal(n, "disk freed")
}

func nodeNames(ns []*node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.name)
	}
	return out
}
