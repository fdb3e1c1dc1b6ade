package persist

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// instance is one opening of the Pebble database in the store's directory.
//
// Pebble gives up on a database when a write of its own log or manifest
// fails: it calls Logger.Fatalf, expecting the process to end, and for some
// failures (closing or creating a log file, writing a record to a log that
// failed before) it panics. Its state in memory is unknown then: the batch
// being committed may sit in its memtable though its log record never
// reached the disk, and Apply returns nil if Fatalf returns. So the
// instance dies instead of the process:
//
//   - Fatalf marks it dead and never returns: the goroutine that called it
//     (Pebble's, or the one the store made the call on) stays parked.
//   - A panic on a call the store made is recovered and marks it dead too.
//   - The store makes every call into Pebble through run, on a goroutine of
//     its own, and stops waiting when the instance dies: a call may never
//     return, since a parked goroutine may hold Pebble's locks.
//   - The dead instance is fenced: from then on every call of its that
//     would change a file (write, sync, create, rename, remove) waits
//     forever. Fencing waits for such calls already under way, so when
//     fenced is closed the directory is exactly as a crash of the process
//     at that moment would have left it, and a new instance opens it the
//     way a restart would, reading what is durable.
//
// A dead instance keeps its memory (memtables, caches) and goroutines until
// the process exits, which is why the store gives up reopening after
// maxDeadInstances of them.
type instance struct {
	db       *pebble.DB // set once Open returned
	fs       *fenceFS
	readOnly bool
	log      *slog.Logger
	onDeath  func(*instance)

	opening atomic.Bool // pebble.Open has not returned yet
	once    sync.Once
	cause   error         // why it died; set before dead is closed
	dead    chan struct{} // closed when it dies
	fenced  chan struct{} // closed once no call of its can change a file

	bgErrs struct {
		sync.Mutex
		last       time.Time
		suppressed int
	}
}

// maxDeadInstances is how many failed instances the store replaces in one
// process. Each keeps its memory until the process exits; past this many,
// the store stays failed, and the broker must be restarted to write again.
const maxDeadInstances = 8

// ErrStoreFailed is a write of the store's database failing: the store
// refuses writes until it has reopened the database, see doc.go.
var ErrStoreFailed = errors.New("persist: store failed")

func newInstance(s *Store, readOnly bool) *instance {
	return &instance{fs: &fenceFS{FS: s.opts.FS}, readOnly: readOnly, log: s.log, onDeath: s.instanceDied,
		dead: make(chan struct{}), fenced: make(chan struct{})}
}

// die marks the instance dead, tells the store and fences the instance.
// It is safe to call from any goroutine, Pebble's included, but not from
// within a file system call of the instance.
func (in *instance) die(cause error) {
	in.once.Do(func() {
		in.cause = cause
		close(in.dead)
		in.onDeath(in)
		in.fs.fence()
		close(in.fenced)
	})
}

// isDead reports whether the instance died.
func (in *instance) isDead() bool {
	select {
	case <-in.dead:
		return true
	default:
		return false
	}
}

// failure is the error for writes that the instance's death stopped.
func (in *instance) failure() error {
	return fmt.Errorf("%w: %w", ErrStoreFailed, in.cause)
}

// run calls f on a goroutine of its own and returns what f returns, or the
// instance's failure if the instance dies first. A panic in f kills the
// instance. f may never return; its goroutine is left behind then.
func run[T any](in *instance, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	res := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				err, ok := r.(error)
				if !ok {
					err = fmt.Errorf("%v", r)
				}
				in.die(fmt.Errorf("pebble panicked: %w", err))
			}
		}()
		v, err := f()
		res <- result{v, err}
	}()
	select {
	case r := <-res:
		return r.v, r.err
	case <-in.dead:
		// A call that completed as the instance died did its work before
		// the fence: its result is true.
		select {
		case r := <-res:
			return r.v, r.err
		default:
			var zero T
			return zero, in.failure()
		}
	}
}

// runErr is run for calls that return only an error.
func runErr(in *instance, f func() error) error {
	_, err := run(in, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

// backgroundError receives the errors of Pebble's own flushes and
// compactions, which it retries at once and without end: on a full disk,
// a loop that burns a core. So one is fatal to the instance while Open
// runs (Open waits for the flush of the log it replayed) and when the disk
// is out of space; the store reopens the database once it has room. Other
// errors are logged, at most one line every 10s.
func (in *instance) backgroundError(err error) {
	if in.opening.Load() || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		in.log.Error("pebble: background error", "err", err.Error())
		in.die(fmt.Errorf("pebble cannot flush or compact: %w", err))
		return
	}
	b := &in.bgErrs
	b.Lock()
	defer b.Unlock()
	if time.Since(b.last) < 10*time.Second {
		b.suppressed++
		return
	}
	in.log.Error("pebble: background error", "err", err.Error(), "suppressed", b.suppressed)
	b.last, b.suppressed = time.Now(), 0
}

// pebbleLogger sends Pebble's logs to slog, and turns its Fatalf into the
// death of the instance (see instance).
type pebbleLogger struct {
	l  *slog.Logger
	in *instance
}

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug("pebble: " + fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error("pebble: " + fmt.Sprintf(format, args...))
}

// Fatalf never returns: Pebble's state is unknown past it.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error("pebble: fatal: " + msg)
	cause := &fatalError{msg: msg}
	for _, a := range args {
		if err, ok := a.(error); ok {
			cause.err = err // so that errors.Is finds ENOSPC and the like
			break
		}
	}
	p.in.die(cause)
	select {}
}

// fatalError is what Pebble's Fatalf said, wrapping the error it named.
type fatalError struct {
	msg string
	err error
}

