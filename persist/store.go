package persist

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Durability says what a commit's callback promises; doc.go states each
// mode exactly.
type Durability int

// Durability modes.
const (
	DurabilitySync  Durability = iota // callback after the group's fsync
	DurabilityBatch                   // callback after the write; fsync every SyncInterval
)

// ParseDurability parses "sync" or "batch".
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "sync":
		return DurabilitySync, nil
	case "batch":
		return DurabilityBatch, nil
	}
	return 0, fmt.Errorf("persist: unknown durability %q (want sync or batch)", s)
}

func (d Durability) String() string {
	if d == DurabilityBatch {
		return "batch"
	}
	return "sync"
}

// Options configure a Store.
type Options struct {
	Dir          string
	Durability   Durability
	SyncInterval time.Duration // Batch: WAL fsync period; 0 means 100ms
	// MinFreeBytes is the free space below which commits fail with
	// ErrDiskFull; 0 means 64 MiB. It is checked at most every 250ms or
	// every 4 MiB written.
	MinFreeBytes uint64
	// MaxPending is the bytes of writes waiting for the committer past
	// which Commit blocks (CommitNoWait never does); 0 means 64 MiB.
	MaxPending int
	FS         vfs.FS       // nil: the real file system
	Logger     *slog.Logger // nil: slog.Default()
	// OnWrite, when set, is told how long each group of commits took to
	// write: building its Pebble batch and committing it, with the fsync
	// in Sync mode. Groups that fail or hold no writes are not reported.
	// It runs on the committer goroutine and must not block.
	OnWrite func(took time.Duration)
}

// Errors of Open and Commit.
var (
	ErrDiskFull    = errors.New("persist: disk full")
	ErrForeign     = errors.New("persist: directory holds data of another program")
	ErrNewerFormat = errors.New("persist: data written by a newer format")
	ErrClosed      = errors.New("persist: store closed")
	// ErrStoreFailed (instance.go) wraps why a write of the database
	// failed.
)

const (
	formatMagic = "gannet-store"
	// formatVersion 2: retained values may be of record version 2 (a
	// stamp, and clearings). A store of format 1 loads as it is and is
	// raised to 2 with its first write, so that an older build refuses
	// it (ErrNewerFormat) rather than reading clearings as corrupt.
	formatVersion = 2

	// defaultMaxPending bounds the bytes of ops waiting for the committer;
	// Commit blocks beyond it, which is the backpressure on a disk that
	// cannot keep up.
	defaultMaxPending = 64 << 20
)

// Store is the durable store. Its methods are safe for concurrent use.
type Store struct {
	opts Options
	log  *slog.Logger
	// lockFile is the directory's lock, held from Open to Close across
	// every instance opened in between (fenceFS.Lock).
	lockFile io.Closer

	// inst is the open database: nil while none is, read-only while the
	// store started on a full disk. The committer owns it after Open.
	inst *instance
	// db is inst's database, for Load. swap is held by Load and by a
	// reopen while it replaces the instance.
	swap sync.Mutex
	db   *pebble.DB
	// needFormat: the format key is to be written with the id counter
	// (a store created, or opened read-only, without one).
	needFormat bool
	// down is the committer's record of a failed or read-only store.
	down struct {
		err    error         // why writes are refused; nil while they are not
		corpse *instance     // the instance that died, until reopened
		dead   int           // instances that died
		busy   bool          // a reopen is under way
		next   time.Time     // no reopen before then
		wait   time.Duration // the wait after the last failed reopen
		gaveUp bool
	}
	reopened chan reopened

	idRun  uint64
	nextID atomic.Uint64

	mu struct {
		sync.Mutex
		pending      []pendingCommit
		pendingBytes int
		closed       bool
		// redo is what the store refused and must still write, in the
		// order it came: the deletions of refused groups (Load's purge
		// among them) and kept groups whole (CommitKept). It goes ahead
		// of the first group written afterwards, or alone once the
		// store takes writes when a kept group waits (hold).
		redo      []pendingCommit
		redoBytes int
		redoKept  int
	}
	wake     chan struct{} // a commit is pending
	room     *sync.Cond    // on mu: pending bytes fell below MaxPending
	stopped  chan struct{} // committer exited
	unsynced atomic.Bool   // Batch mode or lazy commits: writes since the last fsync
	// unsyncedAt is when unsynced was set (committer goroutine only).
	unsyncedAt time.Time
	pending    atomic.Int64 // mu.pendingBytes, for PendingBytes
	writing    atomic.Int64 // bytes of the group being written
	// writeStart is when the group being written was taken (unix
	// nanoseconds); 0 between groups.
	writeStart atomic.Int64

	// committer-only scratch for elide
	elideMap map[uint64]elideAt
	skip     []bool  // per write of the group: dropped by elide
	order    []opRef // committer scratch: the writes of a group in the order applied

	unhealthy atomic.Pointer[error]
	disk      struct {
		lastCheck time.Time
		written   int
		full      bool
	}

	stats struct {
		commits, syncs, ops, batches, bytes, failures, elided, heldDropped atomic.Uint64
	}
}

