package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/gannetmq/gannet/codec"
)

func openT(t testing.TB, o Options) *Store {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// commitWait commits b and waits for its callback.
func commitWait(t testing.TB, s *Store, b *Batch) {
	t.Helper()
	done := make(chan error, 1)
	s.Commit(b, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("commit: %v", err)
	}
}

// loaded is everything a Load reported.
type loaded struct {
	bodies   map[uint64]*Message
	sessions map[string]*Session
	entries  map[string][]*Entry
	inbound  map[string][]uint16
	retained map[string]*Message
	wills    map[string]*Will
	meta     map[string]string
	stats    LoadStats
}

func loadAll(t testing.TB, s *Store, now time.Time) *loaded {
	t.Helper()
	l := &loaded{bodies: map[uint64]*Message{}, sessions: map[string]*Session{}, entries: map[string][]*Entry{},
		inbound: map[string][]uint16{}, retained: map[string]*Message{}, wills: map[string]*Will{}, meta: map[string]string{}}
	var err error
	l.stats, err = s.Load(now, Loader{
		Body:     func(m *Message) { l.bodies[m.ID] = m },
		Session:  func(ss *Session) { l.sessions[ss.ClientID] = ss },
		Entry:    func(c string, e *Entry) { l.entries[c] = append(l.entries[c], e) },
		Inbound:  func(c string, pid uint16) { l.inbound[c] = append(l.inbound[c], pid) },
		Retained: func(m *Message) { l.retained[string(m.Topic)] = m },
		Will:     func(c string, w *Will) { l.wills[c] = w },
		Meta:     func(k string, v []byte) { l.meta[k] = string(v) },
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return l
}

func sampleMessage(id uint64) *Message {
	m := &Message{ID: id, Topic: []byte("a/b"), Payload: []byte("payload"), QoS: 2, Retain: true, From: "pub",
		ExpiresAt: time.Now().Add(time.Hour).UnixNano(), Origin: 7<<32 | id}
	m.Props.PayloadFormat = 1
	m.Props.Set(codec.PropPayloadFormat)
	m.Props.ContentType = []byte("text/plain")
	m.Props.Set(codec.PropContentType)
	m.Props.ResponseTopic = []byte("re/ply")
	m.Props.Set(codec.PropResponseTopic)
	m.Props.CorrelationData = []byte{1, 2, 3}
	m.Props.Set(codec.PropCorrelationData)
	m.Props.User = []codec.UserProperty{{Key: []byte("k"), Value: []byte("v")}}
	return m
}

func TestRoundTripEveryRecord(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir})
	id := s.NextID()
	m := sampleMessage(id)
	var b Batch
	b.PutBody(m)
	sess := &Session{ClientID: "c1", Expiry: time.Hour, DisconnectedAt: time.Now().UnixNano(),
		Subs:  []Subscription{{Filter: "a/#", QoS: 1, NoLocal: true, SubID: 7}, {Filter: "$share/g/x", QoS: 2, RetainAsPublished: true, ReadCheck: true}},
		Owner: "alice"}
	b.PutSession(sess)
	e1 := &Entry{Seq: 1, MsgID: id, QoS: 1, PacketID: 5, SubIDs: []uint32{7}}
	e2 := &Entry{Seq: 2, MsgID: id, QoS: 2, Retain: true, PacketID: 6, Released: true}
	e3 := &Entry{Seq: 3, MsgID: id, QoS: 1}
	b.PutEntry("c1", e3)
	b.PutEntry("c1", e1)
	b.PutEntry("c1", e2)
	b.PutInbound("c1", 9)
	ret := sampleMessage(0)
	ret.Topic = []byte("r/t")
	b.PutRetained(ret)
	will := &Will{Msg: *sampleMessage(0), FireAt: time.Now().Add(time.Minute).UnixNano()}
	b.PutWill("c1", will)
	b.PutMeta("mark/x", []byte("v1"))
	commitWait(t, s, &b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openT(t, Options{Dir: dir})
	defer s.Close()
	if next := s.NextID(); next <= id {
		t.Fatalf("NextID after reopen %d, not above %d", next, id)
	}
	l := loadAll(t, s, time.Now())
	if !reflect.DeepEqual(l.bodies[id], m) {
		t.Fatalf("body:\n got %+v\nwant %+v", l.bodies[id], m)
	}
	if !reflect.DeepEqual(l.sessions["c1"], sess) {
		t.Fatalf("session:\n got %+v\nwant %+v", l.sessions["c1"], sess)
	}
	if want := []*Entry{e1, e2, e3}; !reflect.DeepEqual(l.entries["c1"], want) {
		t.Fatalf("entries not in seq order or changed: %+v", l.entries["c1"])
	}
	if !reflect.DeepEqual(l.inbound["c1"], []uint16{9}) {
		t.Fatalf("inbound: %v", l.inbound["c1"])
	}
	if !reflect.DeepEqual(l.retained["r/t"], ret) {
		t.Fatalf("retained:\n got %+v\nwant %+v", l.retained["r/t"], ret)
	}
	if !reflect.DeepEqual(l.wills["c1"], will) {
		t.Fatalf("will:\n got %+v\nwant %+v", l.wills["c1"], will)
	}
	if l.meta["mark/x"] != "v1" {
		t.Fatalf("meta: %v", l.meta)
	}
}

func TestDeleteSessionTouchesOnlyThatClient(t *testing.T) {
	s := openT(t, Options{})
	defer s.Close()
	ids := []string{"a", "ab", "a\x00", "a\xff", "", "b"}
	id := s.NextID()
	var b Batch
	b.PutBody(sampleMessage(id))
	for _, c := range ids {
		b.PutSession(&Session{ClientID: c, Expiry: time.Hour})
		b.PutEntry(c, &Entry{Seq: 1, MsgID: id, QoS: 1})
		b.PutInbound(c, 1)
		b.PutWill(c, &Will{Msg: *sampleMessage(0), FireAt: time.Now().Add(time.Hour).UnixNano()})
	}
	b.DeleteSession("a")
	commitWait(t, s, &b)
	l := loadAll(t, s, time.Now())
	for _, c := range ids {
		_, has := l.sessions[c]
		if has != (c != "a") || len(l.entries[c]) != len(l.inbound[c]) || (l.wills[c] != nil) != has {
			t.Errorf("client %q: session %v, %d entries, %d inbound, will %v", c, has, len(l.entries[c]), len(l.inbound[c]), l.wills[c] != nil)
		}
	}
}

func TestLoadPurgesExpiredAndOrphans(t *testing.T) {
	s := openT(t, Options{})
	defer s.Close()
	now := time.Now()
	live, expired, orphan := s.NextID(), s.NextID(), s.NextID()
	var b Batch
	lm := sampleMessage(live)
	b.PutBody(lm)
	em := sampleMessage(expired)
	em.ExpiresAt = now.Add(-time.Second).UnixNano()
	b.PutBody(em)
	b.PutBody(sampleMessage(orphan))
	b.PutSession(&Session{ClientID: "gone", Expiry: time.Minute, DisconnectedAt: now.Add(-2 * time.Minute).UnixNano()})
	b.PutEntry("gone", &Entry{Seq: 1, MsgID: live, QoS: 1})
	b.PutSession(&Session{ClientID: "kept", Expiry: time.Hour, DisconnectedAt: now.Add(-time.Minute).UnixNano()})
	b.PutEntry("kept", &Entry{Seq: 1, MsgID: live, QoS: 1})
	b.PutEntry("kept", &Entry{Seq: 2, MsgID: expired, QoS: 1})              // queued, expired: purged
	b.PutEntry("kept", &Entry{Seq: 3, MsgID: expired, QoS: 1, PacketID: 4}) // inflight: kept
	b.PutEntry("kept", &Entry{Seq: 4, MsgID: 999, QoS: 1})                  // no body
	b.PutEntry("noone", &Entry{Seq: 1, MsgID: live, QoS: 1})                // no session record
	old := sampleMessage(0)
	old.Topic = []byte("old")
	old.ExpiresAt = now.Add(-time.Second).UnixNano()
	b.PutRetained(old)
	commitWait(t, s, &b)

	l := loadAll(t, s, now)
	if _, ok := l.sessions["gone"]; ok {
		t.Error("expired session loaded")
	}
	if got := l.entries["kept"]; len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 3 {
		t.Errorf("kept entries: %+v", got)
	}
	if len(l.entries["noone"]) != 0 {
		t.Error("entries without a session loaded")
	}
	if _, ok := l.bodies[orphan]; ok {
		t.Error("orphan body loaded")
	}
	if l.retained["old"] != nil {
		t.Error("expired retained message loaded")
	}
	if l.stats.Purged < 6 {
		t.Errorf("purged %d records, want at least 6", l.stats.Purged)
	}
	// The purge is on disk: a second load finds nothing more to purge.
	if l2 := loadAll(t, s, now); l2.stats.Purged != 0 || len(l2.entries["kept"]) != 2 {
		t.Errorf("second load purged %d, kept %d entries", l2.stats.Purged, len(l2.entries["kept"]))
	}
}

func TestGroupCommitGroupsAndKeepsOrder(t *testing.T) {
	s := openT(t, Options{})
	defer s.Close()
	const producers, each = 8, 200
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b Batch
			for i := range each {
				b.PutMeta(fmt.Sprintf("p%d/%d", p, i), []byte("x"))
				seq := make(chan int, 1)
				mu.Lock()
				n := len(order)
				order = append(order, -1)
				s.Commit(&b, func(err error) {
					if err != nil {
						t.Error(err)
					}
					seq <- n
				})
				mu.Unlock()
				b.Reset()
				<-seq
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Commits != producers*each {
		t.Fatalf("commits %d, want %d", st.Commits, producers*each)
	}
	if st.Syncs >= st.Commits {
		t.Fatalf("%d syncs for %d concurrent commits: no grouping", st.Syncs, st.Commits)
	}
	t.Logf("%d commits in %d syncs", st.Commits, st.Syncs)

	// Callbacks run in Commit order, empty batches included.
	var got []int
	var b Batch
	done := make(chan struct{})
	for i := range 100 {
		if i%3 == 0 {
			b.PutMeta("k", []byte{byte(i)})
		}
		s.Commit(&b, func(error) {
			got = append(got, i) // the committer goroutine only
			if i == 99 {
				close(done)
			}
		})
		b.Reset()
	}
	<-done
	for i, v := range got {
		if v != i {
			t.Fatalf("callbacks out of order: %v", got)
		}
	}
}

func TestOpenRefusesWhatIsNotOurs(t *testing.T) {
	t.Run("foreign files", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Options{Dir: dir})
		if !errors.Is(err, ErrForeign) {
			t.Fatalf("got %v, want ErrForeign", err)
		}
		if names, _ := os.ReadDir(dir); len(names) != 1 {
			t.Fatalf("the foreign directory was written to: %v", names)
		}
	})
	t.Run("newer format", func(t *testing.T) {
		dir := t.TempDir()
		s := openT(t, Options{Dir: dir})
		if err := s.db.Set(keyFormat, append([]byte(formatMagic), 0, 0, 0, 9), nil); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		_, err := Open(Options{Dir: dir})
		if !errors.Is(err, ErrNewerFormat) {
			t.Fatalf("got %v, want ErrNewerFormat", err)
		}
	})
	t.Run("older format raised", func(t *testing.T) {
		dir := t.TempDir()
		s := openT(t, Options{Dir: dir})
		if err := s.db.Set(keyFormat, append([]byte(formatMagic), 0, 0, 0, 1), nil); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		s = openT(t, Options{Dir: dir})
		v, closer, err := s.db.Get(keyFormat)
		if err != nil {
			t.Fatal(err)
		}
		got := binary.BigEndian.Uint32(v[len(formatMagic):])
		_ = closer.Close()
		if got != formatVersion {
			t.Fatalf("format %d after opening a format 1 store, want %d", got, formatVersion)
		}
		_ = s.Close()
	})
	t.Run("corrupt record", func(t *testing.T) {
		dir := t.TempDir()
		s := openT(t, Options{Dir: dir})
		k := append(appendClient(nil, "c"), subSession)
		if err := s.db.Set(k, []byte{1, 0xFF}, nil); err != nil {
			t.Fatal(err)
		}
		_, err := s.Load(time.Now(), Loader{})
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("got %v, want ErrCorrupt", err)
		}
		_ = s.Close()
	})
	t.Run("corrupt files", func(t *testing.T) {
		dir := t.TempDir()
		s := openT(t, Options{Dir: dir})
		_ = s.Close()
		names, _ := os.ReadDir(dir)
		for _, n := range names {
			if len(n.Name()) > 9 && n.Name()[:9] == "MANIFEST-" {
				if err := os.WriteFile(filepath.Join(dir, n.Name()), []byte("garbage garbage garbage"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, err := Open(Options{Dir: dir}); err == nil {
			t.Fatal("opened a store with a corrupt manifest")
		}
	})
	t.Run("second open", func(t *testing.T) {
		dir := t.TempDir()
		s := openT(t, Options{Dir: dir})
		defer s.Close()
		if _, err := Open(Options{Dir: dir}); err == nil {
			t.Fatal("opened a store that is already open")
		}
	})
}

// diskFS reports the free space the test sets.
type diskFS struct {
	vfs.FS
	free atomic.Uint64
}

func (d *diskFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	return vfs.DiskUsage{AvailBytes: d.free.Load(), TotalBytes: 1 << 40}, nil
}

func TestDiskFullFailsWritesAndRecovers(t *testing.T) {
	fs := &diskFS{FS: vfs.NewMem()}
	fs.free.Store(1 << 30)
	s := openT(t, Options{Dir: "/d", FS: fs})
	defer s.Close()
	var b Batch
	b.PutMeta("before", []byte("1"))
	commitWait(t, s, &b)

	fs.free.Store(1 << 20)
	var failed error
	for deadline := time.Now().Add(5 * time.Second); failed == nil && time.Now().Before(deadline); {
		b.Reset()
		b.PutMeta("during", []byte("1"))
		done := make(chan error, 1)
		s.Commit(&b, func(err error) { done <- err })
		failed = <-done
	}
	if !errors.Is(failed, ErrDiskFull) || !errors.Is(s.Healthy(), ErrDiskFull) {
		t.Fatalf("commit error %v, Healthy %v; want ErrDiskFull", failed, s.Healthy())
	}

	fs.free.Store(1 << 30)
	for deadline := time.Now().Add(5 * time.Second); s.Healthy() != nil; {
		if time.Now().After(deadline) {
			t.Fatal("still unhealthy after space returned")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Reset()
	b.PutMeta("after", []byte("1"))
	commitWait(t, s, &b)
	l := loadAll(t, s, time.Now())
	if l.meta["before"] != "1" || l.meta["after"] != "1" {
		t.Fatalf("meta: %v", l.meta)
	}
	// What failed was not half-applied: only a commit that succeeded can
	// have written "during", and the last attempt failed.
	if s.Stats().Failures == 0 {
		t.Fatal("failures not counted")
	}
}

// A crash loses nothing whose commit callback reported success: the store
// on a crashable in-memory file system is cloned as a crash would leave it
// (unsynced writes lost at random) and every acknowledged write is found.
func TestCrashKeepsAcknowledged(t *testing.T) {
	for seed := int64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			s := openT(t, Options{Dir: "/data", FS: fs})
			const producers = 4
			var mu sync.Mutex
			acked := map[uint64]bool{}
			var stop atomic.Bool
			var wg sync.WaitGroup
			for p := range producers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var b Batch
					for i := 0; !stop.Load(); i++ {
						id := s.NextID()
						m := sampleMessage(id)
						b.PutBody(m)
						b.PutSession(&Session{ClientID: fmt.Sprint("c", p), Expiry: time.Hour})
						b.PutEntry(fmt.Sprint("c", p), &Entry{Seq: uint64(i + 1), MsgID: id, QoS: 1})
						s.Commit(&b, func(err error) {
							if err == nil {
								mu.Lock()
								acked[id] = true
								mu.Unlock()
							}
						})
						b.Reset()
					}
				}()
			}
			// Crash in the middle of the load: clone while commits run.
			for {
				mu.Lock()
				n := len(acked)
				mu.Unlock()
				if n >= 300 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			snapshot := make(map[uint64]bool, len(acked))
			for id := range acked {
				snapshot[id] = true
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(uint64(seed), 1))})
			mu.Unlock()
			stop.Store(true)
			wg.Wait()
			_ = s.Close()

			r := openT(t, Options{Dir: "/data", FS: crashed})
			defer r.Close()
			l := loadAll(t, r, time.Now())
			found := map[uint64]bool{}
			for _, es := range l.entries {
				for _, e := range es {
					if l.bodies[e.MsgID] == nil {
						t.Fatalf("entry %d without its body", e.MsgID)
					}
					found[e.MsgID] = true
				}
			}
			for id := range snapshot {
				if !found[id] {
					t.Fatalf("acknowledged message %d lost in the crash (%d acknowledged, %d found)", id, len(snapshot), len(found))
				}
			}
		})
	}
}

