package persist

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// commitErr commits b and returns its callback's error.
func commitErr(s *Store, b *Batch) error {
	done := make(chan error, 1)
	s.Commit(b, func(err error) { done <- err })
	return <-done
}

// onFullDisks runs test twice, on a store directory ("/d" in o) whose disk
// full(true) fills: once by its free space (under the 64 MiB floor), once
// by failing writes with ENOSPC; full(false) gives the room back.
func onFullDisks(t *testing.T, test func(t *testing.T, fs vfs.FS, o Options, full func(bool))) {
	for _, how := range []string{"free space", "ENOSPC"} {
		t.Run(how, func(t *testing.T) {
			disk := &diskFS{FS: vfs.NewMem()}
			disk.free.Store(1 << 30)
			fs := &faultFS{FS: disk}
			full := func(on bool) {
				switch {
				case how == "ENOSPC" && on:
					fs.failWith(syscall.ENOSPC)
				case how == "ENOSPC":
					fs.failWith(nil)
				case on:
					disk.free.Store(1 << 20)
				default:
					disk.free.Store(1 << 30)
				}
			}
			test(t, fs, Options{Dir: "/d", FS: fs}, full)
		})
	}
}

// refusingStore opens the store, writes the meta keys kv (key, value,
// ...), fills the disk and writes until the store refuses.
func refusingStore(t *testing.T, o Options, full func(bool), kv ...string) *Store {
	t.Helper()
	s := openT(t, o)
	var b Batch
	for i := 0; i+1 < len(kv); i += 2 {
		b.PutMeta(kv[i], []byte(kv[i+1]))
	}
	commitWait(t, s, &b)
	full(true)
	untilRefused(t, s)
	return s
}

// untilRefused writes until the store refuses a write (it looks at the
// disk at most every 250ms).
func untilRefused(t *testing.T, s *Store) {
	t.Helper()
	var b Batch
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		b.Reset()
		b.PutMeta("pad", []byte("v"))
		if commitErr(s, &b) != nil {
			return
		}
	}
	t.Fatal("the store took writes on a full disk for 10s")
}

// healedReopen waits until s takes writes again, writes key, closes s and
// opens the store anew (closed when the test ends), and returns what the
// new one loads.
func healedReopen(t *testing.T, s *Store, o Options, key, val string) *loaded {
	t.Helper()
	waitHealthy(t, s)
	var b Batch
	b.PutMeta(key, []byte(val))
	commitWait(t, s, &b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, o)
	t.Cleanup(func() { _ = s.Close() })
	return loadAll(t, s, time.Now())
}

