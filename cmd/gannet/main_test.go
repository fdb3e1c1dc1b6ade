package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// gannetBin is the real broker binary, built once by TestMain.
var gannetBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gannet-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gannetBin = filepath.Join(dir, "gannet")
	args := []string{"build", "-o", gannetBin}
	if raceEnabled() {
		// The binary under test gets the race detector when the tests do,
		// so that races in startup and shutdown show up here too.
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot build gannet: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	// A race-enabled binary sleeps a second before exiting 0 unless told
	// otherwise; every child inherits this.
	race := "atexit_sleep_ms=0"
	if g := os.Getenv("GORACE"); g != "" {
		race = g + " " + race
	}
	_ = os.Setenv("GORACE", race)
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// exitCode runs the binary to completion (within 20 s) and returns its exit
// code and what it wrote to stdout and stderr.
func exitCode(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, gannetBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("gannet %q still running after 20s; output:\n%s", args, out.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	}
	t.Fatalf("gannet %q: %v", args, err)
	return 0, ""
}

// A bad flag value exits with code 2 and names the flag on stderr, before
// anything listens.
func TestBadFlagExitsTwo(t *testing.T) {
	// Harmless settings first, so that a flag that is wrongly accepted
	// cannot take the default ports; the flag under test comes last and wins.
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir()}
	for _, c := range []struct {
		args []string
		want []string // each must appear on stderr
	}{
		{[]string{"--receive-maximum=0"}, []string{"--receive-maximum", "0"}},
		{[]string{"--receive-maximum=65536"}, []string{"--receive-maximum", "65536"}},
		{[]string{"--receive-maximum=many"}, []string{"receive-maximum", "many"}},
		{[]string{"--listen=nonsense"}, []string{"--listen", "nonsense"}},
		{[]string{"--listen=127.0.0.1:70000"}, []string{"--listen", "70000"}},
		{[]string{"--http-listen=localhost"}, []string{"--http-listen", "localhost"}},
		{[]string{"--no-such-flag"}, []string{"no-such-flag"}},
		{[]string{"--max-packet-size=10"}, []string{"--max-packet-size", "10"}},
		{[]string{"--max-inflight=0"}, []string{"--max-inflight"}},
		{[]string{"--event-loops=-1"}, []string{"--event-loops"}},
		{[]string{"--read-buffer=100"}, []string{"--read-buffer"}},
		{[]string{"--connect-timeout=soon"}, []string{"connect-timeout", "soon"}},
		{[]string{"--connect-timeout=0s"}, []string{"--connect-timeout"}},
		{[]string{"--sys-interval=-1s"}, []string{"--sys-interval"}},
		{[]string{"--shared-policy=sticky"}, []string{"--shared-policy", "sticky"}},
		{[]string{"--log-level=loud"}, []string{"--log-level", "loud"}},
		{[]string{"--log-format=xml"}, []string{"--log-format", "xml"}},
		{[]string{"--min-keepalive=10s", "--max-keepalive=5s"}, []string{"--min-keepalive", "--max-keepalive"}},
		{[]string{"--topic-alias-maximum=70000"}, []string{"--topic-alias-maximum"}},
		{[]string{"--write-delay=2s"}, []string{"--write-delay", "2s"}},
		{[]string{"--write-delay=-1ms"}, []string{"--write-delay"}},
		{[]string{"--write-delay-busy=-1"}, []string{"--write-delay-busy"}},
		{[]string{"--auth-jwt-from=cookie"}, []string{"--auth-jwt-from", "cookie"}},
		{[]string{"--auth-cert=serial"}, []string{"--auth-cert", "serial"}},
		{[]string{"--auth-cache-ttl=-1s"}, []string{"auth"}},
		{[]string{"--password-file=/nonexistent/passwd"}, []string{"/nonexistent/passwd"}},
		{[]string{"--acl-file=/nonexistent/acl"}, []string{"/nonexistent/acl"}},
		{[]string{"--topic-alias-out=2000"}, []string{"--topic-alias-out"}},
		{[]string{"stray"}, []string{"stray"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, out := exitCode(t, append(safe, c.args...)...)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("stderr does not name %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "gannet started") {
				t.Errorf("broker started despite the bad flag:\n%s", out)
			}
		})
	}
}

// flagNames returns every flag main.go defines, read from its source so that
// a new flag is covered without touching this test.
func flagNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, file := range []string{"main.go", "auth.go", "tls.go", "cluster.go", "admin.go"} {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fn := call.Fun.(type) {
			case *ast.SelectorExpr:
				if x, ok := fn.X.(*ast.Ident); !ok || x.Name != "fs" {
					return true
				}
			case *ast.Ident:
				if fn.Name != "src" { // authFlags.register's source flags
					return true
				}
			default:
				return true
			}
			for _, a := range call.Args {
				if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					name, err := strconv.Unquote(lit.Value)
					if err == nil {
						names = append(names, name)
					}
					break
				}
			}
			return true
		})
	}
	return names
}

