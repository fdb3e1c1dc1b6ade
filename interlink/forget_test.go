package interlink

import (
	"testing"
	"time"
)

// A peer away longer than ForgetAfter loses its routes, not what was
// queued for it: when it comes back under its name, within KeepQueued,
// it receives every reliable record.
func TestForgottenPeerGetsItsQueueBack(t *testing.T) {
	ca, cb := testConfig("a"), testConfig("b")
	ca.Lanes, cb.Lanes = 1, 1
	ca.ForgetAfter, ca.KeepQueued = time.Second, time.Hour
	ra, rb := newRecorder(), newRecorder()
	ra.forgot = make(chan string, 1)
	a := startNode(t, ca, ra)
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	waitUp(t, ra, "b")
	waitUp(t, rb, "a")
	b.Stop()

	const n = 100
	for i := range n {
		if err := a.Send("b", 0, 3, body(i), true); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case p := <-ra.forgot:
		if p != "b" {
			t.Fatalf("forgot %q, want b", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("b's routes were never forgotten")
	}
	if q := a.Members()[1].Queued; q != n {
		t.Fatalf("%d records kept for b after its routes were forgotten, want %d", q, n)
	}

	rb2 := newRecorder()
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	cb.Metrics = nil
	startNode(t, cb, rb2)
	rb2.waitCount(t, "a", n)
	waitFor(t, func() bool { return a.Members()[1].Queued == 0 })
}