// waitHealthy waits until the store takes writes again.
func waitHealthy(t *testing.T, s *Store) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); s.Healthy() != nil; {
		if time.Now().After(deadline) {
			t.Fatalf("still refusing writes after the disk healed: %v", s.Healthy())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// When the disk fails Pebble's log writes (ENOSPC), the store refuses
// every group with ErrStoreFailed instead of ending the process, reopens
// the database once the disk takes writes, and has lost nothing that was
// acknowledged, then and after a Close and reopen.
func TestLogWriteFailureIsSurvived(t *testing.T) {
	for _, d := range []Durability{DurabilitySync, DurabilityBatch} {
		t.Run(d.String(), func(t *testing.T) {
			fs := &faultFS{FS: vfs.NewMem()}
			o := Options{Dir: "/d", FS: fs, Durability: d, SyncInterval: time.Millisecond}
			s := openT(t, o)
			var b Batch
			acked := 0
			for ; acked < 50; acked++ {
				b.Reset()
				b.PutMeta(fmt.Sprint("before/", acked), []byte("v"))
				commitWait(t, s, &b)
			}
			if d == DurabilityBatch {
				// Batch acknowledges before the fsync: what a failure may
				// lose is what a crash may. Write on until two more fsyncs
				// ran, the second begun after the last acknowledgement.
				for syncs, i := s.Stats().Syncs, 0; s.Stats().Syncs < syncs+2; i++ {
					b.Reset()
					b.PutMeta(fmt.Sprint("pad/", i), []byte("v"))
					commitWait(t, s, &b)
				}
			}

			fs.failWith(syscall.ENOSPC)
			var failed error
			for i := 0; failed == nil && i < 10000; i++ {
				b.Reset()
				b.PutMeta(fmt.Sprint("during/", i), []byte("v"))
				failed = commitErr(s, &b)
			}
			if !errors.Is(failed, ErrStoreFailed) || !errors.Is(failed, syscall.ENOSPC) {
				t.Fatalf("commit during the failure: %v; want ErrStoreFailed for ENOSPC", failed)
			}
			if h := s.Healthy(); !errors.Is(h, ErrStoreFailed) {
				t.Fatalf("Healthy %v while the disk fails", h)
			}
			// Refused at once from now on, and in order.
			b.Reset()
			b.PutMeta("refused", []byte("v"))
			if err := commitErr(s, &b); !errors.Is(err, ErrStoreFailed) {
				t.Fatalf("commit after the failure: %v", err)
			}

			fs.failWith(nil)
			waitHealthy(t, s)
			b.Reset()
			b.PutMeta("after", []byte("v"))
			commitWait(t, s, &b)
			check := func(s *Store, when string) {
				t.Helper()
				l := loadAll(t, s, time.Now())
				for i := range acked {
					if l.meta[fmt.Sprint("before/", i)] != "v" {
						t.Fatalf("%s: acknowledged before/%d lost", when, i)
					}
				}
				if l.meta["after"] != "v" || l.meta["refused"] != "" {
					t.Fatalf("%s: after %q, refused %q", when, l.meta["after"], l.meta["refused"])
				}
			}
			check(s, "after recovery")
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openT(t, o)
			defer s.Close()
			check(s, "after reopening")
		})
	}
}

// A store on a disk without room opens read-only: Load reads it, writes
// fail with ErrDiskFull, and it takes writes once there is room. Load's
// purge waits for that too. A new store is not created on such a disk.
func TestOpenOnAFullDisk(t *testing.T) {
	onFullDisks(t, func(t *testing.T, fs vfs.FS, o Options, full func(bool)) {
		full(true)
		if _, err := Open(Options{Dir: "/new", FS: fs}); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("created a store on a full disk: %v", err)
		}
		full(false)

		s := openT(t, o)
		id := s.NextID()
		var b Batch
		b.PutMeta("kept", []byte("v"))
		old := sampleMessage(0)
		old.Topic = []byte("old")
		old.ExpiresAt = time.Now().Add(-time.Second).UnixNano()
		b.PutRetained(old)
		commitWait(t, s, &b)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		full(true)
		s = openT(t, o)
		defer func() { _ = s.Close() }()
		if !errors.Is(s.Healthy(), ErrDiskFull) {
			t.Fatalf("Healthy %v on a full disk", s.Healthy())
		}
		l := loadAll(t, s, time.Now())
		if l.meta["kept"] != "v" || l.retained["old"] != nil || l.stats.Purged != 1 {
			t.Fatalf("read-only load: meta %v, retained %v, purged %d", l.meta, l.retained, l.stats.Purged)
		}
		b.Reset()
		b.PutMeta("refused", []byte("v"))
		if err := commitErr(s, &b); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("commit on a full disk: %v", err)
		}

		full(false)
		waitHealthy(t, s)
		if next := s.NextID(); next <= id {
			t.Fatalf("NextID %d after a read-only start, not above %d", next, id)
		}
		b.Reset()
		b.PutMeta("after", []byte("v"))
		commitWait(t, s, &b)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openT(t, o)
		if l := loadAll(t, s, time.Now()); l.meta["kept"] != "v" || l.meta["after"] != "v" || l.meta["refused"] != "" || l.stats.Purged != 0 {
			t.Fatalf("after space returned: meta %v, purged %d (the held purge not written)", l.meta, l.stats.Purged)
		}
		if next := s.NextID(); next>>40 <= id>>40+1 {
			t.Fatalf("run counter %d not past the read-only run's %d", next>>40, id>>40+1)
		}
	})
}