// opRef is one write of a group: group[pc].ops[op].
type opRef struct{ pc, op int32 }

// elideAt is the place in a group of a key's last write (group[pc].ops[op],
// the at'th write of the group), and whether the key was created in the
// group.
type elideAt struct {
	pc, op, at int
	created    bool
}

type pendingCommit struct {
	buf  []byte
	ops  []op
	done func(error)
	// keep: written again after a refusal rather than failed
	// (CommitKept).
	keep bool
	// lazy: needs no fsync of its own (CommitLazy).
	lazy bool
}

// memTableSize is Pebble's memtable: 32 MiB rather than its 4 MiB default.
// A broker writes each QoS 1/2 message to a persistent session and deletes
// it once acknowledged; with 4 MiB a busy broker flushed a memtable to disk
// several times a second and compacted what it flushed, a third of its
// CPU. Up to two memtables (one being flushed) are held in memory.
const memTableSize = 32 << 20

// Open opens the store in o.Dir, creating it when the directory is empty
// or absent. A directory of another program, of a newer format or with
// corrupt files is refused and left untouched.
//
// On a volume that does not take writes (less than MinFreeBytes free, or a
// small file cannot be written and fsynced), or where Pebble fails while
// opening for writing, an existing store opens read-only: Load reads it,
// every commit fails with ErrDiskFull (or ErrStoreFailed) and Healthy says
// so, and the store opens for writing by itself once the disk takes writes
// again. A new store cannot be created then, and Open fails: there is
// nothing to read, and the directory must take writes first.
func Open(o Options) (*Store, error) {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = 100 * time.Millisecond
	}
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = 64 << 20
	}
	if o.MaxPending <= 0 {
		o.MaxPending = defaultMaxPending
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	exists, err := checkDir(o.FS, o.Dir)
	if err != nil {
		return nil, err
	}
	if err := o.FS.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("persist: cannot create %s: %w", o.Dir, err)
	}
	lockFile, err := o.FS.Lock(o.FS.PathJoin(o.Dir, "LOCK"))
	if err != nil {
		return nil, fmt.Errorf("persist: cannot lock %s (is another process using it?): %w", o.Dir, err)
	}
	s := &Store{opts: o, log: o.Logger, lockFile: lockFile, wake: make(chan struct{}, 1),
		stopped: make(chan struct{}), reopened: make(chan reopened, 1)}
	s.room = sync.NewCond(&s.mu)
	if err := s.openFirst(exists); err != nil {
		_ = lockFile.Close()
		return nil, err
	}
	go s.committer()
	return s, nil
}

// openFirst opens the database for Open: for writing when the disk takes
// writes, else read-only.
func (s *Store) openFirst(exists bool) error {
	why := s.probe()
	if why == nil {
		in, err := s.openInstance(false)
		if err == nil {
			if err = s.startInstance(in); err == nil {
				return nil
			}
		}
		if !errors.Is(err, ErrStoreFailed) {
			if in != nil {
				s.closeInstance(in)
			}
			return err
		}
		s.down.dead++
		if in != nil {
			s.bury(in)
		}
		why = err
	}
	if !exists {
		return fmt.Errorf("persist: cannot create a store in %s: %w", s.opts.Dir, why)
	}
	s.log.Error("persist: the disk does not take writes; the store opens read-only and refuses writes until it does",
		"dir", s.opts.Dir, "err", why)
	in, err := s.openInstance(true)
	if err != nil {
		return err
	}
	if err := s.startInstance(in); err != nil {
		s.closeInstance(in)
		return err
	}
	s.setDown(why)
	return nil
}

