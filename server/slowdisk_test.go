package server

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/gannetmq/gannet/codec"
)

// stallFS is a file system whose writes and syncs wait while it is
// stalled (a disk that stops answering) or fail while it is failing (a
// disk that is full or broken).
type stallFS struct {
	vfs.FS
	mu   sync.Mutex
	gate chan struct{} // non-nil while stalled; closed by resume
	fail error         // non-nil while failing
}

func (f *stallFS) stall() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gate == nil {
		f.gate = make(chan struct{})
	}
}

func (f *stallFS) resume() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gate != nil {
		close(f.gate)
		f.gate = nil
	}
}

// failWith makes writes and syncs fail with err; nil heals the disk.
func (f *stallFS) failWith(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// wait holds a write or sync while the disk is stalled, and returns the
// error it fails with.
func (f *stallFS) wait() error {
	f.mu.Lock()
	g, err := f.gate, f.fail
	f.mu.Unlock()
	if g != nil {
		<-g
	}
	return err
}

func (f *stallFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, c)
	return f.wrap(file, err)
}

func (f *stallFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, c, opts...)
	return f.wrap(file, err)
}

func (f *stallFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.ReuseForWrite(oldname, newname, c)
	return f.wrap(file, err)
}

func (f *stallFS) wrap(file vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &stallFile{File: file, fs: f}, nil
}

type stallFile struct {
	vfs.File
	fs *stallFS
}

func (f *stallFile) Write(p []byte) (int, error) {
	if err := f.fs.wait(); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *stallFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.wait(); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *stallFile) Sync() error {
	if err := f.fs.wait(); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *stallFile) SyncData() error {
	if err := f.fs.wait(); err != nil {
		return err
	}
	return f.File.SyncData()
}

func (f *stallFile) SyncTo(n int64) (bool, error) {
	if err := f.fs.wait(); err != nil {
		return false, err
	}
	return f.File.SyncTo(n)
}

// A stalled disk holds back the acknowledgements of QoS 1/2 publishes
// and nothing else: other clients of the same event loop get PINGRESP and
// QoS 0 messages, a publisher waiting for its PUBACK gets PINGRESP, a
// client that goes on publishing waits in its input once it has as many
// acknowledgements outstanding as the receive maximum, and when the disk
// comes back every publish is acknowledged and kept.
func TestStalledDiskDoesNotBlockTheLoop(t *testing.T) {
	fs := &stallFS{FS: vfs.NewMem()}
	const window = 8
	s := startBroker(t, func(c *Config) {
		c.storeFS, c.DataDir = fs, "/data"
		c.EventLoops = 1 // every client shares the loop the disk could block
		c.ReceiveMaximum = window
		c.storeMaxPending = 64 << 10
	})
	t.Cleanup(fs.resume) // before the broker shuts down

	// An offline persistent session gives every QoS 1 publish a write.
	sub, _ := persistentV5(t, s, "sub")
	sub.subscribe("d", 1)
	sub.send(&codec.Disconnect{})
	_ = sub.c.Close()

	other := dialRaw(t, s, codec.V5)
	other.connect("other", nil)
	other.subscribe("q", 0)
	other.subscribe("keep", 0)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	flood := dialRaw(t, s, codec.V5)
	flood.connect("flood", nil)

	fs.stall()
	pad := bytes.Repeat([]byte("x"), 8<<10)
	publish := func(rc *rawConn, who string, n int) {
		var b []byte
		for range n {
			id := rc.nextID()
			payload := append([]byte(who+"/"+strconv.Itoa(int(id))+"/"), pad...)
			b = (&codec.Publish{Topic: []byte("d"), Payload: payload, QoS: 1, PacketID: id}).Append(b, rc.v)
		}
		rc.write(b)
	}
	// pub stays within its window; flood sends three times as much,
	// and the writes waiting for the disk pass the store's bound.
	publish(pub, "pub", window)
	publish(flood, "flood", 3*window)

	// The loop still serves everyone.
	if got := other.ping(); len(got) != 0 {
		t.Fatalf("other got %d packets before PINGRESP", len(got))
	}
	if got := pub.ping(); len(got) != 0 {
		t.Fatalf("pub got %d packets before PINGRESP: an acknowledgement ran ahead of the disk", len(got))
	}
	if got := delivered(t, pub, other, "q"); !got["q"] {
		t.Fatal("a QoS 0 message did not reach its subscriber while the disk stalled")
	}
	waitFor(t, "flood's input held for the disk", func() bool { return s.stats.storeHeld.Get() > 0 })
	if s.store.st.PendingBytes() == 0 {
		t.Fatal("no writes wait for the stalled disk")
	}

	fs.resume()
	for _, c := range []struct {
		rc *rawConn
		n  int
	}{{pub, window}, {flood, 3 * window}} {
		for i := 1; i <= c.n; i++ {
			a, ok := c.rc.expect().(*codec.Ack)
			if !ok || a.Kind != codec.PUBACK || a.PacketID != uint16(i) || a.Code != codec.Success {
				t.Fatalf("expected PUBACK %d (success), got %+v", i, a)
			}
		}
	}

	// Every acknowledged message is in the session.
	sub, _ = persistentV5(t, s, "sub")
	seen := map[string]bool{}
	for len(seen) < 4*window {
		p, ok := sub.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected PUBLISH, %d of %d received", len(seen), 4*window)
		}
		key := string(p.Payload[:bytes.LastIndexByte(p.Payload[:20], '/')])
		if seen[key] {
			t.Fatalf("%s delivered twice", key)
		}
		seen[key] = true
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	if got := sub.ping(); len(got) != 0 {
		t.Fatalf("%d more packets after the %d messages", len(got), len(seen))
	}
}

// The PUBREL of a QoS 2 delivery to a persistent session waits until the
// record that the delivery was received (PUBREC) is written: sent before,
// a crash would leave the store saying the message was not received, the
// restarted broker would send the PUBLISH again, and the client, which
// completed the exchange when it got the PUBREL, would take it as new.
func TestPubrelWaitsForItsRecord(t *testing.T) {
	fs := &stallFS{FS: vfs.NewMem()}
	s := startBroker(t, func(c *Config) { c.storeFS, c.DataDir = fs, "/data" })
	t.Cleanup(fs.resume) // before the broker shuts down
	sub, _ := persistentV5(t, s, "sub")
	sub.subscribe("r", 2)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("r", "m", 2, false)
	p, ok := sub.expect().(*codec.Publish)
	if !ok || p.QoS != 2 {
		t.Fatalf("got %+v, want the QoS 2 PUBLISH", p)
	}

	fs.stall()
	sub.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
	ss := s.lookupSession("sub")
	waitFor(t, "the PUBREC to be taken", func() bool {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		m := ss.mu.inflight[p.PacketID]
		return m != nil && m.released
	})
	ss.mu.Lock()
	cl := ss.mu.cl
	ss.mu.Unlock()
	held := make(chan int32, 1)
	if err := cl.loop.el.Execute(context.Background(), runFunc(func() { held <- cl.held })); err != nil {
		t.Fatal(err)
	}
	if n := <-held; n != 1 {
		t.Fatalf("%d packets wait for the disk, want the PUBREL", n)
	}
	fs.resume()
	if rel, ok := sub.expect().(*codec.Ack); !ok || rel.Kind != codec.PUBREL || rel.PacketID != p.PacketID {
		t.Fatalf("got %+v, want PUBREL %d", rel, p.PacketID)
	}
}
