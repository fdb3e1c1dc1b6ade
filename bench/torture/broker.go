package torture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

	"github.com/gannetmq/gannet/bench"
)

// Broker kinds.
const (
	Gannet    = "gannet"
	Mosquitto = "mosquitto"
)

// Limits are the bounds a scenario configures. Gannet takes each as its
// flag; Mosquitto gets the closest equivalent in its configuration file,
// and nothing where it has none (mosquittoConf says which).
type Limits struct {
	// MaxQueuedMessages and MaxQueuedBytes bound one session's queue:
	// --max-queued-messages and --max-queued-bytes; Mosquitto's
	// max_queued_messages and max_queued_bytes.
	MaxQueuedMessages int
	MaxQueuedBytes    int64
	// QueuedBytesTotal bounds every queue together
	// (--max-queued-bytes-total, with --queue-full-policy drop-oldest).
	// Mosquitto has no such budget: its memory_limit is the nearest.
	QueuedBytesTotal int64
	// MemoryLimit is --memory-limit and Mosquitto's memory_limit.
	MemoryLimit int64
	// MaxConnections is --max-connections and the listener's
	// max_connections.
	MaxConnections int
	// MaxSessions is --max-sessions (Gannet only).
	MaxSessions int
	// MaxPublishRate is --max-publish-rate (Gannet only: Mosquitto
	// cannot limit a client's publish rate).
	MaxPublishRate float64
	// MaxPublishBytesRate is --max-publish-bytes-rate (Gannet only).
	MaxPublishBytesRate int64
	// FlappingMaxCount is --flapping-max-count (Gannet only: Mosquitto
	// has no flapping detection).
	FlappingMaxCount int
	// MaxSubscriptions is --max-subscriptions (Gannet only).
	MaxSubscriptions int
	// MaxPacketSize is --max-packet-size and Mosquitto's max_packet_size.
	MaxPacketSize int
	// OutboundHighWater and SlowTimeout are --outbound-high-water and
	// --slow-timeout (Gannet only: Mosquitto never cuts off a slow
	// receiver).
	OutboundHighWater int64
	SlowTimeout       time.Duration
	// MaxInflight is --max-inflight and max_inflight_messages.
	MaxInflight int
	// ConnectTimeout is --connect-timeout (Gannet only).
	ConnectTimeout time.Duration
}

// gannetArgs are the flags that set l; zero fields keep the defaults.
func (l *Limits) gannetArgs() []string {
	var a []string
	add := func(set bool, flag string, v any) {
		if set {
			a = append(a, fmt.Sprintf("--%s=%v", flag, v))
		}
	}
	add(l.MaxQueuedMessages > 0, "max-queued-messages", l.MaxQueuedMessages)
	add(l.MaxQueuedBytes > 0, "max-queued-bytes", l.MaxQueuedBytes)
	add(l.QueuedBytesTotal > 0, "max-queued-bytes-total", l.QueuedBytesTotal)
	add(l.QueuedBytesTotal > 0, "queue-full-policy", "drop-oldest")
	add(l.MemoryLimit > 0, "memory-limit", l.MemoryLimit)
	add(l.MaxConnections > 0, "max-connections", l.MaxConnections)
	add(l.MaxSessions > 0, "max-sessions", l.MaxSessions)
	add(l.MaxPublishRate > 0, "max-publish-rate", l.MaxPublishRate)
	add(l.MaxPublishBytesRate > 0, "max-publish-bytes-rate", l.MaxPublishBytesRate)
	add(l.FlappingMaxCount > 0, "flapping-max-count", l.FlappingMaxCount)
	add(l.MaxSubscriptions > 0, "max-subscriptions", l.MaxSubscriptions)
	add(l.MaxPacketSize > 0, "max-packet-size", l.MaxPacketSize)
	add(l.OutboundHighWater > 0, "outbound-high-water", l.OutboundHighWater)
	add(l.SlowTimeout > 0, "slow-timeout", l.SlowTimeout)
	add(l.MaxInflight > 0, "max-inflight", l.MaxInflight)
	add(l.ConnectTimeout > 0, "connect-timeout", l.ConnectTimeout)
	return a
}