func TestBatchDurabilitySurvivesClose(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir, Durability: DurabilityBatch, SyncInterval: 5 * time.Millisecond})
	var b Batch
	for i := range 100 {
		b.PutMeta(fmt.Sprint("k", i), []byte("v"))
		commitWait(t, s, &b)
		b.Reset()
	}
	for deadline := time.Now().Add(5 * time.Second); s.Stats().Syncs == 0; {
		if time.Now().After(deadline) {
			t.Fatal("batch mode never synced")
		}
		time.Sleep(time.Millisecond)
	}
	_ = s.Close()
	s = openT(t, Options{Dir: dir})
	defer s.Close()
	if l := loadAll(t, s, time.Now()); len(l.meta) != 100 {
		t.Fatalf("%d of 100 values after reopen", len(l.meta))
	}
}

func TestGroupElidesMootWrites(t *testing.T) {
	s := openT(t, Options{})
	defer s.Close()
	id := s.NextID()
	var b Batch
	b.PutBody(sampleMessage(id))
	b.PutSession(&Session{ClientID: "c", Expiry: time.Hour})
	b.CreateEntry("c", &Entry{Seq: 1, MsgID: id, QoS: 1})
	commitWait(t, s, &b)
	b.Reset()

	// One group: an entry already on disk updated then deleted, one created
	// and deleted, one created then updated.
	b.PutEntry("c", &Entry{Seq: 1, MsgID: id, QoS: 1, PacketID: 3})
	b.DeleteEntry("c", 1)
	b.CreateEntry("c", &Entry{Seq: 2, MsgID: id, QoS: 1})
	b.DeleteEntry("c", 2)
	b.CreateEntry("c", &Entry{Seq: 3, MsgID: id, QoS: 1})
	b.PutEntry("c", &Entry{Seq: 3, MsgID: id, QoS: 2, PacketID: 5})
	before := s.Stats().Ops
	commitWait(t, s, &b)
	st := s.Stats()
	if applied := st.Ops - before; applied != 2 {
		t.Fatalf("%d writes applied, want 2 (delete seq 1, set seq 3); %d elided", applied, st.Elided)
	}
	l := loadAll(t, s, time.Now())
	got := l.entries["c"]
	if len(got) != 1 || got[0].Seq != 3 || got[0].PacketID != 5 || got[0].QoS != 2 {
		t.Fatalf("entries after the group: %+v", got)
	}
}
