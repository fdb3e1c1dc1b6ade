package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// apikeyRun runs `gannet apikey args...` and returns its exit code and
// outputs.
func apikeyRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(gannetBin, append([]string{"apikey"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// addKey adds a key with the subcommand and returns it.
func addKey(t *testing.T, file, name, role string) string {
	t.Helper()
	code, out, errOut := apikeyRun(t, "add", "--file", file, "--name", name, "--role", role)
	if code != 0 {
		t.Fatalf("apikey add %s: exit %d: %s", name, code, errOut)
	}
	return strings.TrimSuffix(out, "\n")
}

var keyLine = regexp.MustCompile(`^gnt_[A-Za-z0-9_-]{43}\n$`)

// `gannet apikey add` prints the new key and nothing else on standard
// output, stores only a hash of it, and refuses a name already taken;
// list shows names and roles; delete removes one key; usage errors exit
// 2, failed operations 1.
func TestAPIKeySubcommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "api-keys")
	code, out, errOut := apikeyRun(t, "add", "--file", file, "--name", "ci", "--role", "write")
	if code != 0 || !keyLine.MatchString(out) || errOut != "" {
		t.Fatalf("add: exit %d, stdout %q, stderr %q; want 0, the key alone, nothing", code, out, errOut)
	}
	key := strings.TrimSuffix(out, "\n")
	ro := addKey(t, file, "grafana", "read")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), key) || strings.Contains(string(data), ro) || strings.Contains(string(data), key[4:]) {
		t.Fatalf("the file holds a key:\n%s", data)
	}
	if !regexp.MustCompile(`^ci:write:sha256\$\S+\ngrafana:read:sha256\$\S+\n$`).Match(data) {
		t.Fatalf("file:\n%s", data)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v, want 0600", st.Mode().Perm())
	}
	if code, out, _ := apikeyRun(t, "list", "--file", file); code != 0 || out != "ci\twrite\ngrafana\tread\n" {
		t.Fatalf("list: %d %q", code, out)
	}
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"add", "--file", file, "--name", "ci", "--role", "read"}, 1, `already has a key named "ci"`},
		{[]string{"add", "--file", file, "--name", "x", "--role", "admin"}, 2, "--role must be read or write"},
		{[]string{"add", "--file", file, "--name", "a b", "--role", "read"}, 2, "--name"},
		{[]string{"add", "--name", "x", "--role", "read"}, 2, "--file is needed"},
		{[]string{"add", "--file", file, "--role", "read"}, 2, "add wants --name and --role"},
		{[]string{"rotate", "--file", file}, 2, `unknown command "rotate"`},
		{nil, 2, "want add, delete or list"},
		{[]string{"delete", "--file", file, "--name", "nobody"}, 1, `no key named "nobody"`},
		{[]string{"delete", "--file", file + ".missing", "--name", "ci"}, 1, "does not exist"},
		{[]string{"list", "--file", file, "stray"}, 2, `unexpected argument "stray"`},
	} {
		code, out, errOut := apikeyRun(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.says) || out != "" {
			t.Errorf("apikey %q: exit %d, stdout %q, stderr %q; want %d and %q", c.args, code, out, errOut, c.code, c.says)
		}
	}
	if code, out, _ := apikeyRun(t, "delete", "--file", file, "--name", "grafana"); code != 0 || out != "" {
		t.Fatalf("delete: %d %q", code, out)
	}
	if code, out, _ := apikeyRun(t, "list", "--file", file); code != 0 || out != "ci\twrite\n" {
		t.Fatalf("list after delete: %d %q", code, out)
	}
	if code, out, _ := apikeyRun(t, "--help"); code != 0 || !strings.Contains(out, "usage: gannet apikey add") {
		t.Fatalf("--help: %d %q", code, out)
	}
}

// request sends one request to the broker's HTTP listener.
func request(t *testing.T, b *broker, method, path, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+b.http+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// reload sends SIGHUP and waits for the broker to log the reload.
func (b *broker) reload(t *testing.T) {
	t.Helper()
	before := strings.Count(b.stderr.String(), `msg=reloaded`)
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the reload in the log", func() bool {
		return strings.Count(b.stderr.String(), `msg=reloaded`) > before
	})
}

