package persist

import (
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// syncGateFS holds every fsync while it is stalled: a disk that stops
// answering.
type syncGateFS struct {
	vfs.FS
	mu   sync.Mutex
	gate chan struct{} // nil: not stalled
}

func (f *syncGateFS) wait() {
	f.mu.Lock()
	g := f.gate
	f.mu.Unlock()
	if g != nil {
		<-g
	}
}

func (f *syncGateFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, c)
	if err != nil {
		return nil, err
	}
	return &syncGateFile{File: file, fs: f}, nil
}

func (f *syncGateFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.ReuseForWrite(oldname, newname, c)
	if err != nil {
		return nil, err
	}
	return &syncGateFile{File: file, fs: f}, nil
}

type syncGateFile struct {
	vfs.File
	fs *syncGateFS
}

func (f *syncGateFile) Sync() error     { f.fs.wait(); return f.File.Sync() }
func (f *syncGateFile) SyncData() error { f.fs.wait(); return f.File.SyncData() }

// A write that does not finish within a second makes the store behind,
// with only a few bytes waiting; it catches up when the disk answers.
func TestBehindWhileAWriteStalls(t *testing.T) {
	fs := &syncGateFS{FS: vfs.NewMem()}
	s := openT(t, Options{Dir: "/d", FS: fs})
	defer s.Close()
	stall := make(chan struct{})
	fs.mu.Lock()
	fs.gate = stall
	fs.mu.Unlock()
	var b Batch
	b.PutMeta("k", []byte("v"))
	done := make(chan error, 1)
	s.CommitNoWait(&b, func(err error) { done <- err })
	deadline := time.Now().Add(10 * time.Second)
	for !s.Behind() {
		if time.Now().After(deadline) {
			close(stall)
			t.Fatal("a write stalled for seconds and the store is not behind")
		}
		time.Sleep(50 * time.Millisecond)
	}
	fs.mu.Lock()
	fs.gate = nil
	fs.mu.Unlock()
	close(stall)
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
