package auth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// stubSource is a Source whose answers come from a test's function.
type stubSource struct {
	name   string
	calls  atomic.Int64
	answer func(ctx context.Context, r *Request) (Answer, error)
}

func (f *stubSource) Name() string { return f.name }

func (f *stubSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	f.calls.Add(1)
	return f.answer(ctx, r)
}

func verdictSource(name string, v Verdict) *stubSource {
	return &stubSource{name: name, answer: func(context.Context, *Request) (Answer, error) {
		return Answer{Verdict: v}, nil
	}}
}

func errorSource(name string, err error) *stubSource {
	return &stubSource{name: name, answer: func(context.Context, *Request) (Answer, error) {
		return Answer{}, err
	}}
}

// stubACL is an ACLSource whose rules come from a test's function.
type stubACL struct {
	name  string
	calls atomic.Int64
	rules func(ctx context.Context, r *Request, username string) ([]Rule, error)
	mu    sync.Mutex
	users []string // usernames asked about
}

func (f *stubACL) Name() string { return f.name }

func (f *stubACL) Rules(ctx context.Context, r *Request, username string) ([]Rule, error) {
	f.calls.Add(1)
	f.mu.Lock()
	f.users = append(f.users, username)
	f.mu.Unlock()
	return f.rules(ctx, r, username)
}

func (f *stubACL) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.users...)
}

func staticACL(name string, rules ...Rule) *stubACL {
	return &stubACL{name: name, rules: func(context.Context, *Request, string) ([]Rule, error) {
		return rules, nil
	}}
}

// stubReloader is a Source and an ACLSource that is also a Reloader.
type stubReloader struct {
	*stubSource
	reloads atomic.Int64
	err     error
}

func (s *stubReloader) Reload() error {
	s.reloads.Add(1)
	return s.err
}

func (s *stubReloader) Rules(context.Context, *Request, string) ([]Rule, error) {
	return []Rule{{Filter: "r/#", Access: ReadWrite}}, nil
}

// stepClock is a chainClock that moves only when a test advances it.
type stepClock struct{ t atomic.Int64 }

func (c *stepClock) now() time.Duration      { return time.Duration(c.t.Load()) }
func (c *stepClock) advance(d time.Duration) { c.t.Add(int64(d)) }

// logSink collects log output from several goroutines.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines counts the lines that contain s.
func (l *logSink) lines(s string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

func (l *logSink) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func newTestChain(t testing.TB, cfg ChainConfig, opt chainOptions) *Chain {
	t.Helper()
	c, err := newChain(cfg, opt)
	if err != nil {
		t.Fatalf("newChain: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func chainUser(name, password string) *Request {
	return &Request{
		ClientID:    "client-" + name,
		Username:    name,
		Password:    []byte(password),
		HasUsername: true,
		HasPassword: true,
		Remote:      "192.0.2.1:50000",
		Protocol:    4,
		Listener:    "mqtt",
	}
}

func anonRequest() *Request {
	return &Request{ClientID: "anon", Remote: "192.0.2.1:50001", Protocol: 5, Listener: "mqtt"}
}

// decideTimeout bounds a test's wait for something that must happen; it is a
// failure timeout, not synchronisation.
const decideTimeout = 10 * time.Second

// checkResult runs Check and waits for its done.
func checkChain(t *testing.T, c *Chain, r *Request) Result {
	t.Helper()
	ch := make(chan Result, 1)
	c.Check(r, func(res Result) { ch <- res })
	select {
	case res := <-ch:
		return res
	case <-time.After(decideTimeout):
		t.Fatal("Check did not call done")
		return Result{}
	}
}

func authSync(c *Chain, r *Request) Result {
	return c.Authenticate(context.Background(), r)
}

// seriesValue returns the value of the series named (with its labels)
// name in set, or -1 when there is none.
func seriesValue(set *metrics.Set, name string) float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

func TestChainNoSources(t *testing.T) {
	c := newTestChain(t, ChainConfig{}, chainOptions{})
	if c.Enabled() {
		t.Error("Enabled() = true with no sources")
	}
	for _, r := range []*Request{anonRequest(), chainUser("alice", "pw")} {
		for _, res := range []Result{authSync(c, r), checkChain(t, c, r)} {
			if res.Outcome != Allowed || res.Matcher != nil || res.Source != "" {
				t.Errorf("%q: got %+v, want Allowed with no matcher", r.Username, res)
			}
		}
	}
}

func TestChainFirstDecides(t *testing.T) {
	tests := []struct {
		name    string
		verdict []Verdict
		want    Outcome
		source  string
		asked   []int64 // calls per source
	}{
		{"allow", []Verdict{Allow, Deny}, Allowed, "s0", []int64{1, 0}},
		{"deny", []Verdict{Deny, Allow}, NotAuthorized, "s0", []int64{1, 0}},
		{"ignore then allow", []Verdict{Ignore, Allow, Deny}, Allowed, "s1", []int64{1, 1, 0}},
		{"ignore then deny", []Verdict{Ignore, Deny, Allow}, NotAuthorized, "s1", []int64{1, 1, 0}},
		{"all ignore", []Verdict{Ignore, Ignore}, NotAuthorized, "", []int64{1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg ChainConfig
			var srcs []*stubSource
			for i, v := range tt.verdict {
				s := verdictSource(fmt.Sprintf("s%d", i), v)
				srcs = append(srcs, s)
				cfg.Sources = append(cfg.Sources, s)
			}
			c := newTestChain(t, cfg, chainOptions{})
			if !c.Enabled() {
				t.Error("Enabled() = false with sources")
			}
			res := checkChain(t, c, chainUser("alice", "pw"))
			if res.Outcome != tt.want || res.Source != tt.source || res.Username != "alice" {
				t.Errorf("got %v from %q as %q, want %v from %q as alice", res.Outcome, res.Source, res.Username, tt.want, tt.source)
			}
			if res.Matcher != nil {
				t.Error("Matcher is not nil without ACL sources or rules")
			}
			for i, s := range srcs {
				if got := s.calls.Load(); got != tt.asked[i] {
					t.Errorf("source %d asked %d times, want %d", i, got, tt.asked[i])
				}
			}
		})
	}
}

func TestChainAnonymous(t *testing.T) {
	tests := []struct {
		name      string
		allowAnon bool
		r         *Request
		verdict   Verdict
		want      Outcome
	}{
		{"refused", false, anonRequest(), Ignore, NotAuthorized},
		{"allowed", true, anonRequest(), Ignore, Allowed},
		{"allowed but denied by a source", true, anonRequest(), Deny, NotAuthorized},
		{"named client not anonymous", true, chainUser("alice", "pw"), Ignore, NotAuthorized},
		{"username without password not anonymous", true, &Request{Username: "bob", HasUsername: true}, Ignore, NotAuthorized},
		{"password without username not anonymous", true, &Request{Password: []byte("x"), HasPassword: true}, Ignore, NotAuthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			acl := staticACL("acl", Rule{Filter: "public/#", Access: Read})
			c := newTestChain(t, ChainConfig{
				Sources:        []Source{verdictSource("s", tt.verdict)},
				ACLs:           []ACLSource{acl},
				AllowAnonymous: tt.allowAnon,
			}, chainOptions{})
			res := checkChain(t, c, tt.r)
			if res.Outcome != tt.want {
				t.Fatalf("got %v, want %v", res.Outcome, tt.want)
			}
			if tt.want != Allowed {
				if res.Matcher != nil || acl.calls.Load() != 0 {
					t.Error("a refused client got an ACL")
				}
				return
			}
			if res.Source != "" {
				t.Errorf("Source = %q, want empty: no source decided", res.Source)
			}
			if got := acl.asked(); len(got) != 1 || got[0] != "" {
				t.Errorf("ACL asked about %q, want the anonymous user", got)
			}
			if res.Matcher == nil || !res.Matcher.CanRead([]byte("public/x")) || res.Matcher.CanRead([]byte("private/x")) {
				t.Error("anonymous client did not get the ACL's anonymous rules")
			}
		})
	}
}

func TestChainErrorIsUnavailable(t *testing.T) {
	backendErr := errors.New("dial tcp 192.0.2.9:6379: connection refused")
	later := verdictSource("later", Allow)
	c := newTestChain(t, ChainConfig{
		Sources: []Source{verdictSource("first", Ignore), errorSource("redis", backendErr), later},
	}, chainOptions{})
	for _, res := range []Result{authSync(c, chainUser("alice", "pw")), checkChain(t, c, chainUser("alice", "pw"))} {
		if res.Outcome != Unavailable || res.Source != "redis" {
			t.Errorf("got %v from %q, want Unavailable from redis", res.Outcome, res.Source)
		}
		if !errors.Is(res.Err, ErrUnavailable) || !errors.Is(res.Err, backendErr) {
			t.Errorf("Err = %v, want it to wrap ErrUnavailable and the backend's error", res.Err)
		}
		if !strings.Contains(res.Err.Error(), `"redis"`) {
			t.Errorf("Err %q does not name the source", res.Err)
		}
	}
	if n := later.calls.Load(); n != 0 {
		t.Errorf("a source after the failed one was asked %d times", n)
	}
}

func TestChainErrorAfterDecision(t *testing.T) {
	failing := errorSource("down", errors.New("down"))
	c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("file", Deny), failing}}, chainOptions{})
	if res := checkChain(t, c, chainUser("alice", "pw")); res.Outcome != NotAuthorized || res.Source != "file" {
		t.Errorf("got %v from %q, want NotAuthorized from file", res.Outcome, res.Source)
	}
	if failing.calls.Load() != 0 {
		t.Error("a source after the deciding one was asked")
	}
}

