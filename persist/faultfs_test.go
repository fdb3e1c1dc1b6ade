package persist

import (
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// faultFS is a file system whose writes and syncs can be held (a disk that
// stops answering) or failed with an error (a full or broken disk), for
// files opened for writing after the wrapper is in place.
type faultFS struct {
	vfs.FS
	mu   sync.Mutex
	gate chan struct{} // non-nil: writes and syncs wait until it is closed
	fail error         // non-nil: writes and syncs fail with it
	only string        // non-empty: faults only for files whose name contains it
}

// hold makes writes and syncs wait until the returned func is called.
func (f *faultFS) hold() (release func()) {
	g := make(chan struct{})
	f.mu.Lock()
	f.gate = g
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.gate = nil
		f.mu.Unlock()
		close(g)
	}
}

// failWith makes writes and syncs fail with err; nil heals the disk.
func (f *faultFS) failWith(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *faultFS) check(name string) error {
	f.mu.Lock()
	g, err, only := f.gate, f.fail, f.only
	f.mu.Unlock()
	if !strings.Contains(name, only) {
		return nil
	}
	if g != nil {
		<-g
	}
	return err
}

func (f *faultFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return f.wrap(name)(f.FS.Create(name, c))
}

func (f *faultFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return f.wrap(name)(f.FS.OpenReadWrite(name, c, opts...))
}

func (f *faultFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return f.wrap(newname)(f.FS.ReuseForWrite(oldname, newname, c))
}

func (f *faultFS) wrap(name string) func(vfs.File, error) (vfs.File, error) {
	return func(file vfs.File, err error) (vfs.File, error) {
		if err != nil {
			return nil, err
		}
		return &faultFile{File: file, fs: f, name: name}, nil
	}
}

type faultFile struct {
	vfs.File
	fs   *faultFS
	name string
}

func (f *faultFile) Write(p []byte) (int, error) {
	if err := f.fs.check(f.name); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(f.name); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	if err := f.fs.check(f.name); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *faultFile) SyncData() error {
	if err := f.fs.check(f.name); err != nil {
		return err
	}
	return f.File.SyncData()
}

func (f *faultFile) SyncTo(n int64) (bool, error) {
	if err := f.fs.check(f.name); err != nil {
		return false, err
	}
	return f.File.SyncTo(n)
}