// --help exits 0 and documents every flag.
func TestHelpListsEveryFlag(t *testing.T) {
	names := flagNames(t)
	if len(names) < 20 {
		t.Fatalf("found only %d flags in main.go: %q", len(names), names)
	}
	for _, arg := range []string{"--help", "-h"} {
		code, out := exitCode(t, arg)
		if code != 0 {
			t.Fatalf("%s: exit code %d, want 0; output:\n%s", arg, code, out)
		}
		if !strings.HasPrefix(out, "Usage: gannet") {
			t.Errorf("%s: output does not start with the usage line:\n%s", arg, out)
		}
		for _, name := range names {
			// flag.PrintDefaults: "  -name type" and the description on
			// the next, indented line.
			re := regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(name) + `( \S+)?\n\s+\S`)
			if !re.MatchString(out) {
				t.Errorf("%s: flag --%s is not listed with a description", arg, name)
			}
		}
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// lockedBuffer collects a child's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// broker is a running gannet process.
type broker struct {
	cmd     *exec.Cmd
	mqtt    string
	http    string
	stderr  *lockedBuffer
	exited  chan struct{} // closed when the process has ended
	waitErr error         // valid after exited is closed
}

// startGannet runs the binary on free loopback ports and returns once
// /readyz answers 200. A port taken between choosing and binding makes the
// process exit; it is then tried again on new ports.
func startGannet(t *testing.T, args ...string) *broker {
	t.Helper()
	return startGannetArgs(t, func(int) []string { return args })
}

// startGannetArgs is startGannet with the flags made for each attempt, so
// that ports taken meanwhile can be picked again.
func startGannetArgs(t *testing.T, argsFor func(attempt int) []string) *broker {
	t.Helper()
	return startGannetUnder(t, nil, argsFor)
}

// startGannetUnder is startGannetArgs with the binary run by the command
// wrap names (prlimit, say), when it is not empty.
func startGannetUnder(t *testing.T, wrap []string, argsFor func(attempt int) []string) *broker {
	t.Helper()
	for attempt := 0; ; attempt++ {
		b := &broker{mqtt: freeAddr(t), http: freeAddr(t), stderr: &lockedBuffer{}, exited: make(chan struct{})}
		argv := append(slices.Clone(wrap), gannetBin, "--listen="+b.mqtt, "--http-listen="+b.http, "--data-dir="+t.TempDir())
		b.cmd = exec.Command(argv[0], append(argv[1:], argsFor(attempt)...)...)
		b.cmd.Stderr = b.stderr
		if err := b.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			b.waitErr = b.cmd.Wait()
			close(b.exited)
		}()
		t.Cleanup(func() {
			select {
			case <-b.exited:
			default:
				_ = b.cmd.Process.Kill()
				<-b.exited
			}
		})
		if b.waitReady(t) {
			return b
		}
		if attempt == 2 || !strings.Contains(b.stderr.String(), "address already in use") {
			t.Fatalf("gannet exited before it was ready (%v):\n%s", b.waitErr, b.stderr.String())
		}
	}
}

// waitReady polls /readyz until it answers 200. It returns false when the
// process exits first.
func (b *broker) waitReady(t *testing.T) bool {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-b.exited:
			return false
		default:
		}
		resp, err := client.Get("http://" + b.http + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 within 30s; stderr:\n%s", b.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wait returns the exit code once the process ends, failing after 20 s.
func (b *broker) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-b.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("gannet still running 20s after the signal; stderr:\n%s", b.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(b.waitErr, &ee) {
		return ee.ExitCode() // -1 when killed by a signal
	}
	if b.waitErr != nil {
		t.Fatalf("wait: %v", b.waitErr)
	}
	return 0
}

// mqttConn is a bare MQTT connection spoken through codec.
type mqttConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
	v codec.Version
}

func dialMQTT(t *testing.T, addr string, v codec.Version, id string) *mqttConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	mc := &mqttConn{t: t, c: c, r: bufio.NewReader(c), v: v}
	mc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: v, CleanStart: true, KeepAlive: 30, ClientID: []byte(id)})
	p, err := mc.read()
	if err != nil {
		t.Fatalf("%s: no CONNACK: %v", id, err)
	}
	if ca, ok := p.(*codec.Connack); !ok || ca.Code != codec.Success {
		t.Fatalf("%s: got %+v, want CONNACK success", id, p)
	}
	return mc
}