func (e *fatalError) Error() string { return e.msg }
func (e *fatalError) Unwrap() error { return e.err }

// fenceFS is an instance's view of the file system: once fenced, every
// call that would change a file waits forever. Reads go on: they change
// nothing.
type fenceFS struct {
	vfs.FS
	mu     sync.RWMutex // read-held by every changing call under way
	fenced bool
}

// enter starts a changing call; leave must follow.
func (f *fenceFS) enter() {
	f.mu.RLock()
	if f.fenced {
		f.mu.RUnlock()
		select {}
	}
}

func (f *fenceFS) leave() { f.mu.RUnlock() }

// fence waits for the changing calls under way and stops all later ones.
func (f *fenceFS) fence() {
	f.mu.Lock()
	f.fenced = true
	f.mu.Unlock()
}

func (f *fenceFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f.enter()
	defer f.leave()
	return f.wrap(f.FS.Create(name, c))
}

func (f *fenceFS) Link(oldname, newname string) error {
	f.enter()
	defer f.leave()
	return f.FS.Link(oldname, newname)
}

func (f *fenceFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f.enter()
	defer f.leave()
	return f.wrap(f.FS.OpenReadWrite(name, c, opts...))
}

func (f *fenceFS) OpenDir(name string) (vfs.File, error) {
	return f.wrap(f.FS.OpenDir(name)) // a directory is synced after a change in it
}

func (f *fenceFS) Remove(name string) error {
	f.enter()
	defer f.leave()
	return f.FS.Remove(name)
}

func (f *fenceFS) RemoveAll(name string) error {
	f.enter()
	defer f.leave()
	return f.FS.RemoveAll(name)
}

func (f *fenceFS) Rename(oldname, newname string) error {
	f.enter()
	defer f.leave()
	return f.FS.Rename(oldname, newname)
}

func (f *fenceFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f.enter()
	defer f.leave()
	return f.wrap(f.FS.ReuseForWrite(oldname, newname, c))
}

func (f *fenceFS) MkdirAll(dir string, perm os.FileMode) error {
	f.enter()
	defer f.leave()
	return f.FS.MkdirAll(dir, perm)
}

// Lock is a no-op: the store holds the directory's lock for as long as it
// is open (Store.lockFile), across the instances it opens, so that one
// that dies never needs to let go of it.
func (f *fenceFS) Lock(string) (io.Closer, error) { return noopCloser{}, nil }

type noopCloser struct{}

func (noopCloser) Close() error { return nil }

func (f *fenceFS) wrap(file vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &fenceFile{File: file, fs: f}, nil
}

// fenceFile is a file an instance opened for writing.
type fenceFile struct {
	vfs.File
	fs *fenceFS
}

func (f *fenceFile) Write(p []byte) (int, error) {
	f.fs.enter()
	defer f.fs.leave()
	return f.File.Write(p)
}

func (f *fenceFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.enter()
	defer f.fs.leave()
	return f.File.WriteAt(p, off)
}

func (f *fenceFile) Preallocate(off, n int64) error {
	f.fs.enter()
	defer f.fs.leave()
	return f.File.Preallocate(off, n)
}

func (f *fenceFile) Sync() error {
	f.fs.enter()
	defer f.fs.leave()
	return f.File.Sync()
}

func (f *fenceFile) SyncData() error {
	f.fs.enter()
	defer f.fs.leave()
	return f.File.SyncData()
}

func (f *fenceFile) SyncTo(n int64) (bool, error) {
	f.fs.enter()
	defer f.fs.leave()
	return f.File.SyncTo(n)
}

// probeName is the file the store writes to learn whether the disk takes
// writes; checkDir lets it be.
const probeName = "GANNET-PROBE"

// probe reports nil when the volume takes writes: it has at least
// MinFreeBytes free (where the file system tells) and a small file can be
// written and fsynced in the directory.
func (s *Store) probe() error {
	fs := s.opts.FS
	if u, err := fs.GetDiskUsage(s.opts.Dir); err == nil && u.AvailBytes < s.opts.MinFreeBytes {
		return fmt.Errorf("%w: %d bytes free on %s, need %d", ErrDiskFull, u.AvailBytes, s.opts.Dir, s.opts.MinFreeBytes)
	}
	name := fs.PathJoin(s.opts.Dir, probeName)
	f, err := fs.Create(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("%w: cannot create %s: %w", ErrDiskFull, name, err)
	}
	_, err = f.Write(make([]byte, 4096))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	_ = fs.Remove(name)
	if err != nil {
		return fmt.Errorf("%w: cannot write %s: %w", ErrDiskFull, name, err)
	}
	return nil
}

// openInstance opens the database, read-only or not. If the instance dies
// on the way, the error is its failure, and errors.Is(err, ErrStoreFailed).
func (s *Store) openInstance(readOnly bool) (*instance, error) {
	in := newInstance(s, readOnly)
	in.opening.Store(true)
	db, err := run(in, func() (*pebble.DB, error) {
		return pebble.Open(s.opts.Dir, &pebble.Options{
			FS:            in.fs,
			ReadOnly:      readOnly,
			Logger:        pebbleLogger{l: s.log, in: in},
			EventListener: &pebble.EventListener{BackgroundError: in.backgroundError},
			MemTableSize:  memTableSize,
		})
	})
	in.opening.Store(false)
	if err != nil {
		if in.isDead() {
			s.bury(in)
			return nil, in.failure()
		}
		if errors.Is(err, pebble.ErrCorruption) {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return nil, fmt.Errorf("persist: cannot open %s: %w", s.opts.Dir, err)
	}
	in.db = db
	return in, nil
}

// bury waits until a dead instance is fenced: another instance may open
// the directory then.
func (s *Store) bury(in *instance) { <-in.fenced }