func TestChainUnknownVerdict(t *testing.T) {
	c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("odd", Verdict(9))}}, chainOptions{})
	res := checkChain(t, c, chainUser("alice", "pw"))
	if res.Outcome != Unavailable || !strings.Contains(res.Err.Error(), "unknown verdict 9") {
		t.Errorf("got %v (%v), want Unavailable for an unknown verdict", res.Outcome, res.Err)
	}
}

func TestChainTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	sources := map[string]*stubSource{
		"honours deadline": {name: "slow", answer: func(ctx context.Context, _ *Request) (Answer, error) {
			<-ctx.Done()
			return Answer{}, ctx.Err()
		}},
		"ignores deadline": {name: "stuck", answer: func(context.Context, *Request) (Answer, error) {
			<-stuck
			return Answer{Verdict: Allow}, nil
		}},
	}
	for name, src := range sources {
		t.Run(name, func(t *testing.T) {
			set := metrics.NewSet()
			c := newTestChain(t, ChainConfig{Sources: []Source{src}, Timeout: timeout, Metrics: set}, chainOptions{})
			start := time.Now()
			res := checkChain(t, c, chainUser("alice", "pw"))
			elapsed := time.Since(start)
			if res.Outcome != Unavailable || !timedOut(res.Err) {
				t.Errorf("got %v (%v), want Unavailable by timeout", res.Outcome, res.Err)
			}
			if elapsed < timeout || elapsed > timeout+2*time.Second {
				t.Errorf("answered after %v, want about %v", elapsed, timeout)
			}
			if v := seriesValue(set, `gannet_auth_results_total{source="`+src.name+`",result="timeout"}`); v != 1 {
				t.Errorf("timeout results = %v, want 1", v)
			}
		})
	}
}