// startInstance checks the format of the store opened first and, when it
// is open for writing, writes the id counter.
func (s *Store) startInstance(in *instance) error {
	if err := runErr(in, func() error { return s.readFormat(in.db) }); err != nil {
		return err
	}
	if !in.readOnly {
		if err := runErr(in, func() error { return s.writeFormat(in.db) }); err != nil {
			return err
		}
	}
	s.inst, s.db = in, in.db
	return nil
}

// closeInstance closes a live instance.
func (s *Store) closeInstance(in *instance) {
	if in.isDead() {
		return
	}
	if err := runErr(in, in.db.Close); err != nil {
		s.log.Warn("persist: cannot close the database", "dir", s.opts.Dir, "err", err)
	}
}

// checkDir refuses a non-empty directory that holds no Pebble store before
// Pebble creates anything in it, and reports whether it holds a store.
func checkDir(fs vfs.FS, dir string) (exists bool, err error) {
	names, err := fs.List(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("persist: cannot read %s: %w", dir, err)
	}
	var other string
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "MANIFEST-") || strings.HasPrefix(n, "OPTIONS-") || strings.HasPrefix(n, "marker."):
			return true, nil
		case n != "LOCK" && n != probeName && other == "":
			other = n // our own files, left by an Open that failed, are no sign
		}
	}
	if other != "" {
		return false, fmt.Errorf("%w: %s is not empty and holds no Gannet store (found %q)", ErrForeign, dir, other)
	}
	return false, nil
}

// readFormat reads the format key and takes this run's id range. A store
// without the key must be empty, and gets it from writeFormat.
func (s *Store) readFormat(db *pebble.DB) error {
	v, closer, err := db.Get(keyFormat)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		it, err := db.NewIter(nil)
		if err != nil {
			return fmt.Errorf("persist: cannot read the store: %w", err)
		}
		empty := !it.First()
		_ = it.Close()
		if !empty {
			return fmt.Errorf("%w: %s is a Pebble store without Gannet's format key", ErrForeign, s.opts.Dir)
		}
		s.needFormat = true
	case err != nil:
		return fmt.Errorf("persist: cannot read the format key: %w", err)
	default:
		ok := len(v) == len(formatMagic)+4 && bytes.HasPrefix(v, []byte(formatMagic))
		var ver uint32
		if ok {
			ver = binary.BigEndian.Uint32(v[len(formatMagic):])
		}
		_ = closer.Close()
		if !ok {
			return fmt.Errorf("%w: %s has an unknown format key", ErrForeign, s.opts.Dir)
		}
		if ver > formatVersion {
			return fmt.Errorf("%w: %s is format %d; this build reads up to %d", ErrNewerFormat, s.opts.Dir, ver, formatVersion)
		}
		s.needFormat = ver < formatVersion
	}
	// Body ids are the run counter in the high 24 bits and a counter in
	// the low 40, so that no id repeats across restarts without a write
	// per id.
	var run uint64
	v, closer, err = db.Get(keyIDRun)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return fmt.Errorf("persist: cannot read the id counter: %w", err)
	default:
		if len(v) != 8 {
			_ = closer.Close()
			return fmt.Errorf("%w: bad id counter", ErrCorrupt)
		}
		run = binary.BigEndian.Uint64(v)
		_ = closer.Close()
	}
	run++
	if run >= 1<<24 {
		return fmt.Errorf("%w: id counter exhausted", ErrCorrupt)
	}
	s.idRun = run
	s.nextID.Store(run << 40)
	return nil
}

