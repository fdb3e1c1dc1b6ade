package torture

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gannetBin is the broker built once for every test.
var gannetBin string

func TestMain(m *testing.M) {
	if code, ok := AbuserProcess(); ok {
		os.Exit(code)
	}
	dir, err := os.MkdirTemp("", "torture-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gannetBin = filepath.Join(dir, "gannet")
	out, err := exec.Command("go", "build", "-o", gannetBin, "github.com/gannetmq/gannet/cmd/gannet").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot build gannet: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// runShort runs scenario name's short form against Gannet and fails the
// test for every enforced condition not met.
func runShort(t *testing.T, name string) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Broker: Gannet, Bin: gannetBin, TempDir: t.TempDir(), Log: testLog{t}}, name)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	res.Print(&b)
	t.Log("\n" + b.String())
	for _, f := range res.Failed() {
		t.Error(f)
	}
	return res
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestReconnectStorm(t *testing.T) { runShort(t, "reconnect") }
func TestOfflineFlood(t *testing.T)   { runShort(t, "offline") }
func TestSlowConsumers(t *testing.T)  { runShort(t, "slow") }
func TestRetainedStorm(t *testing.T)  { runShort(t, "retained") }
func TestHostileClients(t *testing.T) { runShort(t, "hostile") }

// Bad arguments stop the command with exit code 2 and a message naming
// the cause, before any broker starts.
func TestCommandErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-broker", "emqx", "all"}, `-broker must be gannet or mosquitto, got "emqx"`},
		{[]string{"-bin", gannetBin}, "name the scenarios to run, or all"},
		{[]string{"-bin", gannetBin, "reconnect", "stampede"}, `unknown scenario "stampede"`},
		{[]string{"-bin", filepath.Join(t.TempDir(), "nothing"), "all"}, "no gannet binary at"},
		{[]string{"-no-such-flag"}, "flag provided but not defined"},
		{[]string{"-bin", gannetBin, "-abusers", "idle,worm", "hostile"}, `unknown hostile client "worm" in -abusers`},
		{[]string{"-bin", gannetBin, "-abusers-nice", "20", "hostile"}, "-abusers-nice must be 0 to 19, got 20"},
	} {
		var stdout, stderr strings.Builder
		if code := Command(context.Background(), c.args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit code %d, want 2", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%q: stderr %q does not say %q", c.args, stderr.String(), c.want)
		}
	}
}

// A result passes when every enforced condition holds: one that is only
// reported (a latency ratio in the short form) does not fail it, an
// unfinished run does.
func TestResultVerdict(t *testing.T) {
	r := &Result{}
	r.check("ledger", true, "ok")
	r.checkFull("latency", false, "3x")
	if f := r.Failed(); len(f) != 0 {
		t.Fatalf("short form failed on a reported condition: %v", f)
	}
	r.Full = true
	r.checkFull("latency", false, "3x")
	if f := r.Failed(); len(f) != 1 || !strings.HasPrefix(f[0], "latency") {
		t.Fatalf("full form: failed %v, want the latency condition", f)
	}
	r = &Result{Err: "broker exited"}
	if f := r.Failed(); len(f) != 1 {
		t.Fatalf("unfinished run: failed %v", f)
	}
}