func TestChainBreaker(t *testing.T) {
	var logs logSink
	clk := &stepClock{}
	set := metrics.NewSet()
	var failing atomic.Bool
	failing.Store(true)
	src := &stubSource{name: "pg", answer: func(context.Context, *Request) (Answer, error) {
		if failing.Load() {
			return Answer{}, errors.New("connection refused")
		}
		return Answer{Verdict: Allow}, nil
	}}
	c := newTestChain(t, ChainConfig{
		Sources:         []Source{src},
		BreakerFailures: 3,
		BreakerCooldown: 10 * time.Second,
		Metrics:         set,
		Logger:          logs.logger(),
	}, chainOptions{clock: clk})
	up := `gannet_auth_backend_up{source="pg"}`
	ask := func(wantCalls int64, want Outcome) Result {
		t.Helper()
		res := checkChain(t, c, chainUser("alice", "pw"))
		if res.Outcome != want {
			t.Fatalf("got %v (%v), want %v", res.Outcome, res.Err, want)
		}
		if got := src.calls.Load(); got != wantCalls {
			t.Fatalf("source called %d times, want %d", got, wantCalls)
		}
		return res
	}

	ask(1, Unavailable)
	ask(2, Unavailable)
	if logs.lines("source down") != 0 || seriesValue(set, up) != 1 {
		t.Fatal("source down before BreakerFailures errors")
	}
	ask(3, Unavailable)
	if n := logs.lines("source down"); n != 1 {
		t.Fatalf("%d 'source down' lines, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "source=pg") || !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("down line does not name the source and the error:\n%s", logs.String())
	}
	if seriesValue(set, up) != 0 {
		t.Error("backend_up is not 0 while the source is down")
	}

	// Open: questions fail at once without reaching the source.
	for range 5 {
		if res := ask(3, Unavailable); !errors.Is(res.Err, errBreakerOpen) {
			t.Fatalf("Err = %v, want the breaker's", res.Err)
		}
	}
	clk.advance(9 * time.Second)
	ask(3, Unavailable)

	// Half-open: one trial, which fails: open again, no new line.
	clk.advance(time.Second)
	ask(4, Unavailable)
	ask(4, Unavailable)
	if n := logs.lines("source down"); n != 1 {
		t.Fatalf("%d 'source down' lines after a failed trial, want 1", n)
	}

	// The next trial succeeds: closed.
	failing.Store(false)
	clk.advance(10 * time.Second)
	ask(5, Allowed)
	if n := logs.lines("source up"); n != 1 {
		t.Fatalf("%d 'source up' lines, want 1:\n%s", n, logs.String())
	}
	if seriesValue(set, up) != 1 {
		t.Error("backend_up is not 1 after the source came back")
	}
	ask(6, Allowed)
	ask(7, Allowed)
	if logs.lines("source down") != 1 || logs.lines("source up") != 1 {
		t.Errorf("more lines than state changes:\n%s", logs.String())
	}
}

func TestChainBreakerOneTrial(t *testing.T) {
	clk := &stepClock{}
	var failing atomic.Bool
	failing.Store(true)
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	src := &stubSource{name: "http", answer: func(context.Context, *Request) (Answer, error) {
		if failing.Load() {
			return Answer{}, errors.New("503")
		}
		entered <- struct{}{}
		<-release
		return Answer{Verdict: Allow}, nil
	}}
	c := newTestChain(t, ChainConfig{
		Sources:         []Source{src},
		BreakerFailures: 1,
		BreakerCooldown: time.Second,
	}, chainOptions{clock: clk})
	if res := authSync(c, chainUser("a", "pw")); res.Outcome != Unavailable {
		t.Fatalf("got %v, want Unavailable", res.Outcome)
	}
	failing.Store(false)
	clk.advance(time.Second)

	trial := make(chan Result, 1)
	c.Check(chainUser("b", "pw"), func(res Result) { trial <- res })
	<-entered
	// While the trial call is under way, other questions fail at once.
	for _, name := range []string{"c", "d"} {
		if res := checkChain(t, c, chainUser(name, "pw")); res.Outcome != Unavailable || !errors.Is(res.Err, errBreakerOpen) {
			t.Fatalf("during the trial: got %v (%v), want Unavailable by the breaker", res.Outcome, res.Err)
		}
	}
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("source called %d times, want 2 (one failure, one trial)", n)
	}
	close(release)
	if res := <-trial; res.Outcome != Allowed {
		t.Fatalf("trial: got %v, want Allowed", res.Outcome)
	}
	if res := checkChain(t, c, chainUser("e", "pw")); res.Outcome != Allowed {
		t.Fatalf("after the trial: got %v, want Allowed", res.Outcome)
	}
}

func TestChainBreakerDisabled(t *testing.T) {
	src := errorSource("x", errors.New("boom"))
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, BreakerFailures: -1}, chainOptions{})
	for i := range 20 {
		authSync(c, chainUser("a", "pw"))
		if got := src.calls.Load(); got != int64(i+1) {
			t.Fatalf("call %d: source called %d times: breaker opened", i+1, got)
		}
	}
}

func TestChainErrorRedactsPassword(t *testing.T) {
	const secret = "tok-very-secret-123"
	var logs logSink
	src := &stubSource{name: "jwt", answer: func(_ context.Context, r *Request) (Answer, error) {
		return Answer{}, fmt.Errorf("backend refused %s", r.Password)
	}}
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, BreakerFailures: 1, Logger: logs.logger()}, chainOptions{})
	res := checkChain(t, c, chainUser("alice", secret))
	if res.Outcome != Unavailable {
		t.Fatalf("got %v, want Unavailable", res.Outcome)
	}
	if msg := res.Err.Error(); strings.Contains(msg, secret) || !strings.Contains(msg, "[redacted]") {
		t.Errorf("Err %q shows the password", msg)
	}
	if strings.Contains(logs.String(), secret) || logs.lines("source down") != 1 {
		t.Errorf("log shows the password, or lacks the down line:\n%s", logs.String())
	}
}

func TestChainCache(t *testing.T) {
	clk := &stepClock{}
	set := metrics.NewSet()
	ignoring := verdictSource("ignoring", Ignore)
	allowing := verdictSource("allowing", Allow)
	c := newTestChain(t, ChainConfig{
		Sources:  []Source{ignoring, allowing},
		CacheTTL: time.Minute,
		Metrics:  set,
	}, chainOptions{clock: clk})
	calls := func() [2]int64 { return [2]int64{ignoring.calls.Load(), allowing.calls.Load()} }

	for range 3 {
		if res := checkChain(t, c, chainUser("alice", "pw")); res.Outcome != Allowed {
			t.Fatalf("got %v, want Allowed", res.Outcome)
		}
	}
	if got := calls(); got != [2]int64{1, 1} {
		t.Fatalf("calls = %v, want one each: ignore and allow answers are cached", got)
	}
	if h, m := seriesValue(set, `gannet_auth_cache_hits_total{source="allowing"}`), seriesValue(set, `gannet_auth_cache_misses_total{source="allowing"}`); h != 2 || m != 1 {
		t.Errorf("allowing: hits %v misses %v, want 2 and 1", h, m)
	}
	if v := seriesValue(set, `gannet_auth_lookups_total{source="ignoring"}`); v != 3 {
		t.Errorf("lookups = %v, want 3", v)
	}
	if v := seriesValue(set, `gannet_auth_results_total{source="ignoring",result="ignore"}`); v != 3 {
		t.Errorf("ignore results = %v, want 3", v)
	}

	// What the sources are shown is part of the key.
	changes := map[string]func(r *Request){
		"password":    func(r *Request) { r.Password = []byte("other") },
		"client id":   func(r *Request) { r.ClientID = "other" },
		"username":    func(r *Request) { r.Username = "alicia" },
		"no password": func(r *Request) { r.Password, r.HasPassword = nil, false },
		"certificate": func(r *Request) { r.CertCN = "alice.example" },
		"cert SAN":    func(r *Request) { r.CertSANs = []string{"alice.example"} },
		"remote IP":   func(r *Request) { r.Remote = "192.0.2.7:50000" },
		"listener":    func(r *Request) { r.Listener = "tls" },
		"protocol":    func(r *Request) { r.Protocol = 5 },
		"empty name":  func(r *Request) { r.Username, r.HasUsername = "", true },
		"anonymous":   func(r *Request) { *r = *anonRequest() },
	}
	before := calls()[1]
	for name, change := range changes {
		r := chainUser("alice", "pw")
		change(r)
		checkChain(t, c, r)
		now := calls()[1]
		if now != before+1 {
			t.Errorf("%s: source called %d times, want a new call", name, now-before)
		}
		before = now
	}
	r := chainUser("alice", "pw")
	r.Remote = "192.0.2.1:61000"
	checkChain(t, c, r)
	if calls()[1] != before {
		t.Error("another remote port made a new call")
	}

	// TTL: still cached just before it, asked again after.
	clk.advance(time.Minute - time.Nanosecond)
	checkChain(t, c, chainUser("alice", "pw"))
	if got := calls(); got[1] != before {
		t.Fatalf("answer expired before the TTL")
	}
	clk.advance(time.Nanosecond)
	checkChain(t, c, chainUser("alice", "pw"))
	if got := calls(); got[1] != before+1 || got[0] < 2 {
		t.Fatalf("calls = %v: answers not asked again after the TTL", got)
	}
}

