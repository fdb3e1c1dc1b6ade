package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the real gannet binary once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gannet-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "gannet")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return binPath
}

func TestBadFlags(t *testing.T) {
	bin := binary(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--receive-maximum=0"}, "--receive-maximum"},
		{[]string{"--max-packet-size=-1"}, "--max-packet-size"},
		{[]string{"--shared-policy=sticky"}, "--shared-policy"},
		{[]string{"--log-level=loud"}, "--log-level"},
		{[]string{"--log-format=xml"}, "--log-format"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"--connect-timeout=soon"}, "connect-timeout"},
		{[]string{"--listen=nonsense"}, "nonsense"},
	} {
		cmd := exec.Command(bin, append(c.args, "--http-listen=", "--data-dir", t.TempDir())...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2 (stderr %q)", c.args, err, stderr.String())
			continue
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: stderr %q does not name %s", c.args, stderr.String(), c.want)
		}
	}
}

func TestHelp(t *testing.T) {
	out, err := exec.Command(binary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, flag := range []string{"-listen", "-http-listen", "-data-dir", "-log-level", "-log-format", "-event-loops",
		"-read-buffer", "-max-queued-messages", "-max-inflight", "-max-packet-size", "-min-keepalive",
		"-max-keepalive", "-outbound-high-water", "-sys-interval", "-receive-maximum"} {
		if !strings.Contains(string(out), flag+" ") {
			t.Errorf("--help does not document %s", flag)
		}
	}
}

// The real binary serves a v5 client and, on SIGTERM, tells it the server
// is shutting down (0x8B) and exits 0.
func TestSIGTERM(t *testing.T) {
	cmd := exec.Command(binary(t), "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--data-dir", t.TempDir())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// The startup log line carries the bound address.
	addrRe := regexp.MustCompile(`mqtt=(\S+)`)
	lines := bufio.NewScanner(stderr)
	var addr string
	for lines.Scan() {
		if m := addrRe.FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		t.Fatal("no startup line with the MQTT address")
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, CleanStart: true, ClientID: []byte("term")}).Append(nil, codec.V5)
	if _, err := c.Write(conn); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if p := readPacket(t, r); p.Type() != codec.CONNACK {
		t.Fatalf("got %v", p.Type())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p := readPacket(t, r)
	if d, ok := p.(*codec.Disconnect); !ok || d.Code != codec.ServerShuttingDown {
		t.Fatalf("got %+v, want DISCONNECT 0x8B", p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v, want 0", err)
	}
}

func readPacket(t *testing.T, r *bufio.Reader) codec.Packet {
	t.Helper()
	var buf []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		buf = append(buf, b)
		p, _, err := codec.Decode(buf, codec.V5, 0)
		if err == codec.ErrIncomplete {
			continue
		}
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		return p
	}
}
