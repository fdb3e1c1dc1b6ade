package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// node is one gannet process of the cluster. Its ports, its data
// directory and its log file outlive kills and restarts.
type node struct {
	name    string
	bin     string
	mqtt    string // client listener
	http    string // HTTP listener: /readyz and the admin API
	cluster string // private interlink listener; peers reach it through proxy
	gossip  string
	data    string // --data-dir; a tmpfs mount point when disk faults are on
	mounted bool
	proxy   *linkProxy
	args    []string // flags every start shares (secret, keys, limits)
	logPath string
	h       *History

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error
	expected bool // the harness ended it (kill, stop): not a crash
	ready    bool // the current process answered /readyz
	paused   bool
	starts   int
	crashes  int
}

// Ports are picked below the kernel's ephemeral range, where no outgoing
// connection (ours, the nodes', other tests') can take one between the
// pick and the node's bind, and never twice in one process.
var ports struct {
	sync.Mutex
	taken map[int]bool
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if f := strings.Fields(string(b)); err == nil && len(f) == 2 {
		if lo, err := strconv.Atoi(f[0]); err == nil && lo > 12000 {
			return lo
		}
	}
	return 32768
}

// freeAddr returns a loopback address whose port is free now, for TCP
// and, with udp, UDP too (gossip uses both).
func freeAddr(udp bool) (string, error) {
	ports.Lock()
	defer ports.Unlock()
	if ports.taken == nil {
		ports.taken = map[int]bool{}
	}
	lo := ephemeralLow()
	for range 500 {
		p := 10000 + rand.IntN(lo-10000)
		if ports.taken[p] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		_ = ln.Close()
		if udp {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				continue
			}
			_ = pc.Close()
		}
		ports.taken[p] = true
		return addr, nil
	}
	return "", errors.New("no loopback port free below the ephemeral range")
}

// argv is the command line of the node's next start.
func (n *node) argv(peers []*node) []string {
	var seeds []string
	for _, o := range peers {
		if o != n {
			seeds = append(seeds, "gossip="+o.gossip)
		}
	}
	a := []string{"--node-name=" + n.name, "--listen=" + n.mqtt, "--http-listen=" + n.http,
		"--cluster-listen=" + n.cluster, "--cluster-advertise=" + n.proxy.addr(), "--gossip-listen=" + n.gossip,
		"--join=" + strings.Join(seeds, ","), "--data-dir=" + n.data}
	return append(a, n.args...)
}

// start runs the node and waits until /readyz says 200. A port taken in
// between by someone else's connection is retried a few times.
func (n *node) start(ctx context.Context, peers []*node) error {
	var err error
	for attempt := range 5 {
		if err = n.startOnce(ctx, peers); err == nil || !strings.Contains(err.Error(), "in use") {
			return err
		}
		sleep(ctx, time.Duration(200*(attempt+1))*time.Millisecond)
	}
	return err
}

func (n *node) startOnce(ctx context.Context, peers []*node) error {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cannot open %s's log: %w", n.name, err)
	}
	fmt.Fprintf(logf, "=== chaos: %s starts at %s\n", n.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(n.bin, n.argv(peers)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GANNET_") { // the flags say everything
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// A harness that dies leaves no broker behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cannot start %s: %w", n.bin, err)
	}
	exited := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.exited, n.expected, n.paused, n.ready = cmd, exited, false, false, false
	n.starts++
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		n.waitErr = err
		crashed := !n.expected && n.ready
		if crashed {
			n.crashes++
		}
		n.mu.Unlock()
		close(exited)
		if crashed {
			n.h.Add(Op{Kind: OpNode, Node: n.name, Note: fmt.Sprintf("exited on its own: %v; last log lines: %s", err, n.tail(3))})
		}
	}()
	if err := n.waitReady(ctx, exited); err != nil {
		n.kill()
		return err
	}
	n.mu.Lock()
	n.ready = true
	n.mu.Unlock()
	n.h.Add(Op{Kind: OpNode, Node: n.name, Note: "started"})
	return nil
}

// waitReady polls /readyz until it answers 200.
func (n *node) waitReady(ctx context.Context, exited chan struct{}) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("%s exited before it was ready: %s", n.name, n.tail(5))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := hc.Get("http://" + n.http + "/readyz"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within a minute: %s", n.name, n.tail(5))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running reports whether the process is up (paused counts).
func (n *node) running() bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the running process; expected marks an exit it
// causes as the harness's doing.
func (n *node) signal(sig syscall.Signal, expected bool) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil
	}
	if expected {
		n.expected = true
	}
	_ = n.cmd.Process.Signal(sig)
	return n.exited
}

// kill ends the process with SIGKILL (resuming it first if paused, so
// that it dies now) and waits for it.
func (n *node) kill() {
	if !n.running() {
		return
	}
	exited := n.signal(syscall.SIGKILL, true)
	n.signal(syscall.SIGCONT, true)
	<-exited
	n.mu.Lock()
	n.paused = false
	n.mu.Unlock()
}

// stop asks the process to stop with SIGTERM (which drains first) and
// waits up to limit before killing it; it reports whether it stopped by
// itself.
func (n *node) stop(limit time.Duration) bool {
	if !n.running() {
		return true
	}
	exited := n.signal(syscall.SIGTERM, true)
	select {
	case <-exited:
		return true
	case <-time.After(limit):
		n.kill()
		return false
	}
}

func (n *node) pause() {
	n.signal(syscall.SIGSTOP, false)
	n.mu.Lock()
	n.paused = true
	n.mu.Unlock()
}

func (n *node) resume() {
	n.signal(syscall.SIGCONT, false)
	n.mu.Lock()
	n.paused = false
	n.mu.Unlock()
}

// tail returns the last k lines of the node's log, joined by " | ".
func (n *node) tail(k int) string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > k {
		lines = lines[len(lines)-k:]
	}
	return strings.Join(lines, " | ")
}

// mountTmpfs mounts a tmpfs of size bytes on dir: a volume small enough
// for a ballast file to fill. It fails without the right to mount.
func mountTmpfs(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mount -t tmpfs on %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func unmount(dir string) error {
	out, err := exec.Command("umount", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("umount %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ballastName is the file that fills a node's volume during a disk fault.
const ballastName = "chaos-ballast"

// fillDisk writes a ballast file beside the node's data until the volume
// has no space left (ENOSPC), so that the store's writes fail.
func (n *node) fillDisk() (int64, error) {
	f, err := os.OpenFile(filepath.Join(n.data, ballastName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var total int64
	for {
		k, err := f.Write(buf)
		total += int64(k)
		switch {
		case err == nil:
		case errors.Is(err, syscall.ENOSPC) && len(buf) > 4096:
			buf = buf[:4096] // the last pages
		case errors.Is(err, syscall.ENOSPC):
			return total, nil
		default:
			return total, err
		}
	}
}

// freeDisk removes the ballast.
func (n *node) freeDisk() error {
	err := os.Remove(filepath.Join(n.data, ballastName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