// A manifest write that fails in one of Pebble's flushes stops Pebble with
// its lock held (Logger.Fatalf under DB.mu, on Pebble's goroutine): the
// store is not held up by it, refuses writes and reopens.
func TestManifestWriteFailureIsSurvived(t *testing.T) {
	fs := &faultFS{FS: vfs.NewMem(), only: "MANIFEST"}
	o := Options{Dir: "/d", FS: fs}
	s := openT(t, o)
	var b Batch
	b.PutMeta("before", []byte("v"))
	commitWait(t, s, &b)
	db := s.inst.db

	fs.failWith(syscall.ENOSPC)
	go func() { _ = db.Flush() }() // never returns: Pebble stopped inside
	for deadline := time.Now().Add(10 * time.Second); !errors.Is(s.Healthy(), ErrStoreFailed); {
		if time.Now().After(deadline) {
			t.Fatalf("Healthy %v after the manifest write failed", s.Healthy())
		}
		time.Sleep(time.Millisecond)
	}
	b.Reset()
	b.PutMeta("refused", []byte("v"))
	if err := commitErr(s, &b); !errors.Is(err, ErrStoreFailed) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("commit after the manifest failed: %v", err)
	}

	fs.failWith(nil)
	if l := healedReopen(t, s, o, "after", "v"); l.meta["before"] != "v" || l.meta["after"] != "v" || l.meta["refused"] != "" {
		t.Fatalf("meta after the failure and a reopen: %v", l.meta)
	}
}

// A flush that fails for want of space ends the instance rather than
// leaving Pebble to retry it in a loop; the store reopens once there is
// room, and nothing acknowledged is lost.
func TestFlushOnAFullDiskIsSurvived(t *testing.T) {
	fs := &faultFS{FS: vfs.NewMem(), only: ".sst"}
	s := openT(t, Options{Dir: "/d", FS: fs})
	defer s.Close()
	var b Batch
	b.PutMeta("before", []byte("v"))
	commitWait(t, s, &b)
	db := s.inst.db

	fs.failWith(syscall.ENOSPC)
	go func() { _ = db.Flush() }() // never returns: the flush stops in the fence
	for deadline := time.Now().Add(10 * time.Second); !errors.Is(s.Healthy(), syscall.ENOSPC); {
		if time.Now().After(deadline) {
			t.Fatalf("Healthy %v after a flush failed for want of space", s.Healthy())
		}
		time.Sleep(time.Millisecond)
	}
	fs.failWith(nil)
	waitHealthy(t, s)
	b.Reset()
	b.PutMeta("after", []byte("v"))
	commitWait(t, s, &b)
	if l := loadAll(t, s, time.Now()); l.meta["before"] != "v" || l.meta["after"] != "v" {
		t.Fatalf("meta after the failed flush: %v", l.meta)
	}
}

// A deletion refused while the disk is full or the store failed is what
// the broker believes done (a delivery acknowledged, a session ended): it
// is written ahead of the first group the store takes afterwards, so a
// restart does not bring the record back; a key written again after the
// disk healed keeps its new value.
func TestRefusedDeletionsAreWrittenLater(t *testing.T) {
	onFullDisks(t, func(t *testing.T, _ vfs.FS, o Options, full func(bool)) {
		s := refusingStore(t, o, full, "gone", "v", "again", "v1")
		var b Batch
		for _, k := range []string{"gone", "again"} {
			b.Reset()
			b.DeleteMeta(k)
			if err := commitErr(s, &b); err == nil {
				t.Fatalf("deleting %s: taken on a full disk", k)
			}
		}

		full(false)
		if l := healedReopen(t, s, o, "again", "v2"); l.meta["gone"] != "" || l.meta["again"] != "v2" {
			t.Fatalf("after a restart: gone %q (want deleted), again %q (want v2)", l.meta["gone"], l.meta["again"])
		}
	})
}

