package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// smokeTools skips the test when Debian's MQTT command line clients are
// missing.
func smokeTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not on PATH: install the Debian package mosquitto-clients", tool)
		}
	}
}

// smokeMsg is one message as mosquitto_sub printed it.
type smokeMsg struct {
	topic   string
	qos     string
	retain  string
	payload []byte
}

func (m smokeMsg) String() string {
	p := string(m.payload)
	if len(p) > 256 {
		p = fmt.Sprintf("%d bytes", len(m.payload))
	}
	return fmt.Sprintf("%s q%s r%s %q", m.topic, m.qos, m.retain, p)
}

// smokeSub is a running mosquitto_sub.
type smokeSub struct {
	cmd   *exec.Cmd
	ready chan struct{} // closed when it reports its SUBACK
	done  chan struct{} // closed when it has exited
	err   error         // its exit status, once done

	mu   sync.Mutex
	msgs []smokeMsg
	log  strings.Builder
}

// smokeFormat makes mosquitto_sub print each message on one line, its
// payload in hex so that any bytes survive.
const smokeFormat = `MSG|%t|%q|%r|%x`

// startSub runs mosquitto_sub with args and returns once the broker has
// acknowledged its subscriptions, which mosquitto_sub reports with -d.
// stdout is a pipe, so stdbuf (coreutils) makes it line-buffered; without
// stdbuf the report would come at exit, and the broker's subscription
// count is polled instead.
func startSub(t *testing.T, ctx context.Context, s *Server, args ...string) *smokeSub {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.Addr())
	args = append([]string{"-h", host, "-p", port, "-d", "-F", smokeFormat}, args...)
	name, lineBuffered := "mosquitto_sub", true
	if _, err := exec.LookPath("stdbuf"); err == nil {
		name, args = "stdbuf", append([]string{"-oL", "mosquitto_sub"}, args...)
	} else {
		lineBuffered = false
	}
	subsBefore := s.subs.Count()
	ss := &smokeSub{cmd: exec.CommandContext(ctx, name, args...),
		ready: make(chan struct{}), done: make(chan struct{})}
	out, err := ss.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ss.cmd.Stderr = ss.cmd.Stdout
	if err := ss.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 4<<20)
		var once sync.Once
		for sc.Scan() {
			line := sc.Text()
			ss.mu.Lock()
			if len(line) < 200 {
				ss.log.WriteString(line + "\n")
			}
			if f := strings.SplitN(line, "|", 5); len(f) == 5 && f[0] == "MSG" {
				payload, err := hex.DecodeString(f[4])
				if err != nil {
					payload = []byte("<bad hex: " + err.Error() + ">")
				}
				ss.msgs = append(ss.msgs, smokeMsg{topic: f[1], qos: f[2], retain: f[3], payload: payload})
			}
			ss.mu.Unlock()
			if strings.Contains(line, "received SUBACK") {
				once.Do(func() { close(ss.ready) })
			}
		}
		ss.err = ss.cmd.Wait()
		close(ss.done)
	}()
	if !lineBuffered {
		waitFor(t, "mosquitto_sub to subscribe", func() bool { return s.subs.Count() > subsBefore })
		return ss
	}
	select {
	case <-ss.ready:
	case <-ss.done:
		t.Fatalf("mosquitto_sub %q exited before subscribing (%v):\n%s", args, ss.err, ss.output())
	case <-ctx.Done():
		t.Fatalf("mosquitto_sub %q did not subscribe in time:\n%s", args, ss.output())
	}
	return ss
}

func (ss *smokeSub) output() string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.log.String()
}

