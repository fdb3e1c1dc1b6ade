package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSeqTrack(t *testing.T) {
	var tr seqTrack
	for _, s := range []uint64{0, 1, 2, 64, 1000, 2} {
		tr.add(s)
	}
	if tr.unique != 5 || tr.dups != 1 {
		t.Fatalf("unique %d dups %d, want 5 and 1", tr.unique, tr.dups)
	}
	sh := &sharedTrack{t: map[uint32]*seqTrack{}}
	if !sh.add(1, 5) || !sh.add(2, 5) || sh.add(1, 5) {
		t.Fatal("shared tracking per publisher")
	}
}

func TestFailed(t *testing.T) {
	cases := []struct {
		r    Result
		fail bool
	}{
		{Result{QoS: 0, Lost: 10, LossAllowed: true}, false},
		{Result{QoS: 1, Lost: 1}, true},
		{Result{QoS: 1, Duplicates: 3}, false}, // at least once
		{Result{QoS: 2, Duplicates: 1}, true},  // exactly once
		{Result{QoS: 2}, false},
	}
	for _, c := range cases {
		if c.r.Failed() != c.fail {
			t.Errorf("%+v: Failed %v", c.r, !c.fail)
		}
	}
}

func TestSampleProc(t *testing.T) {
	s, err := SampleProc(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if s.RSS <= 0 || s.Peak < s.RSS {
		t.Fatalf("RSS %d peak %d", s.RSS, s.Peak)
	}
	// Spin until the process's CPU time moves on: on a loaded machine
	// this goroutine may wait for a CPU longer than any fixed busy spell.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s2, _ := SampleProc(os.Getpid())
		if s2.CPU > s.CPU {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU did not advance in 10s of spinning: %v then %v", s.CPU, s2.CPU)
		}
		for spin := time.Now().Add(20 * time.Millisecond); time.Now().Before(spin); {
		}
	}
}

func TestHeader(t *testing.T) {
	b := make([]byte, headerSize)
	putHeader(b, 7, 1<<20, 12345)
	c := &client{tracks: map[uint32]*seqTrack{}, run: &runner{}}
	c.receive(b)
	if tr := c.tracks[7]; tr == nil || tr.unique != 1 {
		t.Fatal("payload header not parsed")
	}
	// A sequence number no publisher sent is not tracked.
	putHeader(b, 7, 1<<50, 12345)
	c.receive(b)
	if c.run.dups.Load() != 1 {
		t.Fatal("bogus sequence number not refused")
	}
	if c.run.received.Load() != 1 {
		t.Fatal("not counted")
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r Result) {
		b, _ := json.Marshal(r)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("gannet-p2p-q1-64.json", Result{BrokerUsPer: 2, RecvRate: 1000})
	write("mosquitto-p2p-q1-64.json", Result{BrokerUsPer: 8, RecvRate: 250})
	write("gannet-clients-10.json", Result{RecvRate: 100})
	write("gannet-clients-100.json", Result{RecvRate: 900})
	write("gannet-conn.json", Result{Clients: 2000, RSSPerConn: 1500, RSSCurve: []RSSPoint{{1000, 10 << 20}, {2000, 12 << 20}}})
	write("gannet-conn-persist.json", Result{Clients: 2000, RSSPerConn: 1400, RSSPerOffline: 2800})
	// A run that failed before printing leaves an empty file.
	if err := os.WriteFile(filepath.Join(dir, "mochi-p2p-q1-64.json"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rs, err := LoadResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rs.Table(&out, []string{"p2p-q1-64"})
	if !strings.Contains(out.String(), "| p2p-q1-64 | 2.00 | 8.00 | 0.25 |") {
		t.Fatalf("table:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "| conn | gannet | 2000 | 1500 | - |") ||
		!strings.Contains(out.String(), "| conn-persist | gannet | 2000 | 1400 | 2800 |") {
		t.Fatalf("connections table:\n%s", out.String())
	}
	if err := rs.Plot(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"throughput.png", "memory.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}

	// bench/latency.sh's runs: a broker name per setting, a key per
	// scenario and rate; a curve per scenario that has runs.
	dir = t.TempDir()
	write("gannet1ms-fanin-load-2500.json", Result{P99: 2 * time.Millisecond})
	write("gannet1ms-fanin-load-10000.json", Result{P99: time.Millisecond})
	write("mosquitto-fanin-load-2500.json", Result{P99: 500 * time.Microsecond})
	if rs, err = LoadResults(dir); err != nil {
		t.Fatal(err)
	}
	if err := rs.Plot(dir); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "latency-fanin.png")); err != nil || st.Size() == 0 {
		t.Fatalf("latency-fanin.png: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "latency-p2p.png")); !os.IsNotExist(err) {
		t.Fatalf("latency-p2p.png drawn without p2p runs: %v", err)
	}
}