func TestChainCacheDenyAndErrors(t *testing.T) {
	var step atomic.Int64
	src := &stubSource{name: "redis", answer: func(context.Context, *Request) (Answer, error) {
		switch step.Add(1) {
		case 1:
			return Answer{}, errors.New("timeout")
		case 2:
			return Answer{Verdict: Deny}, nil
		default:
			return Answer{Verdict: Allow}, nil
		}
	}}
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, CacheTTL: time.Hour}, chainOptions{clock: &stepClock{}})
	want := []struct {
		outcome Outcome
		calls   int64
	}{
		{Unavailable, 1},   // error: not cached
		{NotAuthorized, 2}, // asked again: deny, cached
		{NotAuthorized, 2},
		{NotAuthorized, 2},
	}
	for i, w := range want {
		res := checkChain(t, c, chainUser("alice", "pw"))
		if res.Outcome != w.outcome || src.calls.Load() != w.calls {
			t.Fatalf("question %d: got %v after %d calls, want %v after %d", i+1, res.Outcome, src.calls.Load(), w.outcome, w.calls)
		}
	}
}

func TestChainCacheOff(t *testing.T) {
	src := verdictSource("s", Allow)
	c := newTestChain(t, ChainConfig{Sources: []Source{src}}, chainOptions{})
	for i := range 3 {
		authSync(c, chainUser("alice", "pw"))
		if got := src.calls.Load(); got != int64(i+1) {
			t.Fatalf("with caching off the source was called %d times for %d questions", got, i+1)
		}
	}
}

func TestChainMergesIdenticalQuestions(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run(fmt.Sprintf("ttl=%v", ttl), func(t *testing.T) {
			const n = 100
			all := make(chan struct{})
			src := &stubSource{name: "pg", answer: func(context.Context, *Request) (Answer, error) {
				<-all
				return Answer{Verdict: Allow}, nil
			}}
			set := metrics.NewSet()
			c := newTestChain(t, ChainConfig{Sources: []Source{src}, CacheTTL: ttl, Metrics: set}, chainOptions{})
			var joined atomic.Int64
			c.cache.onJoin = func() {
				if joined.Add(1) == n {
					close(all)
				}
			}
			results := make(chan Result, n)
			for range n {
				c.Check(chainUser("alice", "pw"), func(res Result) { results <- res })
			}
			for i := range n {
				select {
				case res := <-results:
					if res.Outcome != Allowed {
						t.Fatalf("result %d: %v", i, res.Outcome)
					}
				case <-time.After(decideTimeout):
					t.Fatalf("%d of %d results", i, n)
				}
			}
			if got := src.calls.Load(); got != 1 {
				t.Errorf("source called %d times for %d identical questions, want 1", got, n)
			}
			if v := seriesValue(set, `gannet_auth_results_total{source="pg",result="allow"}`); v != n {
				t.Errorf("allow results = %v, want %d: every merged lookup counts", v, n)
			}
		})
	}
}

func TestChainWaiterGivesUp(t *testing.T) {
	release := make(chan struct{})
	src := &stubSource{name: "http", answer: func(context.Context, *Request) (Answer, error) {
		<-release
		return Answer{Verdict: Allow}, nil
	}}
	c := newTestChain(t, ChainConfig{Sources: []Source{src}}, chainOptions{})
	both := make(chan struct{})
	var joined atomic.Int64
	c.cache.onJoin = func() {
		if joined.Add(1) == 2 {
			close(both)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan Result, 1)
	go func() { first <- c.Authenticate(ctx, chainUser("alice", "pw")) }()
	second := make(chan Result, 1)
	c.Check(chainUser("alice", "pw"), func(res Result) { second <- res })
	<-both
	cancel()
	res := <-first
	if res.Outcome != Unavailable || !errors.Is(res.Err, context.Canceled) || !errors.Is(res.Err, ErrUnavailable) {
		t.Errorf("cancelled waiter: got %v (%v), want Unavailable by its context", res.Outcome, res.Err)
	}
	close(release)
	if res := <-second; res.Outcome != Allowed {
		t.Errorf("other waiter: got %v, want Allowed: the call must go on", res.Outcome)
	}
	if got := src.calls.Load(); got != 1 {
		t.Errorf("source called %d times, want 1", got)
	}
}

func TestChainMaxInflight(t *testing.T) {
	const limit, n = 3, 10
	var cur, peak atomic.Int64
	in := make(chan struct{}, n)
	release := make(chan struct{})
	src := &stubSource{name: "pg", answer: func(context.Context, *Request) (Answer, error) {
		c := cur.Add(1)
		for p := peak.Load(); c > p && !peak.CompareAndSwap(p, c); p = peak.Load() {
		}
		in <- struct{}{}
		<-release
		cur.Add(-1)
		return Answer{Verdict: Allow}, nil
	}}
	set := metrics.NewSet()
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, MaxInflight: limit, Timeout: time.Minute, Metrics: set}, chainOptions{})
	waiting := make(chan struct{})
	var waits atomic.Int64
	c.onWait = func() {
		if waits.Add(1) == n-limit {
			close(waiting)
		}
	}
	results := make(chan Result, n)
	for i := range n {
		c.Check(chainUser(fmt.Sprint("user", i), "pw"), func(res Result) { results <- res })
	}
	for range limit {
		<-in
	}
	<-waiting
	if got := cur.Load(); got != limit {
		t.Fatalf("%d calls under way, want %d", got, limit)
	}
	if v := seriesValue(set, `gannet_auth_inflight{source="pg"}`); v != limit {
		t.Errorf("inflight gauge = %v, want %d", v, limit)
	}
	close(release)
	for range n {
		if res := <-results; res.Outcome != Allowed {
			t.Errorf("got %v, want Allowed", res.Outcome)
		}
	}
	if p := peak.Load(); p != limit {
		t.Errorf("peak concurrent calls %d, want %d", p, limit)
	}
	if got := src.calls.Load(); got != n {
		t.Errorf("source called %d times, want %d", got, n)
	}
}