func (mc *mqttConn) send(p codec.Packet) {
	mc.t.Helper()
	if _, err := mc.c.Write(p.Append(nil, mc.v)); err != nil {
		mc.t.Fatalf("write: %v", err)
	}
}

// read returns the next packet, or the error that ended the connection.
func (mc *mqttConn) read() (codec.Packet, error) {
	_ = mc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
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
		if err != nil {
			return nil, err
		}
		if n != len(buf) {
			return nil, fmt.Errorf("decoded %d of %d bytes", n, len(buf))
		}
		return p, nil
	}
}

// The real binary serves clients and stops cleanly on SIGTERM and SIGINT:
// a v5 client hears DISCONNECT 0x8B [MQTT-3.14.2-1], a 3.1.1 client is
// closed without a word, and the process exits 0.
func TestServesAndStopsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			b := startGannet(t, "--log-level=info")
			v5 := dialMQTT(t, b.mqtt, codec.V5, "v5-client")
			v3 := dialMQTT(t, b.mqtt, codec.V311, "v3-client")

			// A QoS 1 round trip through the broker.
			v5.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("cmd/t"), QoS: 1}}})
			if p, err := v5.read(); err != nil || p.Type() != codec.SUBACK {
				t.Fatalf("got %v, %v; want SUBACK", p, err)
			}
			v3.send(&codec.Publish{QoS: 1, PacketID: 7, Topic: []byte("cmd/t"), Payload: []byte("hello")})
			if p, err := v3.read(); err != nil || p.Type() != codec.PUBACK {
				t.Fatalf("publisher got %v, %v; want PUBACK", p, err)
			}
			p, err := v5.read()
			pub, ok := p.(*codec.Publish)
			if err != nil || !ok || string(pub.Topic) != "cmd/t" || string(pub.Payload) != "hello" || pub.QoS != 1 {
				t.Fatalf("subscriber got %+v, %v; want PUBLISH cmd/t hello QoS 1", p, err)
			}
			v5.send(&codec.Ack{Kind: codec.PUBACK, PacketID: pub.PacketID})

			// /metrics counts both clients.
			resp, err := http.Get("http://" + b.http + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if !regexp.MustCompile(`(?m)^gannet_clients_connected 2$`).Match(body) {
				t.Errorf("/metrics does not show 2 connected clients:\n%s", body)
			}

			if err := b.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			p, err = v5.read()
			if d, ok := p.(*codec.Disconnect); err != nil || !ok || d.Code != codec.ServerShuttingDown {
				t.Fatalf("v5 client got %+v, %v; want DISCONNECT 0x8B", p, err)
			}
			if p, err := v5.read(); err == nil {
				t.Fatalf("v5 client got %+v after DISCONNECT, want the connection closed", p)
			}
			if p, err := v3.read(); err == nil {
				t.Fatalf("3.1.1 client got %+v, want a silent close", p)
			}
			if code := b.wait(t); code != 0 {
				t.Fatalf("exit code %d after %v, want 0; stderr:\n%s", code, sig, b.stderr.String())
			}
			logs := b.stderr.String()
			for _, want := range []string{"shutting down", "signal=" + sig.String(), "gannet stopped"} {
				if !strings.Contains(logs, want) {
					t.Errorf("log lacks %q:\n%s", want, logs)
				}
			}
		})
	}
}

// A listener that cannot be opened is a failure to start: exit code 1 and
// the address in the log.
func TestStartFailureExitsOne(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	for _, args := range [][]string{
		{"--listen=" + taken, "--http-listen="},
		{"--listen=" + freeAddr(t), "--http-listen=" + taken},
	} {
		code, out := exitCode(t, append(args, "--data-dir="+t.TempDir())...)
		if code != 1 {
			t.Errorf("%q: exit code %d, want 1; output:\n%s", args, code, out)
			continue
		}
		if !strings.Contains(out, taken) || !strings.Contains(out, "cannot") {
			t.Errorf("%q: output does not say which address failed:\n%s", args, out)
		}
	}
}

// A SIGTERM sent the moment /readyz first answers 200, as an orchestrator
// may do, still stops the broker cleanly: the handler is installed before
// the broker reports ready.
func TestSIGTERMRightAfterReady(t *testing.T) {
	b := startGannet(t)
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.wait(t); code != 0 {
		t.Fatalf("exit code %d, want 0 (-1: killed by the signal); stderr:\n%s", code, b.stderr.String())
	}
	if !strings.Contains(b.stderr.String(), "gannet stopped") {
		t.Errorf("no clean stop in the log:\n%s", b.stderr.String())
	}
}