// writeFormat writes this run's id counter, and the format key if the
// store has none yet, before any commit: no body of this run is durable
// before the counter that makes its id unique.
func (s *Store) writeFormat(db *pebble.DB) error {
	b := db.NewBatch()
	if s.needFormat {
		_ = b.Set(keyFormat, binary.BigEndian.AppendUint32([]byte(formatMagic), formatVersion), nil)
	}
	_ = b.Set(keyIDRun, binary.BigEndian.AppendUint64(nil, s.idRun), nil)
	err := b.Commit(pebble.Sync)
	_ = b.Close()
	if err != nil {
		return fmt.Errorf("persist: cannot write the id counter: %w", err)
	}
	s.needFormat = false
	return nil
}

// NextID returns a body id no other body of this store has had.
func (s *Store) NextID() uint64 { return s.nextID.Add(1) }

// Healthy reports nil, or why commits are failing now.
func (s *Store) Healthy() error {
	if p := s.unhealthy.Load(); p != nil {
		return *p
	}
	return nil
}

// Stats are the store's counters.
type Stats struct {
	Commits      uint64 // Commit calls completed
	Batches      uint64 // groups written
	Syncs        uint64 // fsyncs of the WAL
	Ops          uint64 // writes applied
	BytesWritten uint64 // bytes of batches written to the WAL
	Failures     uint64 // groups that failed
	Elided       uint64 // writes a later write in the same group made moot
	HeldDropped  uint64 // refused deletions dropped for want of room to hold them (hold)
}

// Stats returns the counters.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.stats.commits.Load(), Batches: s.stats.batches.Load(), Syncs: s.stats.syncs.Load(),
		Ops: s.stats.ops.Load(), BytesWritten: s.stats.bytes.Load(), Failures: s.stats.failures.Load(),
		Elided: s.stats.elided.Load(), HeldDropped: s.stats.heldDropped.Load()}
}

// Commit hands b's writes to the committer and returns at once, unless
// more than Options.MaxPending bytes of writes are waiting, when it blocks
// until the disk catches up. b may be reused as soon as Commit returns.
// done runs on the committer goroutine once the writes are durable (Sync)
// or written (Batch), or with the error that stopped them; it must not
// block. Callbacks run in Commit order, for empty batches too, so an empty
// batch is a barrier behind every earlier commit.
func (s *Store) Commit(b *Batch, done func(error)) { s.commit(b, done, true) }

// CommitNoWait is Commit without the wait: it never blocks, however far
// behind the disk is. It is for callers that must not stop (a network
// event loop serving other clients) and that bound what they hand in
// themselves, such as by waiting for done before taking on more work.
func (s *Store) CommitNoWait(b *Batch, done func(error)) { s.commit(b, done, false) }

// CommitKept is Commit (wait) or CommitNoWait for writes whose effects the
// caller has made already and cannot take back (a peer's messages handed
// to clients): when the store refuses them for a full disk or a failed
// store, they are kept and written, in the order they came, once it takes
// writes again, and done runs then. Past 64 MiB kept, or when the store
// closes first, done gets the error.
func (s *Store) CommitKept(b *Batch, done func(error), wait bool) {
	s.commitPC(b, done, wait, true)
}

// CommitLazy is CommitNoWait for writes that need no fsync of their own:
// done runs once they are written, and they are durable with the next
// commit that is fsynced, or LazySync after they were written at the
// latest. It is for a record whose loss in a crash the broker's promise
// allows, because nothing acknowledged depends on it until a later,
// synced commit (doc.go). In Batch mode it is CommitNoWait.
func (s *Store) CommitLazy(b *Batch, done func(error)) {
	s.enqueue(b, pendingCommit{done: done, lazy: true}, false)
}

// LazySync bounds how long a CommitLazy write waits for an fsync.
const LazySync = 10 * time.Millisecond

func (s *Store) commit(b *Batch, done func(error), wait bool) { s.commitPC(b, done, wait, false) }

func (s *Store) commitPC(b *Batch, done func(error), wait, keep bool) {
	s.enqueue(b, pendingCommit{done: done, keep: keep}, wait)
}