func TestChainMaxInflightWaitTimesOut(t *testing.T) {
	const timeout = 100 * time.Millisecond
	in := make(chan struct{}, 2)
	release := make(chan struct{})
	src := &stubSource{name: "pg", answer: func(context.Context, *Request) (Answer, error) {
		in <- struct{}{}
		<-release // holds the only call slot past the deadline
		return Answer{Verdict: Allow}, nil
	}}
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, MaxInflight: 1, Timeout: timeout}, chainOptions{})
	first := make(chan Result, 1)
	c.Check(chainUser("a", "pw"), func(res Result) { first <- res })
	<-in
	start := time.Now()
	res := checkChain(t, c, chainUser("b", "pw"))
	if elapsed := time.Since(start); res.Outcome != Unavailable || elapsed > timeout+2*time.Second {
		t.Errorf("got %v after %v, want Unavailable after about %v", res.Outcome, elapsed, timeout)
	}
	if !timedOut(res.Err) || !errors.Is(res.Err, ErrUnavailable) {
		t.Errorf("Err = %v, want a timeout", res.Err)
	}
	// The call itself says why.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.call(ctx, &c.sources[0], chainUser("c", "pw"), "")
	if err == nil || !strings.Contains(err.Error(), "no free call slot (1 under way)") || !timedOut(err) {
		t.Errorf("call error = %v, want a timed-out wait for a call slot", err)
	}
	close(release)
	<-first
	if got := src.calls.Load(); got != 1 {
		t.Errorf("source called %d times, want 1", got)
	}
}

func TestChainRulesFromAnswer(t *testing.T) {
	rules := []Rule{{Filter: "devices/d1/#", Access: ReadWrite}}
	src := &stubSource{name: "http", answer: func(context.Context, *Request) (Answer, error) {
		return Answer{Verdict: Allow, Username: "d1", Rules: rules, HasRules: true}, nil
	}}
	acl := staticACL("acl", Rule{Filter: "#", Access: ReadWrite})
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, ACLs: []ACLSource{acl}, CacheTTL: time.Minute}, chainOptions{})
	for range 2 { // computed, then cached
		res := checkChain(t, c, chainUser("token", "pw"))
		if res.Outcome != Allowed || !res.FromAnswer || res.Username != "d1" {
			t.Fatalf("got %+v, want Allowed as d1 with rules from the answer", res)
		}
		if res.Matcher != CompileShared(rules) {
			t.Error("Matcher is not the shared matcher of the answer's rules")
		}
		if !res.Matcher.CanPublish([]byte("devices/d1/x")) || res.Matcher.CanPublish([]byte("devices/d2/x")) {
			t.Error("Matcher does not apply the answer's rules")
		}
	}
	if acl.calls.Load() != 0 {
		t.Error("ACL source asked although the answer had rules")
	}
}

func TestChainRulesFromACLSources(t *testing.T) {
	r1 := []Rule{{Filter: "a/#", Access: Read}}
	r2 := []Rule{{Filter: "b/#", Access: Write}, {Filter: "b/secret", Access: Write, Deny: true}}
	t.Run("one", func(t *testing.T) {
		acl := staticACL("acl", r1...)
		c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}, ACLs: []ACLSource{acl}}, chainOptions{})
		res := checkChain(t, c, chainUser("alice", "pw"))
		if res.Outcome != Allowed || res.FromAnswer || res.Matcher != CompileShared(r1) {
			t.Errorf("got %+v, want the ACL source's shared matcher", res)
		}
	})
	t.Run("several", func(t *testing.T) {
		a1, a2 := staticACL("file", r1...), staticACL("redis", r2...)
		c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}, ACLs: []ACLSource{a1, a2}}, chainOptions{})
		res := checkChain(t, c, chainUser("alice", "pw"))
		if res.Outcome != Allowed || res.Matcher != CompileShared(append(append([]Rule{}, r1...), r2...)) {
			t.Errorf("got %+v, want the matcher of both sources' rules, in order", res)
		}
		if !res.Matcher.CanRead([]byte("a/1")) || !res.Matcher.CanPublish([]byte("b/1")) || res.Matcher.CanPublish([]byte("b/secret")) {
			t.Error("Matcher does not apply both sources' rules")
		}
	})
	t.Run("no rules", func(t *testing.T) {
		acl := staticACL("acl")
		c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}, ACLs: []ACLSource{acl}}, chainOptions{})
		res := checkChain(t, c, chainUser("alice", "pw"))
		if res.Matcher == nil || res.Matcher.CanPublish([]byte("x")) || res.Matcher.CanRead([]byte("x")) {
			t.Error("a client with no rules under an ACL source may do something")
		}
	})
	t.Run("error", func(t *testing.T) {
		failing := &stubACL{name: "redis", rules: func(context.Context, *Request, string) ([]Rule, error) {
			return nil, errors.New("READONLY")
		}}
		c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}, ACLs: []ACLSource{staticACL("file", r1...), failing}}, chainOptions{})
		res := checkChain(t, c, chainUser("alice", "pw"))
		if res.Outcome != Unavailable || res.Source != "redis" || res.Matcher != nil || !errors.Is(res.Err, ErrUnavailable) {
			t.Errorf("got %+v, want Unavailable from the ACL source", res)
		}
	})
	t.Run("effective username", func(t *testing.T) {
		acl := staticACL("acl", r1...)
		src := &stubSource{name: "cert", answer: func(context.Context, *Request) (Answer, error) {
			return Answer{Verdict: Allow, Username: "cn-alice"}, nil
		}}
		c := newTestChain(t, ChainConfig{Sources: []Source{src}, ACLs: []ACLSource{acl}}, chainOptions{})
		res := checkChain(t, c, anonRequest())
		if got := acl.asked(); res.Username != "cn-alice" || len(got) != 1 || got[0] != "cn-alice" {
			t.Errorf("Username %q, ACL asked about %q: want cn-alice for both", res.Username, got)
		}
	})
	t.Run("no ACL", func(t *testing.T) {
		c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}}, chainOptions{})
		if res := checkChain(t, c, chainUser("alice", "pw")); res.Outcome != Allowed || res.Matcher != nil {
			t.Errorf("got %+v, want Allowed with no matcher", res)
		}
	})
}

