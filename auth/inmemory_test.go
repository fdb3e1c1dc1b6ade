package auth

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// memoryStub is a stubSource that answers from memory (inMemory), as a
// password file does.
type memoryStub struct{ *stubSource }

func (memoryStub) answersFromMemory() {}

// onWorker reports whether the calling goroutine is one of a chain's
// workers.
func onWorker() bool {
	buf := make([]byte, 64<<10)
	buf = buf[:runtime.Stack(buf, false)]
	return bytes.Contains(buf, []byte("auth.(*Chain).work("))
}

// A source that answers from memory is asked on the worker that runs the
// decision; a backend is asked on a goroutine of its own, so that a
// worker never waits for the network.
func TestChainAsksMemorySourcesOnTheWorker(t *testing.T) {
	where := make(chan bool, 2)
	record := func(context.Context, *Request) (Answer, error) {
		where <- onWorker()
		return Answer{Verdict: Ignore}, nil
	}
	mem := memoryStub{&stubSource{name: "memory", answer: record}}
	remote := &stubSource{name: "remote", answer: record}
	c := newTestChain(t, ChainConfig{Sources: []Source{mem, remote}, AllowAnonymous: true, CacheTTL: time.Minute},
		chainOptions{workers: 1})
	if res := checkChain(t, c, chainUser("alice", "pw")); res.Outcome != NotAuthorized {
		t.Fatalf("got %v, want NotAuthorized (both sources ignore the client)", res.Outcome)
	}
	if !<-where {
		t.Error("the source that answers from memory was asked off the worker")
	}
	if <-where {
		t.Error("the backend was asked on the worker")
	}
}

func TestInMemorySources(t *testing.T) {
	for _, src := range []any{&PasswordFile{}, &ACLFile{}, &CertSource{}, &JWTSource{}, memoryStub{}} {
		if !inMemory(src) {
			t.Errorf("%T is not taken to answer from memory", src)
		}
	}
	for _, src := range []any{&HTTPSource{}, &RedisSource{}, &PostgresSource{}, &stubSource{}, &stubACL{}} {
		if inMemory(src) {
			t.Errorf("%T is taken to answer from memory", src)
		}
	}
}

// writeTestPasswd writes a password file holding alice with password pw
// ($7$, as mosquitto_passwd writes it).
func writeTestPasswd(t *testing.T, pw string) string {
	t.Helper()
	h, err := HashPassword(HashSHA512PBKDF2, []byte(pw), 0)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte("alice:"+h+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A password file's answers are checked on the worker and kept: the same
// client again is answered from the cache without hashing, the counters
// say so, and a Reload that changes the password forgets the old answer.
func TestChainPasswordFileCached(t *testing.T) {
	path := writeTestPasswd(t, "old")
	pf, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	c := newTestChain(t, ChainConfig{Sources: []Source{pf}, CacheTTL: time.Hour, Metrics: set}, chainOptions{clock: &stepClock{}})
	series := func(name string) float64 {
		return seriesValue(set, name+`{source="password-file"}`)
	}
	for i := range 3 {
		if res := checkChain(t, c, chainUser("alice", "old")); res.Outcome != Allowed {
			t.Fatalf("check %d: got %v, want Allowed", i, res.Outcome)
		}
	}
	if l, h, m := series("gannet_auth_lookups_total"), series("gannet_auth_cache_hits_total"), series("gannet_auth_cache_misses_total"); l != 3 || h != 2 || m != 1 {
		t.Errorf("lookups %v, hits %v, misses %v; want 3, 2, 1", l, h, m)
	}
	if v := seriesValue(set, `gannet_auth_results_total{source="password-file",result="allow"}`); v != 3 {
		t.Errorf("%v allow results, want 3", v)
	}

	h, err := HashPassword(HashSHA512PBKDF2, []byte("new"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("alice:"+h+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if res := checkChain(t, c, chainUser("alice", "old")); res.Outcome != NotAuthorized {
		t.Errorf("old password after Reload: got %v, want NotAuthorized", res.Outcome)
	}
	if res := checkChain(t, c, chainUser("alice", "new")); res.Outcome != Allowed {
		t.Errorf("new password after Reload: got %v, want Allowed", res.Outcome)
	}
}

// An answer from memory that was being made when the cache was purged
// (a Reload) is not kept: it may come from what the Reload replaced.
func TestChainMemoryAnswerAcrossPurge(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	src := memoryStub{&stubSource{name: "memory", answer: func(context.Context, *Request) (Answer, error) {
		entered <- struct{}{}
		<-release
		return Answer{Verdict: Allow}, nil
	}}}
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, CacheTTL: time.Hour}, chainOptions{clock: &stepClock{}})
	got := make(chan Result, 1)
	c.Check(chainUser("alice", "pw"), func(r Result) { got <- r })
	<-entered
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	close(release)
	if res := <-got; res.Outcome != Allowed {
		t.Fatalf("got %v, want Allowed", res.Outcome)
	}
	if n := c.cache.len(); n != 0 {
		t.Errorf("%d answers kept, want none: the answer began before the purge", n)
	}
	if res := checkChain(t, c, chainUser("alice", "pw")); res.Outcome != Allowed {
		t.Fatalf("got %v, want Allowed", res.Outcome)
	}
	if n := src.calls.Load(); n != 2 {
		t.Errorf("source asked %d times, want 2", n)
	}
	if n := c.cache.len(); n != 1 {
		t.Errorf("%d answers kept, want the one from after the purge", n)
	}
}

// A source that answers from memory and fails makes the client
// Unavailable, like a backend that fails; its error is neither kept nor
// shown with the password in it.
func TestChainMemorySourceFails(t *testing.T) {
	src := memoryStub{&stubSource{name: "memory", answer: func(_ context.Context, r *Request) (Answer, error) {
		return Answer{}, errors.New("cannot check " + string(r.Password))
	}}}
	set := metrics.NewSet()
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, CacheTTL: time.Hour, Metrics: set}, chainOptions{clock: &stepClock{}})
	for range 2 {
		res := checkChain(t, c, chainUser("alice", "hunter2"))
		if res.Outcome != Unavailable || res.Source != "memory" || !errors.Is(res.Err, ErrUnavailable) {
			t.Fatalf("got %v from %q (%v), want Unavailable from memory", res.Outcome, res.Source, res.Err)
		}
		if strings.Contains(res.Err.Error(), "hunter2") {
			t.Errorf("error %q shows the password", res.Err)
		}
	}
	if n := src.calls.Load(); n != 2 {
		t.Errorf("source asked %d times, want 2: errors are not kept", n)
	}
	if v := seriesValue(set, `gannet_auth_results_total{source="memory",result="error"}`); v != 2 {
		t.Errorf("%v error results, want 2", v)
	}
}
