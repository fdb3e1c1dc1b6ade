package main

import (
	"io"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"testing"
)

func TestProcsFor(t *testing.T) {
	for _, c := range []struct {
		env          string
		procs, loops int
		want         int
	}{
		{"", 2, 2, 3}, // two loops and the accepting one
		{"", 8, 8, 9},
		{"", 8, 3, 8},                          // the runtime's choice is more
		{"", 1, 0, max(1, runtime.NumCPU()+1)}, // a loop per CPU
		{"4", 2, 2, 0},                         // the environment decides
	} {
		if got := procsFor(c.env, c.procs, c.loops); got != c.want {
			t.Errorf("procsFor(%q, %d, %d) = %d, want %d", c.env, c.procs, c.loops, got, c.want)
		}
	}
}

// gomaxprocs returns the GOMAXPROCS a running broker reports in /metrics.
func gomaxprocs(t *testing.T, b *broker) int {
	t.Helper()
	resp, err := http.Get("http://" + b.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	m := regexp.MustCompile(`(?m)^go_gomaxprocs (\d+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no go_gomaxprocs:\n%s", body)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// The broker runs with a processor for each event loop and one for the
// accepting loop, or the runtime's own number when that is more, unless
// GOMAXPROCS says otherwise.
func TestBrokerGOMAXPROCS(t *testing.T) {
	loops := defaultProcs + 1 // more loops than the runtime's processors
	want := loops + 1
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		want, _ = strconv.Atoi(env) // inherited by the broker, which keeps it
	}
	flag := "--event-loops=" + strconv.Itoa(loops)
	if got := gomaxprocs(t, startGannet(t, flag)); got != want {
		t.Errorf("GOMAXPROCS %d with %d event loops, want %d", got, loops, want)
	}

	t.Setenv("GOMAXPROCS", "3")
	if got := gomaxprocs(t, startGannet(t, flag)); got != 3 {
		t.Errorf("GOMAXPROCS %d with GOMAXPROCS=3 in the environment, want 3", got)
	}
}