func TestChainSuperuser(t *testing.T) {
	src := &stubSource{name: "http", answer: func(context.Context, *Request) (Answer, error) {
		return Answer{Verdict: Allow, Superuser: true, Rules: []Rule{{Filter: "x", Access: Read}}, HasRules: true}, nil
	}}
	acl := staticACL("acl", Rule{Filter: "x", Access: Read})
	c := newTestChain(t, ChainConfig{Sources: []Source{src}, ACLs: []ACLSource{acl}}, chainOptions{})
	res := checkChain(t, c, chainUser("root", "pw"))
	if res.Outcome != Allowed || !res.Superuser || res.Matcher != nil {
		t.Errorf("got %+v, want an Allowed superuser with no matcher", res)
	}
	if acl.calls.Load() != 0 {
		t.Error("ACL source asked for a superuser")
	}
}

func TestChainRules(t *testing.T) {
	perUser := &stubACL{name: "pg", rules: func(_ context.Context, _ *Request, u string) ([]Rule, error) {
		if u == "broken" {
			return nil, errors.New("relation does not exist")
		}
		return []Rule{{Filter: "users/" + u + "/#", Access: ReadWrite}}, nil
	}}
	c := newTestChain(t, ChainConfig{ACLs: []ACLSource{perUser}}, chainOptions{})
	m, err := c.Rules(context.Background(), chainUser("x", "pw"), "bob")
	if err != nil || m != CompileShared([]Rule{{Filter: "users/bob/#", Access: ReadWrite}}) {
		t.Errorf("Rules = %v, %v; want bob's shared matcher", m, err)
	}
	if _, err := c.Rules(context.Background(), chainUser("x", "pw"), "broken"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Rules error = %v, want ErrUnavailable", err)
	}
	empty := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}}, chainOptions{})
	if m, err := empty.Rules(context.Background(), chainUser("x", "pw"), "bob"); m != nil || err != nil {
		t.Errorf("Rules with no ACL source = %v, %v; want nil, nil", m, err)
	}
}

func TestChainReload(t *testing.T) {
	errBad := errors.New("passwd:3: missing ':'")
	errBadACL := errors.New("acl:7: unknown keyword")
	good := &stubReloader{stubSource: verdictSource("good", Ignore)}
	bad := &stubReloader{stubSource: verdictSource("bad", Ignore), err: errBad}
	both := &stubReloader{stubSource: verdictSource("both", Allow), err: errBadACL}
	plain := verdictSource("plain", Allow)
	c := newTestChain(t, ChainConfig{
		Sources: []Source{good, bad, both, plain},
		ACLs:    []ACLSource{both},
		// Caching on: Reload must forget cached answers.
		CacheTTL: time.Hour,
	}, chainOptions{clock: &stepClock{}})
	authSync(c, chainUser("alice", "pw"))
	authSync(c, chainUser("alice", "pw"))
	if n := both.calls.Load(); n != 1 {
		t.Fatalf("source called %d times before Reload, want 1", n)
	}
	gen := c.Generation()

	err := c.Reload()
	if !errors.Is(err, errBad) || !errors.Is(err, errBadACL) {
		t.Fatalf("Reload = %v, want both errors joined", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `source "bad"`) || !strings.Contains(msg, `source "both"`) || strings.Contains(msg, "good") {
		t.Errorf("Reload error %q does not name exactly the failed sources", msg)
	}
	for _, s := range []*stubReloader{good, bad, both} {
		if n := s.reloads.Load(); n != 1 {
			t.Errorf("%s reloaded %d times, want once", s.name, n)
		}
	}
	if c.Generation() <= gen {
		t.Error("Generation did not increase on Reload")
	}
	authSync(c, chainUser("alice", "pw"))
	if n := both.calls.Load(); n != 2 {
		t.Errorf("source called %d times after Reload, want 2: cached answers must be forgotten", n)
	}
	good.err, bad.err, both.err = nil, nil, nil
	if err := c.Reload(); err != nil {
		t.Errorf("Reload = %v, want nil", err)
	}
}

func TestChainGeneration(t *testing.T) {
	clk := &stepClock{}
	c := newTestChain(t, ChainConfig{ACLs: []ACLSource{staticACL("acl")}, CacheTTL: time.Minute}, chainOptions{clock: clk})
	g := c.Generation()
	clk.advance(30 * time.Second)
	if c.Generation() != g {
		t.Error("Generation changed within a TTL")
	}
	clk.advance(30 * time.Second)
	if c.Generation() != g+1 {
		t.Errorf("Generation = %d after a TTL, want %d", c.Generation(), g+1)
	}
	noACL := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}, CacheTTL: time.Minute}, chainOptions{clock: clk})
	g = noACL.Generation()
	clk.advance(time.Hour)
	if noACL.Generation() != g {
		t.Error("Generation changed with no ACL source and no Reload")
	}
}

func TestChainCheckReturnsAtOnce(t *testing.T) {
	c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Allow)}}, chainOptions{})
	release := make(chan struct{})
	var calls atomic.Int64
	got := make(chan Result, 2)
	returned := make(chan struct{})
	go func() {
		c.Check(chainUser("alice", "pw"), func(res Result) {
			<-release // would deadlock Check if done ran on its caller
			calls.Add(1)
			got <- res
		})
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(decideTimeout):
		t.Fatal("Check waited for done")
	}
	close(release)
	if res := <-got; res.Outcome != Allowed {
		t.Errorf("got %v", res.Outcome)
	}
	c.Close() // waits for the workers: done has been called by now, once
	if n := calls.Load(); n != 1 {
		t.Errorf("done called %d times", n)
	}
}

func TestChainCheckQueueFull(t *testing.T) {
	c := newTestChain(t, ChainConfig{}, chainOptions{workers: 1, queue: 1})
	started := make(chan struct{})
	block := make(chan struct{})
	c.Check(anonRequest(), func(Result) { close(started); <-block }) // holds the only worker
	<-started
	queued := make(chan Result, 1)
	c.Check(anonRequest(), func(res Result) { queued <- res }) // fills the queue
	overflow := make(chan Result, 1)
	c.Check(anonRequest(), func(res Result) { overflow <- res }) // must not be dropped
	select {
	case res := <-overflow:
		if res.Outcome != Allowed {
			t.Errorf("got %v", res.Outcome)
		}
	case <-time.After(decideTimeout):
		t.Fatal("a Check beyond the full queue was not decided")
	}
	close(block)
	if res := <-queued; res.Outcome != Allowed {
		t.Errorf("got %v", res.Outcome)
	}
}