// mosquittoConf is the configuration file of a Mosquitto listening on
// port with its data in dir. Persistence is on, saved every second
// (autosave_interval 1: Mosquitto writes its whole state at each save and
// cannot save each acknowledged message, so this is the nearest it comes
// to Gannet's synchronous store), and $SYS is published every second,
// since that is where its counters are.
func (l *Limits) mosquittoConf(port int, dir string) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("per_listener_settings false")
	if os.Geteuid() == 0 {
		// Started as root, Mosquitto would drop to its own user, who
		// cannot write to a temporary directory of ours.
		line("user root")
	}
	line("allow_anonymous true")
	line("persistence true")
	line("persistence_location %s/", dir)
	line("autosave_interval 1")
	line("sys_interval 1")
	line("log_dest stderr")
	line("log_type error")
	line("log_type warning")
	line("connection_messages false")
	line("set_tcp_nodelay true")
	if l.MaxQueuedMessages > 0 {
		line("max_queued_messages %d", l.MaxQueuedMessages)
	}
	if l.MaxQueuedBytes > 0 {
		line("max_queued_bytes %d", l.MaxQueuedBytes)
	}
	if l.MemoryLimit > 0 {
		line("memory_limit %d", l.MemoryLimit)
	}
	if l.MaxPacketSize > 0 {
		line("max_packet_size %d", l.MaxPacketSize)
	}
	if l.MaxInflight > 0 {
		line("max_inflight_messages %d", min(l.MaxInflight, 65535))
	}
	line("listener %d 127.0.0.1", port)
	if l.MaxConnections > 0 {
		line("max_connections %d", l.MaxConnections)
	}
	return b.String()
}

// Broker is one broker process on loopback ports of its own, with a data
// directory of its own that outlives a kill and a restart.
type Broker struct {
	Kind string
	Addr string // MQTT, host:port
	HTTP string // Gannet's HTTP listener (metrics, readiness); "" for Mosquitto

	bin    string
	dir    string
	limits Limits
	extra  []string // more Gannet flags

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	stderr *tailBuffer
	sys    *sysWatcher // Mosquitto's $SYS counters
}

// startTimeout bounds the wait for a broker to become ready.
const startTimeout = 60 * time.Second

