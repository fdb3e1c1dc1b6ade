package bench

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// What the socket does not take at once waits in the backlog and goes out,
// in order, by the time the descriptor is closed.
func TestDirectWriteBacklog(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	defer peer.Close()
	c := &client{direct: true, wfd: fds[0], run: &runner{cfg: Config{Drain: 10 * time.Second}}}

	var want []byte
	chunk := make([]byte, 1000)
	for i := 0; len(c.backlog) == 0; i++ {
		if i == 100_000 {
			t.Fatal("the socket never filled")
		}
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		want = append(want, chunk...)
		if !c.writeDirect(chunk) {
			t.Fatal("writeDirect failed")
		}
	}
	// More while the backlog is not empty: it must queue behind.
	for i := range 10 {
		for j := range chunk {
			chunk[j] = byte(i * j)
		}
		want = append(want, chunk...)
		if !c.writeDirect(chunk) {
			t.Fatal("writeDirect failed")
		}
	}

	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	c.closeDirect()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, want %d in order", len(b), len(want))
	}
}