func TestChainCheckAfterClose(t *testing.T) {
	c := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("s", Deny)}}, chainOptions{})
	c.Close()
	c.Close()
	if res := checkChain(t, c, chainUser("alice", "pw")); res.Outcome != NotAuthorized {
		t.Errorf("got %v, want NotAuthorized", res.Outcome)
	}
}

func TestChainConfigErrors(t *testing.T) {
	s := verdictSource("s", Allow)
	tests := []struct {
		name string
		cfg  ChainConfig
		want string
	}{
		{"nil source", ChainConfig{Sources: []Source{s, nil}}, "Sources[1] is nil"},
		{"unnamed source", ChainConfig{Sources: []Source{verdictSource("", Allow)}}, "Sources[0] has no name"},
		{"same name", ChainConfig{Sources: []Source{s, verdictSource("s", Deny)}}, `Sources[1]: another source is named "s"`},
		{"nil ACL", ChainConfig{ACLs: []ACLSource{nil}}, "ACLs[0] is nil"},
		{"unnamed ACL", ChainConfig{ACLs: []ACLSource{staticACL("")}}, "ACLs[0] has no name"},
		{"same ACL name", ChainConfig{ACLs: []ACLSource{staticACL("a"), staticACL("a")}}, `ACLs[1]: another ACL source is named "a"`},
		{"negative TTL", ChainConfig{CacheTTL: -1}, "CacheTTL is negative"},
		{"negative size", ChainConfig{CacheSize: -1}, "CacheSize is negative"},
		{"negative timeout", ChainConfig{Timeout: -1}, "Timeout is negative"},
		{"negative inflight", ChainConfig{MaxInflight: -1}, "MaxInflight is negative"},
		{"negative cooldown", ChainConfig{BreakerCooldown: -1}, "BreakerCooldown is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewChain(tt.cfg)
			if err == nil {
				c.Close()
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), "auth: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to say %q", err, tt.want)
			}
		})
	}
}

func TestChainSharedBackendAndSet(t *testing.T) {
	set := metrics.NewSet()
	// One service answering both questions is one backend.
	svc := &stubReloader{stubSource: verdictSource("http", Allow)}
	cfg := ChainConfig{Sources: []Source{svc}, ACLs: []ACLSource{svc}, Metrics: set}
	c1 := newTestChain(t, cfg, chainOptions{})
	if c1.sources[0].b != c1.acls[0].b {
		t.Error("a Source and an ACLSource with one name do not share a backend")
	}
	// A second chain on the same set (a configuration reload) shares the series.
	c2 := newTestChain(t, cfg, chainOptions{})
	authSync(c1, chainUser("a", "pw"))
	authSync(c2, chainUser("a", "pw"))
	if v := seriesValue(set, `gannet_auth_results_total{source="http",result="allow"}`); v != 2 {
		t.Errorf("allow results = %v, want 2", v)
	}
	if v := seriesValue(set, `gannet_auth_results_total{source="http",result="rules"}`); v != 2 {
		t.Errorf("rules results = %v, want 2", v)
	}
	if c1.Metrics() != set {
		t.Error("Metrics() is not the configured set")
	}
	odd := newTestChain(t, ChainConfig{Sources: []Source{verdictSource("a\"b\\c\nd", Allow)}}, chainOptions{})
	authSync(odd, chainUser("a", "pw"))
	if v := seriesValue(odd.Metrics(), `gannet_auth_lookups_total{source="a\"b\\c\nd"}`); v != 1 {
		t.Errorf("lookups of a source with quotes in its name = %v, want 1", v)
	}
}

// BenchmarkChainCached measures a reconnecting client whose answers are
// all cached: a password source and an ACL source.
func BenchmarkChainCached(b *testing.B) {
	acl := staticACL("acl", Rule{Filter: "devices/+/state", Access: ReadWrite})
	c := newTestChain(b, ChainConfig{
		Sources:  []Source{verdictSource("file", Allow)},
		ACLs:     []ACLSource{acl},
		CacheTTL: time.Hour,
	}, chainOptions{})
	r := chainUser("device-0001", "correct horse battery staple")
	if res := authSync(c, r); res.Outcome != Allowed || res.Matcher == nil {
		b.Fatalf("got %+v", res)
	}
	b.Run("Authenticate", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for b.Loop() {
			if c.Authenticate(ctx, r).Outcome != Allowed {
				b.Fatal("not allowed")
			}
		}
	})
	b.Run("Check", func(b *testing.B) {
		b.ReportAllocs()
		var wg sync.WaitGroup
		done := func(res Result) {
			if res.Outcome != Allowed {
				panic("not allowed")
			}
			wg.Done()
		}
		for b.Loop() {
			wg.Add(1)
			c.Check(r, done)
		}
		wg.Wait()
	})
	b.Run("Check/parallel", func(b *testing.B) {
		b.ReportAllocs()
		var wg sync.WaitGroup
		done := func(Result) { wg.Done() }
		b.RunParallel(func(pb *testing.PB) {
			r := chainUser("device-0001", "correct horse battery staple")
			for pb.Next() {
				wg.Add(1)
				c.Check(r, done)
			}
		})
		wg.Wait()
	})
	if acl.calls.Load() != 1 {
		b.Errorf("ACL source called %d times", acl.calls.Load())
	}
}

