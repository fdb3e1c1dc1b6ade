package interlink

import (
	"testing"
	"time"
)

// stalledPair links a to b, whose handler reads nothing until the
// returned function is called (also at cleanup).
func stalledPair(t *testing.T, backpressure time.Duration) (a *Node, resume func()) {
	t.Helper()
	ca, cb := testConfig("a"), testConfig("b")
	ca.Lanes, cb.Lanes = 1, 1
	ca.BatchBytes = 4096 // behind past 8 KiB waiting, full at 32 KiB
	ca.BatchDelay = 0
	ca.Backpressure = backpressure
	a, _, _, rb := pair(t, ca, cb)
	block := make(chan struct{})
	rb.block = block
	var resumed bool
	resume = func() {
		if !resumed {
			resumed = true
			close(block)
		}
	}
	t.Cleanup(resume) // before the nodes stop
	return a, resume
}

// fillUntil sends unreliable records to b until cond holds or the lane
// refuses one; it reports whether cond held.
func fillUntil(t *testing.T, a *Node, cond func() bool) bool {
	t.Helper()
	for i := 0; i < 1_000_000; i++ {
		if cond() {
			return true
		}
		if err := a.Send("b", 0, 1, body(i), false); err != nil {
			return cond()
		}
	}
	t.Fatal("a million records and the lane neither fell behind nor filled")
	return false
}

// waitCaught waits for Caught to close.
func waitCaught(t *testing.T, a *Node) {
	t.Helper()
	select {
	case <-a.Caught():
	case <-time.After(10 * time.Second):
		t.Fatal("a lane still behind after 10s")
	}
}

// A lane whose peer stops reading falls behind and stays behind; Caught
// closes once the peer reads again and the backlog is written.
func TestBehindUntilPeerCatchesUp(t *testing.T) {
	a, resume := stalledPair(t, time.Minute)
	waitCaught(t, a) // nothing sent yet
	// Fill the lane until it stays behind: until the socket buffers
	// between the nodes are full, the writer still drains it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("the lane never stayed behind with the peer reading nothing")
		}
		fillUntil(t, a, func() bool { return false }) // until the lane is full
		stayed := false
		select {
		case <-a.Caught():
		case <-time.After(200 * time.Millisecond):
			stayed = true
		}
		if stayed {
			break
		}
	}
	resume()
	waitCaught(t, a)
	if a.Behind() {
		t.Fatal("Behind after Caught closed, with nothing sent since")
	}
}

// A lane that writes nothing for the backpressure time stops counting
// while its buffer stays full.
func TestStuckLaneStopsCounting(t *testing.T) {
	a, _ := stalledPair(t, 50*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		fillUntil(t, a, func() bool { return false }) // until the lane is full
		waitCaught(t, a)                              // written, or stuck
		// Not behind, and then still full (only this test adds to the
		// lane, and the writer only takes from it): it was full while
		// not counting, which only a stuck lane is.
		if !a.Behind() && a.Send("b", 0, 1, body(0), false) == ErrQueueFull {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a lane that writes nothing still counts as behind after 10s")
		}
	}
	if a.statsPeer("b").droppedFull.Get() == 0 {
		t.Fatal("a full lane dropped nothing")
	}
}

// With no backpressure a lane never counts as behind: it drops.
func TestNoBackpressure(t *testing.T) {
	a, _ := stalledPair(t, 0)
	if fillUntil(t, a, a.Behind) {
		t.Fatal("behind with backpressure off")
	}
}