// The real binary with --api-key-file and --metrics-auth, keys made by
// the subcommand: the API and /metrics want a key, a read key cannot
// write, SIGHUP puts added keys in force and takes deleted ones out, and
// a write key drains the node.
func TestAPIKeysOnBinary(t *testing.T) {
	file := filepath.Join(t.TempDir(), "api-keys")
	ro, rw := addKey(t, file, "grafana", "read"), addKey(t, file, "ops", "write")
	b := startGannet(t, "--api-key-file="+file, "--metrics-auth")

	for _, c := range []struct {
		method, path, key string
		want              int
	}{
		{"GET", "/healthz", "", 200},
		{"GET", "/readyz", "", 200},
		{"GET", "/metrics", "", 401},
		{"GET", "/metrics", ro, 200},
		{"GET", "/api/v1/cluster", "", 401},
		{"GET", "/api/v1/cluster", rw + "x", 401},
		{"GET", "/api/v1/cluster", ro, 200},
		{"GET", "/api/v1/node/drain", ro, 200},
		{"POST", "/api/v1/node/drain", ro, 403},
		{"POST", "/api/v1/node/drain", "", 401},
		{"GET", "/api/v1/none", ro, 404},
	} {
		if code, body := request(t, b, c.method, c.path, c.key); code != c.want {
			t.Errorf("%s %s: %d %q, want %d", c.method, c.path, code, body, c.want)
		}
	}

	late := addKey(t, file, "late", "read")
	if code, _, _ := apikeyRun(t, "delete", "--file", file, "--name", "grafana"); code != 0 {
		t.Fatal("delete failed")
	}
	if code, _ := request(t, b, "GET", "/api/v1/cluster", late); code != 401 {
		t.Fatalf("a key added after start: %d before SIGHUP, want 401", code)
	}
	b.reload(t)
	if code, _ := request(t, b, "GET", "/api/v1/cluster", late); code != 200 {
		t.Fatalf("the added key after SIGHUP: %d, want 200", code)
	}
	if code, _ := request(t, b, "GET", "/api/v1/cluster", ro); code != 401 {
		t.Fatalf("the deleted key after SIGHUP: %d, want 401", code)
	}

	code, body := request(t, b, "POST", "/api/v1/node/drain", rw)
	if code != 202 || !strings.Contains(body, `"draining":true`) {
		t.Fatalf("POST /api/v1/node/drain with the write key: %d %q", code, body)
	}
	if code, body := request(t, b, "GET", "/readyz", ""); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz after the drain started: %d %q", code, body)
	}
	if mc := rawMQTT(t, b.mqtt, codec.V311); mc.connack("late-client").Code != codec.V3ServerUnavailable {
		t.Fatal("a client connected to the drained node")
	}
	if !strings.Contains(b.stderr.String(), "msg=\"API request\" key=ops method=POST path=/api/v1/node/drain") {
		t.Errorf("the drain request is not in the log:\n%s", b.stderr.String())
	}
	// Drained and empty: SIGTERM stops at once.
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.wait(t); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, b.stderr.String())
	}
}

// Bad API key and drain settings stop the binary with exit code 2 and a
// message that names them.
func TestAdminBadFlagsExitTwo(t *testing.T) {
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--data-dir=" + t.TempDir()}
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("ops:write\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--api-key-file=/nonexistent/keys"}, "/nonexistent/keys"},
		{[]string{"--api-key-file=" + broken}, broken + ":1: want name:role:hash"},
		{[]string{"--metrics-auth"}, "--metrics-auth needs --api-key-file"},
		{[]string{"--drain-rate=-1"}, "--drain-rate"},
		{[]string{"--drain-lb-grace=-1s"}, "--drain-lb-grace"},
		{[]string{"--drain-timeout=-1s"}, "--drain-timeout"},
	} {
		code, out := exitCode(t, append(safe, c.args...)...)
		if code != 2 || !strings.Contains(out, c.want) || strings.Contains(out, "gannet started") {
			t.Errorf("%q: exit %d, want 2 and %q; output:\n%s", c.args, code, c.want, out)
		}
	}
}

// rawMQTT dials addr without sending CONNECT.
func rawMQTT(t *testing.T, addr string, v codec.Version) *mqttConn {
	t.Helper()
	mc := rawConn(t, addr)
	mc.v = v
	return mc
}

// connack sends CONNECT for id and returns the CONNACK.
func (mc *mqttConn) connack(id string) *codec.Connack {
	mc.t.Helper()
	mc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: mc.v, CleanStart: true, KeepAlive: 30, ClientID: []byte(id)})
	p, err := mc.read()
	ca, ok := p.(*codec.Connack)
	if err != nil || !ok {
		mc.t.Fatalf("%s: got %v %v, want CONNACK", id, p, err)
	}
	return ca
}

// event is what a client read when the drain reached it, numbered in the
// order the test observed it.
type event struct {
	seq int64
	pkt codec.Packet
	err error
}