// The HTTP source failing in each way a server can: every client is
// Unavailable, never Allowed, within the chain's Timeout; once the
// server answers again, the same clients get in (failures are not
// cached).
func TestChainHTTPSourceFailures(t *testing.T) {
	const timeout = 200 * time.Millisecond
	const allow = `{"result":"allow"}`
	hijack := func(t *testing.T, w http.ResponseWriter, partial string) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		_, _ = buf.WriteString(partial)
		_ = buf.Flush()
		conn.Close()
	}
	for _, tc := range []struct {
		name string
		fail func(t *testing.T, stop <-chan struct{}) http.HandlerFunc
	}{
		{"500", func(*testing.T, <-chan struct{}) http.HandlerFunc {
			// With a body that would let the client in.
			return httpAnswerWith(http.StatusInternalServerError, allow)
		}},
		{"timeout", func(_ *testing.T, stop <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-stop:
				}
			}
		}},
		{"connection closed", func(t *testing.T, _ <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) { hijack(t, w, "") }
		}},
		{"connection closed mid-answer", func(t *testing.T, _ <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				hijack(t, w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"+allow)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var healthy atomic.Bool
			stop := make(chan struct{})
			fail := tc.fail(t, stop)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if healthy.Load() {
					httpAnswerWith(http.StatusOK, allow)(w, r)
					return
				}
				fail(w, r)
			}))
			t.Cleanup(srv.Close)
			t.Cleanup(func() { close(stop) }) // before the server's Close
			src, err := NewHTTPSource(HTTPConfig{URL: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(src.Close)
			c := newTestChain(t, ChainConfig{
				Sources:         []Source{src},
				CacheTTL:        time.Minute,
				Timeout:         timeout,
				BreakerFailures: -1, // every client asks the server
			}, chainOptions{})

			const clients = 20
			reqs := make([]*Request, clients)
			for i := range reqs {
				reqs[i] = chainUser(fmt.Sprintf("user%02d", i), "pw")
			}
			results := make([]Result, clients)
			took := make([]time.Duration, clients)
			var wg sync.WaitGroup
			for i, r := range reqs {
				wg.Go(func() {
					start := time.Now()
					results[i] = authSync(c, r)
					took[i] = time.Since(start)
				})
			}
			wg.Wait()
			for i, res := range results {
				if res.Outcome != Unavailable || !errors.Is(res.Err, ErrUnavailable) || res.Source != "http" {
					t.Errorf("client %d: got %v from %q (%v), want Unavailable from the HTTP source", i, res.Outcome, res.Source, res.Err)
				}
				if took[i] > 2*timeout {
					t.Errorf("client %d: answered after %v, past twice the Timeout (%v)", i, took[i], timeout)
				}
			}

			healthy.Store(true)
			for i, r := range reqs {
				if res := authSync(c, r); res.Outcome != Allowed {
					t.Errorf("client %d, the server answering again: got %v (%v), want Allowed", i, res.Outcome, res.Err)
				}
			}
		})
	}
}

// aclFileWithClientPattern returns an ACL file giving user the n rules of
// benchRules(n) and every client the pattern "devices/%c/#", readwrite.
func aclFileWithClientPattern(t testing.TB, user string, n int) *ACLFile {
	t.Helper()
	var b strings.Builder
	b.WriteString("user " + user + "\n")
	for _, r := range benchRules(n) {
		access := r.Access.String()
		if r.Deny {
			access = "deny"
		}
		fmt.Fprintf(&b, "topic %s %s\n", access, r.Filter)
	}
	b.WriteString("pattern readwrite devices/%c/#\n")
	return loadACL(t, b.String())
}

// The clients of one user under an ACL file with a %c pattern hold one
// compiled trie for the user's rules, interned once; only the pattern is
// compiled per client. Several ACL sources keep the split too.
func TestChainACLPerClientSharesUserPart(t *testing.T) {
	const clients = 1000
	file := aclFileWithClientPattern(t, "fleet", 100)
	shared, _, _ := file.SplitRules(context.Background(), nil, "fleet")
	for _, tc := range []struct {
		name string
		acls []ACLSource
	}{
		{"one source", []ACLSource{file}},
		// The other source's rules are the same for every client: they
		// join the shared part.
		{"several sources", []ACLSource{file, staticACL("extra", Rule{Filter: "extra/#", Access: Read})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestChain(t, ChainConfig{
				Sources:  []Source{verdictSource("s", Allow)},
				ACLs:     tc.acls,
				CacheTTL: time.Minute,
			}, chainOptions{})
			before := sharedMatchers.len()
			var base *trie
			for i := range clients {
				r := chainUser("fleet", "pw")
				r.ClientID = fmt.Sprintf("dev-%04d", i)
				res := authSync(c, r)
				m := res.Matcher
				if res.Outcome != Allowed || m == nil {
					t.Fatalf("client %s: got %+v", r.ClientID, res)
				}
				if i == 0 {
					base = m.base
				}
				if m.base != base || m.own == nil {
					t.Fatalf("client %s: the user's rules are compiled for it alone (base %p, first client's %p; own part %p)", r.ClientID, m.base, base, m.own)
				}
				if m.Len() != len(shared)+len(tc.acls) {
					t.Fatalf("client %s: %d rules compiled, want %d", r.ClientID, m.Len(), len(shared)+len(tc.acls))
				}
				if !m.CanPublish([]byte("devices/"+r.ClientID+"/x")) || m.CanPublish([]byte("devices/dev-other/x")) {
					t.Fatalf("client %s: its own pattern is not applied, or another client's is", r.ClientID)
				}
				if !m.CanPublish([]byte("building/3/floor/3/temp")) || m.CanPublish([]byte("building/18/floor/4/secret")) {
					t.Fatalf("client %s: the user's rules are not applied", r.ClientID)
				}
				if len(tc.acls) > 1 && !m.CanRead([]byte("extra/1")) {
					t.Fatalf("client %s: the second source's rules are not applied", r.ClientID)
				}
				// The cached answers give the same matcher (one source:
				// cached compiled) or the same shared part (several: their
				// parts cached, joined per client).
				if i%100 == 0 {
					again := authSync(c, r).Matcher
					if again == nil || again.base != base || len(tc.acls) == 1 && again != m {
						t.Fatalf("client %s: a cached answer gave another matcher", r.ClientID)
					}
				}
			}
			if len(tc.acls) == 1 && base != CompileShared(shared).base {
				t.Error("the shared part is not the user's interned matcher")
			}
			if extra, ok := tc.acls[len(tc.acls)-1].(*stubACL); ok {
				if got := extra.calls.Load(); got != clients {
					t.Errorf("second source asked %d times for %d clients, want once each: repeats within the TTL come from the cache", got, clients)
				}
			}
			if grown := sharedMatchers.len() - before; grown > 1 {
				t.Errorf("%d clients of one user added %d lists to the shared matcher cache, want at most 1", clients, grown)
			}
		})
	}
}

// BenchmarkChainACLPerClient measures CONNECT's ACL cost for clients of
// one user under an ACL file with 100 rules for the user and a %c
// pattern: every client id is new, so nothing comes from the answer
// cache.
func BenchmarkChainACLPerClient(b *testing.B) {
	c := newTestChain(b, ChainConfig{
		Sources:  []Source{verdictSource("s", Allow)},
		ACLs:     []ACLSource{aclFileWithClientPattern(b, "fleet", 100)},
		CacheTTL: time.Minute,
	}, chainOptions{})
	ctx := context.Background()
	r := chainUser("fleet", "pw")
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		i++
		r.ClientID = "dev-" + strconv.Itoa(i)
		if res := c.Authenticate(ctx, r); res.Outcome != Allowed || res.Matcher.Len() != 101 {
			b.Fatalf("got %+v", res)
		}
	}
}
