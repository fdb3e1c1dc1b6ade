package persist

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A write that does not finish within a second makes the store behind,
// with only a few bytes waiting; it catches up when the disk answers.
func TestBehindWhileAWriteStalls(t *testing.T) {
	fs := &faultFS{FS: vfs.NewMem()}
	s := openT(t, Options{Dir: "/d", FS: fs})
	defer s.Close()
	release := fs.hold()
	var b Batch
	b.PutMeta("k", []byte("v"))
	done := make(chan error, 1)
	s.CommitNoWait(&b, func(err error) { done <- err })
	deadline := time.Now().Add(10 * time.Second)
	for !s.Behind() {
		if time.Now().After(deadline) {
			release()
			t.Fatal("a write stalled for seconds and the store is not behind")
		}
		time.Sleep(50 * time.Millisecond)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The callback runs inside the write; the committer marks it over
	// right after.
	for s.Behind() || s.PendingBytes() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("behind %v, %d bytes pending after the disk answered", s.Behind(), s.PendingBytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