// SIGTERM drains the real binary: /readyz fails before any client is
// disconnected, a client connecting meanwhile is sent to the reference,
// clients are disconnected a few at a time (MQTT 5 with DISCONNECT 0x8B
// and the Server Reference, MQTT 3 closed), and the process exits 0 once
// the drain is over.
func TestSIGTERMDrains(t *testing.T) {
	const ref = "mqtt-b.example.com:1883"
	b := startGannet(t, "--drain-lb-grace=1s", "--drain-rate=5", "--drain-redirect="+ref)
	var seq atomic.Int64
	var conns []*mqttConn
	for i := range 6 {
		v := codec.V5
		if i >= 4 {
			v = codec.V311
		}
		conns = append(conns, dialMQTT(t, b.mqtt, v, "c"+string(rune('0'+i))))
	}
	events := make([]event, len(conns))
	var wg sync.WaitGroup
	for i, mc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = mc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
			p, err := mc.readNoDeadline()
			events[i] = event{seq: seq.Add(1), pkt: p, err: err}
		}()
	}
	// The poller notes when /readyz first fails and every count of
	// disconnected clients the drain reports.
	var first503 atomic.Int64
	counts := make(map[int64]bool)
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		client := &http.Client{Timeout: 2 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if first503.Load() == 0 {
				if resp, err := client.Get("http://" + b.http + "/readyz"); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode == http.StatusServiceUnavailable {
						first503.Store(seq.Add(1))
					}
				}
			} else if resp, err := client.Get("http://" + b.http + "/api/v1/node/drain"); err == nil {
				var st struct {
					Disconnected int64 `json:"disconnected"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&st)
				_ = resp.Body.Close()
				counts[st.Disconnected] = true
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "/readyz failing", func() bool { return first503.Load() != 0 })
	if ca := rawMQTT(t, b.mqtt, codec.V5).connack("newcomer"); ca.Code != codec.UseAnotherServer || string(ca.Props.ServerReference) != ref {
		t.Fatalf("a client connecting during the drain got %v %q, want 0x9C and %q", ca.Code, ca.Props.ServerReference, ref)
	}
	wg.Wait()
	code := b.wait(t)
	close(stop)
	<-polled
	if code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, b.stderr.String())
	}
	for i, e := range events {
		if e.seq < first503.Load() {
			t.Errorf("client %d was disconnected (event %d) before /readyz failed (event %d)", i, e.seq, first503.Load())
		}
		if conns[i].v == codec.V5 {
			d, ok := e.pkt.(*codec.Disconnect)
			if !ok || d.Code != codec.ServerShuttingDown || string(d.Props.ServerReference) != ref {
				t.Errorf("MQTT 5 client %d got %+v %v, want DISCONNECT 0x8B with reference %q", i, e.pkt, e.err, ref)
			}
		} else if e.pkt != nil || e.err == nil {
			t.Errorf("MQTT 3 client %d got %+v %v, want the connection closed", i, e.pkt, e.err)
		}
	}
	if len(counts) < 3 {
		t.Errorf("the drain reported the disconnected counts %v: not a few at a time", counts)
	}
	logs := b.stderr.String()
	for _, want := range []string{"signal=terminated", "draining: /readyz fails", "msg=drained", "gannet stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// readNoDeadline is read without setting a deadline of its own.
func (mc *mqttConn) readNoDeadline() (codec.Packet, error) {
	var buf []byte
	for {
		b, err := mc.r.ReadByte()
		if err != nil {
			return nil, err
		}
		buf = append(buf, b)
		p, n, err := codec.Decode(buf, mc.v, 0)
		if errors.Is(err, codec.ErrIncomplete) {
			continue
		}
		if err != nil || n != len(buf) {
			return nil, err
		}
		return p, nil
	}
}

// A drain that SIGTERM started ends early, and the broker stops as it
// always did (MQTT 5 clients get DISCONNECT 0x8B, without the drain's
// reference), on a second SIGTERM, on SIGINT, or when --drain-timeout
// passes; with --drain-timeout 0 SIGTERM does not drain at all.
func TestDrainCutShort(t *testing.T) {
	for _, c := range []struct {
		name   string
		args   []string
		second syscall.Signal // 0: none
		log    string
	}{
		{"second SIGTERM", nil, syscall.SIGTERM, "stopping at once: signal during the drain"},
		{"SIGINT", nil, syscall.SIGINT, "stopping at once: signal during the drain"},
		{"timeout", []string{"--drain-timeout=1s"}, 0, "did not finish within --drain-timeout"},
		{"no drain", []string{"--drain-timeout=0"}, 0, "gannet stopped"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := startGannet(t, append([]string{"--drain-lb-grace=1h", "--drain-redirect=elsewhere:1883"}, c.args...)...)
			mc := dialMQTT(t, b.mqtt, codec.V5, "stays")
			if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if c.second != 0 {
				waitUntil(t, 10*time.Second, "/readyz failing", func() bool {
					code, _ := request(t, b, "GET", "/readyz", "")
					return code == 503
				})
				if err := b.cmd.Process.Signal(c.second); err != nil {
					t.Fatal(err)
				}
			}
			_ = mc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
			p, err := mc.readNoDeadline()
			if d, ok := p.(*codec.Disconnect); err != nil || !ok || d.Code != codec.ServerShuttingDown || d.Props.Has(codec.PropServerReference) {
				t.Fatalf("got %+v %v, want the shutdown's DISCONNECT 0x8B", p, err)
			}
			if code := b.wait(t); code != 0 {
				t.Fatalf("exit code %d; stderr:\n%s", code, b.stderr.String())
			}
			logs := b.stderr.String()
			if !strings.Contains(logs, c.log) {
				t.Errorf("log lacks %q:\n%s", c.log, logs)
			}
			if c.name == "no drain" && strings.Contains(logs, "draining: /readyz fails") {
				t.Errorf("--drain-timeout 0 drained:\n%s", logs)
			}
		})
	}
}