// wait returns the messages once mosquitto_sub has exited by itself
// (-C count reached), failing if it ends any other way.
func (ss *smokeSub) wait(t *testing.T) []smokeMsg {
	t.Helper()
	<-ss.done
	if ss.err != nil {
		t.Fatalf("mosquitto_sub: %v\n%s", ss.err, ss.output())
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.msgs
}

// smokePub runs mosquitto_pub to completion.
func smokePub(t *testing.T, ctx context.Context, s *Server, args ...string) {
	t.Helper()
	smokePubStdin(t, ctx, s, "", args...)
}

// smokePubStdin runs mosquitto_pub to completion with stdin as its input.
func smokePubStdin(t *testing.T, ctx context.Context, s *Server, stdin string, args ...string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.Addr())
	cmd := exec.CommandContext(ctx, "mosquitto_pub", append([]string{"-h", host, "-p", port}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub %q: %v\n%s", args, err, out)
	}
}

func smokeVersion(v string) string { return strings.TrimPrefix(v, "mqtt") }

// mosquitto_sub receives what mosquitto_pub sends, at every QoS, in 3.1.1
// and 5.0 and across the two, exactly once and in the order one publisher
// sent it [MQTT-4.6.0-6]. (Messages from different publishers have no
// order, so one mosquitto_pub -l sends all three.)
func TestSmokeMosquittoPubSub(t *testing.T) {
	smokeTools(t)
	t.Parallel()
	s := startBrokerRetry(t, nil)
	for _, c := range []struct {
		sub, pub string
		qos      int
	}{
		{"mqttv311", "mqttv311", 0}, {"mqttv311", "mqttv311", 1}, {"mqttv311", "mqttv311", 2},
		{"mqttv5", "mqttv5", 0}, {"mqttv5", "mqttv5", 1}, {"mqttv5", "mqttv5", 2},
		{"mqttv5", "mqttv311", 2}, {"mqttv311", "mqttv5", 1}, {"mqttv31", "mqttv5", 2},
	} {
		name := fmt.Sprintf("sub=%s/pub=%s/qos=%d", smokeVersion(c.sub), smokeVersion(c.pub), c.qos)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			topic := "smoke/" + name
			q := fmt.Sprint(c.qos)
			// -C 3: exit after three messages; -W 10: give up after 10 s.
			sub := startSub(t, ctx, s, "-V", c.sub, "-q", q, "-t", topic, "-C", "3", "-W", "10")
			var want, lines []string
			for i := range 3 {
				m := fmt.Sprintf("%s #%d ünïcode", name, i)
				want = append(want, fmt.Sprintf("%s q%d r0 %q", topic, c.qos, m))
				lines = append(lines, m+"\n")
			}
			// -l: one message per line of stdin, on one connection.
			smokePubStdin(t, ctx, s, strings.Join(lines, ""), "-V", c.pub, "-q", q, "-t", topic, "-l")
			got := fmt.Sprint(sub.wait(t))
			if got != "["+strings.Join(want, " ")+"]" {
				t.Fatalf("got %s\nwant %v", got, want)
			}
		})
	}
}

// A retained message reaches a later subscriber of either version with the
// retain flag set [MQTT-3.3.1-9]; an empty retained message removes it
// [MQTT-3.3.1-10].
func TestSmokeMosquittoRetained(t *testing.T) {
	smokeTools(t)
	t.Parallel()
	s := startBrokerRetry(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	smokePub(t, ctx, s, "-V", "mqttv5", "-q", "1", "-r", "-t", "smoke/ret/a", "-m", "kept a")
	smokePub(t, ctx, s, "-V", "mqttv311", "-q", "2", "-r", "-t", "smoke/ret/b", "-m", "kept b")
	for _, v := range []string{"mqttv311", "mqttv5"} {
		sub := startSub(t, ctx, s, "-V", v, "-q", "2", "-t", "smoke/ret/#", "-C", "2", "-W", "10")
		var got []string
		for _, m := range sub.wait(t) {
			got = append(got, m.String())
		}
		sort.Strings(got) // the order of retained messages is not specified
		want := `[smoke/ret/a q1 r1 "kept a" smoke/ret/b q2 r1 "kept b"]`
		if fmt.Sprint(got) != want {
			t.Fatalf("%s subscriber got %v, want %s", v, got, want)
		}
	}
	// Remove a, then subscribe to a and b in one SUBSCRIBE: the retained
	// messages come filter by filter, so a would come first if it were
	// still there.
	// At QoS 1 mosquitto_pub ends only once the broker has handled it.
	smokePub(t, ctx, s, "-V", "mqttv311", "-q", "1", "-r", "-n", "-t", "smoke/ret/a")
	sub := startSub(t, ctx, s, "-V", "mqttv5", "-q", "1", "-t", "smoke/ret/a", "-t", "smoke/ret/b",
		"--retained-only", "-C", "1", "-W", "10")
	if got := fmt.Sprint(sub.wait(t)); got != `[smoke/ret/b q1 r1 "kept b"]` {
		t.Fatalf("after removing smoke/ret/a got %s", got)
	}
}

// A payload of a few hundred kilobytes, arriving in many reads, goes
// through byte for byte.
func TestSmokeMosquittoLargePayload(t *testing.T) {
	smokeTools(t)
	t.Parallel()
	s := startBrokerRetry(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	payload := make([]byte, 300<<10)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range payload {
		payload[i] = byte(r.Uint32())
	}
	file := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(file, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := startSub(t, ctx, s, "-V", "mqttv311", "-q", "1", "-t", "smoke/large", "-C", "2", "-W", "10")
	smokePub(t, ctx, s, "-V", "mqttv5", "-q", "1", "-t", "smoke/large", "-f", file)
	smokePub(t, ctx, s, "-V", "mqttv311", "-q", "2", "-t", "smoke/large", "-f", file)
	msgs := sub.wait(t)
	if len(msgs) != 2 {
		t.Fatalf("got %d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		if !bytes.Equal(m.payload, payload) {
			t.Fatalf("message %d: %d bytes differ from the %d sent", i, len(m.payload), len(payload))
		}
	}
}
