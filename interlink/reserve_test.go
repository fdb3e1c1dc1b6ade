package interlink

import "testing"

// Room taken by Reserve counts against the queue bound until it is used or
// given back: a reserved send is never refused, an unreserved one is
// refused while reservations fill the queue, and taking and giving back
// room costs no allocation.
func TestReserveHoldsRoom(t *testing.T) {
	c := testConfig("a")
	c.QueueLimit = 2
	c.Lanes = 1
	a := startNode(t, c, newRecorder())
	a.memberUp("ghost", "127.0.0.1:1") // nothing listens there

	if n := testing.AllocsPerRun(100, func() {
		r, err := a.Reserve("ghost", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		a.Release(r)
	}); n != 0 {
		t.Fatalf("Reserve and Release allocate %v times, want 0", n)
	}

	r1, err := a.Reserve("ghost", 0, 100)
	if err != nil {
		t.Fatalf("first reservation: %v", err)
	}
	r2, err := a.Reserve("ghost", 0, 100)
	if err != nil {
		t.Fatalf("second reservation: %v", err)
	}
	if _, err := a.Reserve("ghost", 0, 100); err != ErrQueueFull {
		t.Fatalf("reservation past the bound: %v, want ErrQueueFull", err)
	}
	if err := a.Send("ghost", 0, 1, body(0), true); err != ErrQueueFull {
		t.Fatalf("unreserved send with the queue reserved: %v, want ErrQueueFull", err)
	}
	if _, err := a.SendReserved(r1, 1, body(1), 7); err != nil {
		t.Fatalf("reserved send: %v", err)
	}
	a.Release(r2)
	if err := a.Send("ghost", 0, 1, body(2), true); err != nil {
		t.Fatalf("send into released room: %v", err)
	}
	if q := a.Members()[1].Queued; q != 2 {
		t.Fatalf("%d records queued, want 2", q)
	}

	if _, err := a.Reserve("ghost", 0, c.MaxFrame); err != ErrTooLarge {
		t.Fatalf("reservation for a record over half a frame: %v, want ErrTooLarge", err)
	}
	if _, err := a.Reserve("nobody", 0, 1); err != ErrUnknownPeer {
		t.Fatalf("reservation for an unknown peer: %v, want ErrUnknownPeer", err)
	}
}