// startBroker starts a broker of kind from bin with the limits l, its data
// in a new directory under tmp. It retries with other ports when one it
// picked was taken meanwhile.
func startBroker(ctx context.Context, kind, bin, tmp string, l Limits, extra ...string) (*Broker, error) {
	dir, err := os.MkdirTemp(tmp, kind+"-")
	if err != nil {
		return nil, fmt.Errorf("cannot make the broker's data directory: %w", err)
	}
	for attempt := 0; ; attempt++ {
		b := &Broker{Kind: kind, bin: bin, dir: dir, limits: l, extra: extra}
		if b.Addr, err = freeAddr(); err == nil && kind == Gannet {
			b.HTTP, err = freeAddr()
		}
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		_, err = b.start(ctx)
		if err == nil {
			return b, nil
		}
		if attempt == 2 || !strings.Contains(err.Error(), "in use") {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("cannot pick a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// start runs the process and waits until it serves; it returns how long
// that took from the exec.
func (b *Broker) start(ctx context.Context) (time.Duration, error) {
	var argv []string
	switch b.Kind {
	case Gannet:
		argv = append([]string{b.bin, "--listen=" + b.Addr, "--http-listen=" + b.HTTP,
			"--data-dir=" + filepath.Join(b.dir, "data"), "--sys-interval=0", "--log-level=warn"},
			b.limits.gannetArgs()...)
		argv = append(argv, b.extra...)
	case Mosquitto:
		_, p, _ := net.SplitHostPort(b.Addr)
		port, _ := strconv.Atoi(p)
		conf := filepath.Join(b.dir, "mosquitto.conf")
		if err := os.WriteFile(conf, []byte(b.limits.mosquittoConf(port, b.dir)), 0o600); err != nil {
			return 0, fmt.Errorf("cannot write mosquitto.conf: %w", err)
		}
		argv = []string{b.bin, "-c", conf}
	default:
		return 0, fmt.Errorf("unknown broker %q: want gannet or mosquitto", b.Kind)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// The scenario sets every limit it depends on: GANNET_* variables
	// (settings to Gannet, which refuses the names it does not know)
	// stay out of the broker's environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GANNET_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	stderr := &tailBuffer{max: 64 << 10}
	cmd.Stderr = stderr
	cmd.Stdout = stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("cannot start %s: %w", b.bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	b.mu.Lock()
	b.cmd, b.exited, b.stderr = cmd, exited, stderr
	b.mu.Unlock()
	if err := b.waitReady(ctx, exited, &waitErr); err != nil {
		b.Kill()
		return 0, err
	}
	took := time.Since(t0)
	if b.Kind == Mosquitto {
		w, err := watchSys(ctx, b.Addr)
		if err != nil {
			b.Kill()
			return 0, err
		}
		b.mu.Lock()
		b.sys = w
		b.mu.Unlock()
	}
	return took, nil
}

// waitReady polls until the broker answers: Gannet's /readyz says 200
// (its store is open and its listeners bound), Mosquitto accepts a TCP
// connection.
// *waitErr is the process's exit status once exited is closed.
func (b *Broker) waitReady(ctx context.Context, exited chan struct{}, waitErr *error) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("%s exited before it was ready (%v): %s", b.Kind, *waitErr, strings.TrimSpace(b.stderr.String()))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if b.Kind == Gannet {
			resp, err := hc.Get("http://" + b.HTTP + "/readyz")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		} else if c, err := net.DialTimeout("tcp", b.Addr, time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %v: %s", b.Kind, startTimeout, strings.TrimSpace(b.stderr.String()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// PID is the running process's id.
func (b *Broker) PID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd.Process.Pid
}

// Sample reads the process's CPU time and memory from /proc.
func (b *Broker) Sample() (bench.ProcSample, error) { return bench.SampleProc(b.PID()) }

// Kill ends the process with SIGKILL and waits for it.
func (b *Broker) Kill() {
	b.mu.Lock()
	cmd, exited, sys := b.cmd, b.exited, b.sys
	b.sys = nil
	b.mu.Unlock()
	if sys != nil {
		sys.close()
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Stop asks the process to stop with SIGTERM and returns how long it took
// to exit; after a minute it is killed.
func (b *Broker) Stop() time.Duration {
	b.mu.Lock()
	cmd, exited, sys := b.cmd, b.exited, b.sys
	b.sys = nil
	b.mu.Unlock()
	if sys != nil {
		sys.close()
	}
	t0 := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	return time.Since(t0)
}

// Restart starts the broker again on the same ports and data directory,
// after Kill or Stop, and returns how long it took to become ready.
func (b *Broker) Restart(ctx context.Context) (time.Duration, error) {
	var took time.Duration
	var err error
	// The old process's listening socket is gone, but a port can be
	// taken by a client's ephemeral port in between: retry a little.
	for attempt := 0; attempt < 3; attempt++ {
		if took, err = b.start(ctx); err == nil || !strings.Contains(err.Error(), "in use") {
			break
		}
	}
	return took, err
}

// Close stops the broker if it runs and removes its data directory.
func (b *Broker) Close() {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.mu.Unlock()
	if cmd != nil {
		select {
		case <-exited:
		default:
			b.Kill()
		}
	}
	_ = os.RemoveAll(b.dir)
}

// Stderr is the end of what the broker wrote.
func (b *Broker) Stderr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stderr.String()
}

// Metrics reads Gannet's /metrics: each series by its full name with
// labels, as `gannet_messages_dropped_total{reason="queue_full"}`.
// For Mosquitto it returns the latest $SYS values under their topics
// ($SYS/broker/publish/messages/dropped), current as of a $SYS round that
// began after the call.
func (b *Broker) Metrics(ctx context.Context) (map[string]float64, error) {
	if b.Kind == Mosquitto {
		b.mu.Lock()
		w := b.sys
		b.mu.Unlock()
		if w == nil {
			return nil, errors.New("no $SYS watcher: mosquitto is not running")
		}
		return w.fresh(ctx)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + b.HTTP + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("cannot read gannet's metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("cannot read gannet's metrics: %w", err)
	}
	return parseMetrics(body), nil
}

// parseMetrics reads the Prometheus text format: "name{labels} value"
// lines, comments skipped.
func parseMetrics(body []byte) map[string]float64 {
	m := map[string]float64{}
	for _, line := range bytes.Split(body, []byte("\n")) {
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		i := bytes.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(string(line[i+1:]), 64)
		if err != nil {
			continue
		}
		m[string(line[:i])] = v
	}
	return m
}

// metric reads one series, 0 when absent or on error: used for figures
// that are reported, whose absence shows as 0 in the table.
func (b *Broker) metric(ctx context.Context, name string) float64 {
	m, err := b.Metrics(ctx)
	if err != nil {
		return 0
	}
	return m[name]
}

// waitMetric polls Gannet's metric name until ok accepts its value or the
// timeout passes; it returns the last value read.
func (b *Broker) waitMetric(ctx context.Context, name string, timeout time.Duration, ok func(float64) bool) (float64, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := b.Metrics(ctx)
		if err != nil {
			return 0, err
		}
		v := m[name]
		if ok(v) {
			return v, nil
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("%s is %v after %v", name, v, timeout)
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