// Writes whose effects the caller cannot take back (CommitKept) wait out a
// full disk or a failed store: refused, they are written once the store
// takes writes, in order with what was refused after them, and done runs
// then.
func TestKeptWritesWaitForTheDisk(t *testing.T) {
	onFullDisks(t, func(t *testing.T, _ vfs.FS, o Options, full func(bool)) {
		s := refusingStore(t, o, full, "gone", "v", "over", "v0")
		var b Batch

		kept := make(chan error, 1)
		b.Reset()
		b.PutMeta("kept", []byte("v"))
		b.PutMeta("over", []byte("v1"))
		s.CommitKept(&b, func(err error) { kept <- err }, true)
		b.Reset()
		b.DeleteMeta("gone")
		b.DeleteMeta("over") // after the kept write: it stays deleted
		if err := commitErr(s, &b); err == nil {
			t.Fatal("a deletion was taken on a full disk")
		}
		select {
		case err := <-kept:
			t.Fatalf("the kept write was done (%v) while the disk was full", err)
		default:
		}

		full(false)
		select {
		case err := <-kept:
			if err != nil {
				t.Fatalf("the kept write failed once the disk took writes: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the kept write not done 10s after the disk took writes")
		}
		l := healedReopen(t, s, o, "after", "v")
		if l.meta["kept"] != "v" || l.meta["gone"] != "" || l.meta["over"] != "" {
			t.Fatalf("after a restart: kept %q (want v), gone %q and over %q (want deleted)", l.meta["kept"], l.meta["gone"], l.meta["over"])
		}
	})
}

// A kept write still waiting when the store closes is told so.
func TestKeptWriteToldOfClose(t *testing.T) {
	onFullDisks(t, func(t *testing.T, _ vfs.FS, o Options, full func(bool)) {
		s := refusingStore(t, o, full)
		kept := make(chan error, 1)
		var b Batch
		b.PutMeta("kept", []byte("v"))
		s.CommitKept(&b, func(err error) { kept <- err }, true)
		_ = commitErr(s, &Batch{}) // the kept write was refused before this
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-kept; !errors.Is(err, ErrClosed) {
			t.Fatalf("kept write at close: %v, want ErrClosed", err)
		}
	})
}

// A group that fails after the committer looked at it (elide) is held as
// it was handed in: a deletion that a kept creation of the same key made
// moot in that group is still written, and so is the creation's undoing
// when the failed write reached the log after all (a failed write may be
// applied at the reopen, doc.go), so that the key does not come back.
func TestFailedGroupHeldAsHandedIn(t *testing.T) {
	s := openT(t, Options{})
	t.Cleanup(func() { _ = s.Close() })
	// The failed write reached the disk: the key is there.
	var b Batch
	b.CreateMeta("k", []byte("v"))
	commitWait(t, s, &b)

	// The same creation, kept, and its deletion fail in one group.
	var del Batch
	del.DeleteMeta("k")
	kept := make(chan error, 1)
	group := []pendingCommit{
		{buf: slices.Clone(b.buf), ops: slices.Clone(b.ops), keep: true, done: func(err error) { kept <- err }},
		{buf: slices.Clone(del.buf), ops: slices.Clone(del.ops), done: func(error) {}},
	}
	s.elide(group, 2)
	for _, pc := range s.hold(group, errors.New("the write failed")) {
		if pc.done != nil {
			pc.done(errors.New("the write failed"))
		}
	}

	b.Reset()
	b.PutMeta("after", []byte("v")) // the held writes go ahead of it
	commitWait(t, s, &b)
	if err := <-kept; err != nil {
		t.Fatalf("the kept creation: %v", err)
	}
	if l := loadAll(t, s, time.Now()); l.meta["k"] != "" || l.meta["after"] != "v" {
		t.Fatalf("k %q (want deleted), after %q (want v)", l.meta["k"], l.meta["after"])
	}
}
