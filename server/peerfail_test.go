package server

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/gannetmq/gannet/codec"
)

// QoS 1 messages forwarded to a node whose store fails to write them are
// not lost: the node does not acknowledge them to their sender, nor
// anything after them, until the sender has sent them again and the store
// has written them, so that they are still there after the node
// restarts.
func TestClusterUnstoredPeerBatchIsSentAgain(t *testing.T) {
	fs := &diskFS{FS: vfs.NewMem()}
	fs.free.Store(1 << 30)
	lg := logWhileRunning(t)
	onDisk := func(c *Config) { c.storeFS, c.DataDir = fs, "/data" }
	nodes := startCluster(t, 2, func(i int, c *Config) {
		c.Logger = lg
		if i == 1 {
			onDisk(c)
		}
	})
	n1, n2 := nodes[0], nodes[1]

	// A persistent subscriber on n2, offline: its messages wait in its
	// queue, in memory and on n2's disk.
	sub, _ := persistentV5(t, n2, "sub")
	sub.subscribe("p/#", 1)
	sub.send(&codec.Disconnect{})
	sub.expectClosed()
	// And one online, which gets each message from memory at once.
	live := dialRaw(t, n2, codec.V5)
	live.connect("live", nil)
	live.subscribe("p/#", 1)
	waitRoutes(t, n1, 1)

	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	var want []string
	publish := func() {
		t.Helper()
		m := fmt.Sprintf("m%d", len(want))
		pub.publishAcked("p/x", m, 1, false)
		want = append(want, m)
	}
	publish()

	// n2's disk fills. Its store notices on a write, looking at the disk
	// at most every 250ms: publish until a write of forwarded messages
	// has failed, then a few more, which n2 refuses while its store
	// cannot write.
	fs.free.Store(1 << 20) // under the 64 MiB floor
	for deadline := time.Now().Add(5 * time.Second); n2.store.st.Stats().Failures == 0; {
		if time.Now().After(deadline) {
			t.Fatal("n2's store wrote everything for 5s with its disk full")
		}
		publish()
		time.Sleep(paceSpell)
	}
	for range 5 {
		publish()
	}

	// Space comes back; the messages published after it are stored, and
	// n1 has everything acknowledged in the end.
	fs.free.Store(1 << 30)
	for range 5 {
		publish()
	}
	waitFor(t, "n1's queue to n2 to drain", func() bool {
		ms := n1.cl.node.Members()
		return len(ms) == 2 && ms[1].Queued == 0
	})
	t.Logf("%d messages, %d writes failed on n2, %v forwarded batches not stored", len(want),
		n2.store.st.Stats().Failures,
		n2.stats.set.GetOrCreateCounter(`gannet_interlink_unstored_batches_total{peer="n1"}`).Get())

	// The online subscriber got every message once: those whose write
	// failed after they were delivered are written once the disk takes
	// writes (not sent again by n1), and those that came while n2's
	// store refused writes were delivered only when they came again.
	seen := make(map[string]int)
	for {
		ps := live.ping()
		if len(ps) == 0 {
			break
		}
		for _, p := range ps {
			m, ok := p.(*codec.Publish)
			if !ok {
				t.Fatalf("unexpected %T", p)
			}
			seen[string(m.Payload)]++
			live.send(&codec.Ack{Kind: codec.PUBACK, PacketID: m.PacketID})
		}
	}
	for _, m := range want {
		if n := seen[m]; n != 1 {
			t.Errorf("the online subscriber got %s %d times, want once", m, n)
		}
	}

	// n2 restarts on its data (and its addresses, so that gossip takes
	// it back at once): the subscriber finds every message in its
	// session, once.
	self := n2.cl.node.Members()[0]
	ic := *n2.cfg.Cluster
	stopNode(t, n2)
	n2 = startBroker(t, func(c *Config) {
		ic.Listen, ic.GossipListen = self.Interlink, self.Gossip
		ic.Join = []string{"gossip=" + n1.cl.node.Members()[0].Gossip}
		c.Cluster = &ic
		c.Logger = lg
		onDisk(c)
	})
	waitFor(t, "n1 and the restarted n2 to link", func() bool {
		for _, s := range []*Server{n1, n2} {
			ms := s.cl.node.Members()
			if len(ms) != 2 || ms[1].LanesUp != ic.Lanes {
				return false
			}
		}
		return true
	})
	sub, ca := persistentV5(t, n2, "sub")
	if !ca.SessionPresent {
		t.Fatal("the subscriber's session did not survive n2's restart")
	}
	got := make(map[string]int)
	read := func(p codec.Packet) {
		m, ok := p.(*codec.Publish)
		if !ok {
			t.Fatalf("unexpected %T", p)
		}
		got[string(m.Payload)]++
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: m.PacketID})
	}
	for len(got) < len(want) {
		p, err := sub.read()
		if err != nil {
			var missing []string
			for _, m := range want {
				if got[m] == 0 {
					missing = append(missing, m)
				}
			}
			t.Fatalf("after n2's restart the subscriber got %d of %d messages (%v), missing %v", len(got), len(want), err, missing)
		}
		read(p)
	}
	for _, p := range sub.ping() {
		read(p)
	}
	for _, m := range want {
		if got[m] != 1 {
			t.Errorf("%s delivered %d times after n2's restart, want once", m, got[m])
		}
	}
}

// logWhileRunning returns a logger that writes to t's log until t and its
// cleanups end, and then drops what comes: memberlist's suspicion timers
// outlive a node's Shutdown, and a test that stops a node midway can have
// one report a peer after it has ended, which testing turns into a panic.
func logWhileRunning(t *testing.T) *slog.Logger {
	w := &runningWriter{t: t}
	t.Cleanup(func() { // registered first: runs after the nodes' Shutdown
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	level := slog.LevelWarn
	if os.Getenv("DEBUG_GANNET_TESTS") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type runningWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *runningWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Logf("%s", p)
	}
	return len(p), nil
}