func (s *Store) enqueue(b *Batch, pc pendingCommit, wait bool) {
	if len(b.ops) > 0 {
		pc.buf = append([]byte(nil), b.buf...)
		pc.ops = append([]op(nil), b.ops...)
	}
	s.mu.Lock()
	for wait && s.mu.pendingBytes > s.opts.MaxPending && !s.mu.closed {
		s.room.Wait()
	}
	if s.mu.closed {
		s.mu.Unlock()
		pc.done(ErrClosed)
		return
	}
	s.mu.pending = append(s.mu.pending, pc)
	s.mu.pendingBytes += len(pc.buf)
	s.pending.Store(int64(s.mu.pendingBytes))
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// PendingBytes is the bytes of writes handed in and not yet written: how
// far behind the disk is.
func (s *Store) PendingBytes() int64 { return s.pending.Load() + s.writing.Load() }

// stallAfter is how long one group's write may take before the disk
// counts as behind.
const stallAfter = time.Second

// Behind reports whether the disk is behind: more than MaxPending bytes
// wait for it, or the write under way started more than a second ago.
func (s *Store) Behind() bool {
	if s.PendingBytes() > int64(s.opts.MaxPending) {
		return true
	}
	t := s.writeStart.Load()
	return t != 0 && time.Since(time.Unix(0, t)) > stallAfter
}

// committer writes groups of pending commits until Close.
func (s *Store) committer() {
	defer close(s.stopped)
	var tick <-chan time.Time
	if s.opts.Durability == DurabilityBatch {
		t := time.NewTicker(s.opts.SyncInterval)
		defer t.Stop()
		tick = t.C
	}
	// While the disk is full, look again now and then: with writes refused
	// nothing else would.
	recheck := time.NewTicker(250 * time.Millisecond)
	defer recheck.Stop()
	// Lazy writes are fsynced LazySync after the first of them at the
	// latest, if no synced commit did it before.
	lazy := time.NewTimer(time.Hour)
	lazy.Stop()
	defer lazy.Stop()
	lazyArmed := false
	var group []pendingCommit
	for {
		s.noticeDeath()
		s.mu.Lock()
		group = group[:0]
		if len(s.mu.redo) > 0 && (len(s.mu.pending) > 0 || s.mu.redoKept > 0 && s.writable()) {
			// What was refused goes first.
			group = append(group, s.mu.redo...)
			clear(s.mu.redo)
			s.mu.redo, s.mu.redoBytes, s.mu.redoKept = s.mu.redo[:0], 0, 0
		}
		group = append(group, s.mu.pending...)
		clear(s.mu.pending)
		s.mu.pending = s.mu.pending[:0]
		s.writing.Store(int64(s.mu.pendingBytes))
		if len(group) > 0 {
			s.writeStart.Store(time.Now().UnixNano())
		}
		s.mu.pendingBytes = 0
		s.pending.Store(0)
		closed := s.mu.closed
		s.room.Broadcast()
		s.mu.Unlock()
		if len(group) > 0 {
			s.write(group)
			s.writing.Store(0)
			s.writeStart.Store(0)
			clear(group)
			if s.opts.Durability == DurabilitySync && s.unsynced.Load() {
				if d := LazySync - time.Since(s.unsyncedAt); d <= 0 {
					_ = s.syncNow()
				} else if !lazyArmed {
					lazy.Reset(d)
					lazyArmed = true
				}
			}
			continue
		}
		if closed {
			if s.down.busy {
				s.install(<-s.reopened)
			}
			_ = s.syncNow()
			s.mu.Lock()
			redo := s.mu.redo
			s.mu.redo = nil
			s.mu.Unlock()
			for _, r := range redo {
				if r.keep {
					r.done(ErrClosed)
				}
			}
			return
		}
		select {
		case <-s.wake:
		case <-tick:
			_ = s.syncNow()
		case <-lazy.C:
			lazyArmed = false
			_ = s.syncNow()
		case <-recheck.C:
			if s.disk.full && s.down.err == nil {
				_ = s.checkDisk(0)
			}
			s.maybeReopen()
		case r := <-s.reopened:
			s.install(r)
		}
	}
}

// write applies one group as one Pebble batch and runs its callbacks.
func (s *Store) write(group []pendingCommit) {
	n, size := 0, 0
	for _, pc := range group {
		n += len(pc.ops)
		size += len(pc.buf)
	}
	var err error
	if n > 0 {
		start := time.Now()
		err = s.apply(group, n, size)
		if err == nil && s.opts.OnWrite != nil {
			s.opts.OnWrite(time.Since(start))
		}
	} else if s.opts.Durability == DurabilitySync && !lazyGroup(group) {
		// A commit without writes completes after every earlier one
		// is durable, lazy ones included.
		err = s.syncNow()
	}
	if err != nil {
		s.stats.failures.Add(1)
		s.noticeDeath()
		group = s.hold(group, err)
		s.unhealthy.Store(&err)
	} else if n > 0 && s.Healthy() != nil && !s.disk.full && !s.inst.isDead() {
		s.unhealthy.Store(nil)
	}
	for _, pc := range group {
		if pc.done != nil {
			pc.done(err)
		}
	}
	s.stats.commits.Add(uint64(len(group)))
}

func (s *Store) apply(group []pendingCommit, n, size int) error {
	s.noticeDeath()
	in := s.inst
	if s.down.err != nil {
		return s.down.err
	}
	if err := s.checkDisk(size); err != nil {
		return err
	}
	b := in.db.NewBatchWithSize(size + 16*n)
	// After elision every key is written once (twice only on a hash
	// collision, kept in order by the stable sort), so the writes can go
	// in key order: Pebble inserts a batch into its memtable's skiplist
	// one key after another, and each insert starting where the last one
	// ended is several times cheaper than a search from the top for keys
	// in arrival order, which interleave every client's.
	sorted := s.elide(group, n)
	order := s.order[:0]
	at := 0
	for i := range group {
		for j := range group[i].ops {
			if !s.skip[at] {
				order = append(order, opRef{pc: int32(i), op: int32(j)})
			}
			at++
		}
	}
	if sorted {
		slices.SortStableFunc(order, func(a, b opRef) int {
			pa, pb := &group[a.pc], &group[b.pc]
			oa, ob := &pa.ops[a.op], &pb.ops[b.op]
			return bytes.Compare(pa.buf[oa.k0:oa.k1], pb.buf[ob.k0:ob.k1])
		})
	}
	s.order = order[:0]
	for _, r := range order {
		pc := &group[r.pc]
		o := &pc.ops[r.op]
		k := pc.buf[o.k0:o.k1]
		var err error
		switch o.kind {
		case opSet, opCreate:
			err = b.Set(k, pc.buf[o.v0:o.v1], nil)
		case opDelete:
			err = b.Delete(k, nil)
		case opDeleteRange:
			err = b.DeleteRange(k, pc.buf[o.v0:o.v1], nil)
		}
		if err != nil {
			_ = b.Close()
			return fmt.Errorf("persist: cannot build a batch: %w", err)
		}
	}
	applied := len(order)
	s.stats.elided.Add(uint64(n - applied))
	repr := len(b.Repr())
	wo := pebble.Sync
	if s.opts.Durability == DurabilityBatch || lazyGroup(group) {
		wo = pebble.NoSync
	}
	// The batch is closed by the call: if the instance dies, the call
	// may still be in Pebble when run returns.
	err := runErr(in, func() error {
		err := b.Commit(wo)
		_ = b.Close()
		return err
	})
	if err != nil {
		if errors.Is(err, ErrStoreFailed) {
			return err
		}
		return fmt.Errorf("persist: cannot write: %w", err)
	}
	s.stats.batches.Add(1)
	s.stats.ops.Add(uint64(applied))
	s.stats.bytes.Add(uint64(repr))
	if wo == pebble.Sync {
		// Pebble's fsync covers the log up to this batch: every write
		// before it is durable too.
		s.stats.syncs.Add(1)
		s.unsynced.Store(false)
	} else if !s.unsynced.Swap(true) {
		s.unsyncedAt = time.Now()
	}
	return nil
}

// lazyGroup reports whether every commit of group is lazy (CommitLazy).
func lazyGroup(group []pendingCommit) bool {
	for i := range group {
		if !group[i].lazy {
			return false
		}
	}
	return true
}

// elide drops the writes of a group that a later write of the same group
// makes moot: only the last write of a key counts, and a key created and
// deleted within the group is never written at all. On a busy broker a
// subscriber acknowledges a message while its entry still waits for the
// disk, so most bodies and entries cost no write. It marks the dropped
// writes in s.skip (indexed as the group's writes in order) and leaves
// the group as handed in, which hold needs if the write fails. A group
// with a range deletion is written as it is, and elide reports false for
// it.
func (s *Store) elide(group []pendingCommit, n int) bool {
	s.skip = slices.Grow(s.skip[:0], n)[:n]
	clear(s.skip)
	for _, pc := range group {
		for _, o := range pc.ops {
			if o.kind == opDeleteRange {
				return false
			}
		}
	}
	// Keys are hashed rather than copied into strings: a map of strings
	// costs an allocation per write. Two keys with one hash are told apart
	// by their bytes, and then the second is simply not elided.
	last := s.elideMap
	if last == nil {
		last = make(map[uint64]elideAt)
		s.elideMap = last
	}
	defer clear(last)
	at := 0
	for i := range group {
		pc := &group[i]
		for j := range pc.ops {
			o := &pc.ops[j]
			k := pc.buf[o.k0:o.k1]
			h := maphash.Bytes(elideSeed, k)
			prev, seen := last[h]
			if seen {
				p := &group[prev.pc]
				po := &p.ops[prev.op]
				if !bytes.Equal(p.buf[po.k0:po.k1], k) {
					at++
					continue // a hash collision: keep both writes
				}
				s.skip[prev.at] = true
				if o.kind == opDelete && prev.created {
					s.skip[at] = true // never on disk: nothing to delete
				}
			}
			last[h] = elideAt{pc: i, op: j, at: at, created: o.kind == opCreate || seen && prev.created}
			at++
		}
	}
	return true
}

var elideSeed = maphash.MakeSeed()

// syncNow fsyncs the WAL when it was written without an fsync (Batch mode,
// lazy commits) since the last one.
func (s *Store) syncNow() error {
	if !s.unsynced.Swap(false) {
		return nil
	}
	s.noticeDeath()
	in := s.inst
	if s.down.err != nil {
		return s.down.err // the instance that wrote is gone; see doc.go
	}
	if err := runErr(in, func() error { return in.db.LogData(nil, pebble.Sync) }); err != nil {
		s.log.Error("persist: cannot sync the log", "err", err)
		s.unhealthy.Store(&err)
		return err
	}
	s.stats.syncs.Add(1)
	return nil
}

// writable reports whether the store looks able to take writes: not
// failed and the disk not known full. It runs on the committer.
func (s *Store) writable() bool {
	return s.down.err == nil && !s.disk.full && s.inst != nil && !s.inst.isDead()
}

// checkDisk fails a group while the volume is short of space. It asks the
// file system at most every 250ms or 4 MiB.
func (s *Store) checkDisk(size int) error {
	d := &s.disk
	d.written += size
	if !d.full && time.Since(d.lastCheck) < 250*time.Millisecond && d.written < 4<<20 {
		return nil
	}
	d.lastCheck, d.written = time.Now(), 0
	u, err := s.opts.FS.GetDiskUsage(s.opts.Dir)
	if err != nil {
		return nil // no figure to go by; Pebble reports real failures
	}
	if u.AvailBytes < s.opts.MinFreeBytes {
		if !d.full {
			s.log.Error("persist: disk full; refusing writes", "dir", s.opts.Dir,
				"free_bytes", u.AvailBytes, "need_bytes", s.opts.MinFreeBytes)
		}
		d.full = true
		err := fmt.Errorf("%w: %d bytes free on %s, need %d", ErrDiskFull, u.AvailBytes, s.opts.Dir, s.opts.MinFreeBytes)
		s.unhealthy.Store(&err)
		return err
	}
	if d.full {
		s.log.Warn("persist: disk space back; writes resume", "dir", s.opts.Dir, "free_bytes", u.AvailBytes)
		d.full = false
		s.unhealthy.Store(nil)
	}
	return nil
}

// Close completes the pending commits, syncs and closes the store.
// Commits after Close fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	s.room.Broadcast()
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.stopped
	var err error
	if in := s.inst; in != nil && !in.isDead() {
		err = runErr(in, in.db.Close)
	}
	if lerr := s.lockFile.Close(); err == nil {
		err = lerr
	}
	return err
}
