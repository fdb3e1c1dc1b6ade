package persist

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// lazyCommit commits b with CommitLazy and waits for its callback.
func lazyCommit(t *testing.T, s *Store, b *Batch) {
	t.Helper()
	done := make(chan error, 1)
	s.CommitLazy(b, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("lazy commit: %v", err)
	}
}

// crashReopen opens what a crash of the machine would leave of fs now:
// every write not fsynced is lost.
func crashReopen(t *testing.T, fs *vfs.MemFS) *loaded {
	t.Helper()
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 1))})
	r := openT(t, Options{Dir: "/data", FS: crashed})
	defer r.Close()
	return loadAll(t, r, time.Now())
}

// A lazy write is durable once any later commit is, whether that commit
// has writes of its own or none (a barrier for acknowledgements), and
// within LazySync when nothing follows it.
func TestLazyCommitIsMadeDurable(t *testing.T) {
	for _, after := range []string{"synced write", "empty commit", "nothing"} {
		t.Run(after, func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			s := openT(t, Options{Dir: "/data", FS: fs})
			defer s.Close()
			var b Batch
			for i := range 5 {
				b.PutSession(&Session{ClientID: fmt.Sprint("c", i), Expiry: time.Hour})
				lazyCommit(t, s, &b)
				b.Reset()
			}
			switch after {
			case "synced write":
				b.PutMeta("k", []byte("v"))
				commitWait(t, s, &b)
			case "empty commit":
				commitWait(t, s, &b)
			case "nothing":
				syncs := s.Stats().Syncs
				deadline := time.Now().Add(10 * time.Second)
				for s.Stats().Syncs == syncs {
					if time.Now().After(deadline) {
						t.Fatalf("lazy writes not fsynced %v after them", 10*time.Second)
					}
					time.Sleep(LazySync / 2)
				}
			}
			if l := crashReopen(t, fs); len(l.sessions) != 5 {
				t.Fatalf("%d of 5 lazily written sessions after the crash", len(l.sessions))
			}
		})
	}
}

// A group of lazy writes alone is written without an fsync: the commits
// that follow at once find it unsynced, and one fsync serves many.
func TestLazyCommitsShareFsyncs(t *testing.T) {
	s := openT(t, Options{})
	defer s.Close()
	var b Batch
	const n = 200
	start := s.Stats().Syncs
	for i := range n {
		b.PutSession(&Session{ClientID: fmt.Sprint("c", i), Expiry: time.Hour})
		lazyCommit(t, s, &b)
		b.Reset()
	}
	// At most one fsync per LazySync while they ran, plus the last one.
	if got := s.Stats().Syncs - start; got >= n {
		t.Fatalf("%d fsyncs for %d lazy commits", got, n)
	}
}
