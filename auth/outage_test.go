//go:build linux

package auth

// Outages of real backends under a reconnect storm: many clients
// reconnect at once (after a broker restart, a network blip) while the
// backend that knows them dies and comes back. Whatever happens, the
// chain must never let in a wrong password nor refuse a right one as
// "not authorized": a client it cannot decide about is Unavailable, and
// retries later.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Chain settings of the outage tests.
const (
	outageTimeout     = time.Second
	outageCooldown    = 200 * time.Millisecond
	outageMaxInflight = 4
	outageTTL         = 2 * time.Second
	// outageUsers and outageClients: each user has four clients, one
	// of which sends a wrong password.
	outageUsers   = 50
	outageClients = 200
	// outageRecovery bounds the time from a backend's return to a storm
	// in which every client gets its answer; go-redis retries a dial
	// once a second after failed ones, and the breaker waits its
	// cooldown.
	outageRecovery = 5 * time.Second
)

// skewClock is the real monotonic clock, which a test may move forward
// at once: skipping a TTL makes the cached answers expire without
// waiting.
type skewClock struct {
	origin time.Time
	skew   atomic.Int64
}

func newSkewClock() *skewClock { return &skewClock{origin: time.Now()} }

func (c *skewClock) now() time.Duration {
	return time.Since(c.origin) + time.Duration(c.skew.Load())
}

func (c *skewClock) skip(d time.Duration) { c.skew.Add(int64(d)) }

// countedSource is a real Source inside a wrapper that counts the calls
// reaching it and the most under way at once, and can hold calls at a
// gate, so that a test can take the backend down while no call is in it.
type countedSource struct {
	Source
	mu struct {
		sync.Mutex
		calls   int64 // calls made
		inside  int   // calls under way: held at the gate, or in the backend
		peak    int   // most calls inside at once
		backend int   // calls in the backend
		gateAt  int64 // > 0: calls numbered gateAt and later are held
		held    bool  // a call is held at the gate
		open    chan struct{}
		drained chan struct{} // closed once a call is held and none is in the backend
	}
}

func countSource(s Source) *countedSource { return &countedSource{Source: s} }

func (s *countedSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	s.mu.Lock()
	s.mu.calls++
	s.mu.inside++
	s.mu.peak = max(s.mu.peak, s.mu.inside)
	held := s.mu.gateAt > 0 && s.mu.calls >= s.mu.gateAt
	open := s.mu.open
	if held {
		s.mu.held = true
		s.drainedLocked()
	} else {
		s.mu.backend++
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.mu.inside--
		s.mu.Unlock()
	}()

	if held {
		select {
		case <-open:
		case <-ctx.Done():
			return Answer{}, ctx.Err()
		}
		s.mu.Lock()
		s.mu.backend++
		s.mu.Unlock()
	}
	a, err := s.Source.Authenticate(ctx, r)
	s.mu.Lock()
	s.mu.backend--
	s.drainedLocked()
	s.mu.Unlock()
	return a, err
}

// drainedLocked closes drained once a call is held at the gate and none
// is in the backend.
// REQUIRES: s.mu held.
func (s *countedSource) drainedLocked() {
	if s.mu.held && s.mu.backend == 0 && s.mu.drained != nil {
		close(s.mu.drained)
		s.mu.drained = nil
	}
}

// holdFrom makes the call numbered n (counting from the first call ever)
// and every later one wait at the gate. drained is closed once a call
// waits there and the calls before it have left the backend; release
// lets the waiting calls through and removes the gate.
func (s *countedSource) holdFrom(n int64) (drained <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := make(chan struct{})
	s.mu.gateAt, s.mu.held, s.mu.open, s.mu.drained = n, false, make(chan struct{}), d
	return d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		close(s.mu.open)
		s.mu.gateAt, s.mu.held, s.mu.open, s.mu.drained = 0, false, nil, nil
	}
}

func (s *countedSource) calls() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.calls
}

func (s *countedSource) peak() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.peak
}

// outageUser and outagePassword name user i of a storm and its password.
func outageUser(i int) string     { return fmt.Sprintf("storm-%02d", i) }
func outagePassword(i int) string { return fmt.Sprintf("pw-%02d", i) }

// stormClient is one client of a reconnect storm.
type stormClient struct {
	r     *Request
	right bool // its password is right
}

// stormClients returns outageClients clients of outageUsers users, each
// with a client id of its own; every fifth sends a wrong password.
func stormClients() []stormClient {
	cs := make([]stormClient, outageClients)
	for i := range cs {
		u := i % outageUsers
		pw, right := outagePassword(u), i%5 != 4
		if !right {
			pw = "wrong-" + pw
		}
		r := backendRequest(outageUser(u), pw)
		r.ClientID = fmt.Sprintf("dev-%03d", i)
		cs[i] = stormClient{r: r, right: right}
	}
	return cs
}

// stormResult is what one client of a storm got, and how long it took.
type stormResult struct {
	res  Result
	took time.Duration
}

// storm sends every client's CONNECT to c at once and returns their
// results, in the order of clients.
func storm(c *Chain, clients []stormClient) []stormResult {
	out := make([]stormResult, len(clients))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, sc := range clients {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			res := c.Authenticate(context.Background(), sc.r)
			out[i] = stormResult{res: res, took: time.Since(t0)}
		})
	}
	close(start)
	wg.Wait()
	return out
}

// stormTally counts a storm's outcomes.
type stormTally struct {
	allowed, refused, unavailable int
}

// complete reports whether every client got its true answer.
func (s stormTally) complete(clients []stormClient) bool {
	right := 0
	for _, sc := range clients {
		if sc.right {
			right++
		}
	}
	return s.allowed == right && s.refused == len(clients)-right
}

// checkStorm fails the test for an answer the chain must never give (a
// right password refused as not authorized, a wrong one let in, an
// Unavailable that wraps no ErrUnavailable) and for a call that took
// more than twice the chain's Timeout. It returns the outcomes' counts.
func checkStorm(t *testing.T, phase string, clients []stormClient, results []stormResult) stormTally {
	t.Helper()
	var n stormTally
	bad := 0
	for i, got := range results {
		sc, res := clients[i], got.res
		var problem string
		switch {
		case got.took > 2*outageTimeout:
			problem = fmt.Sprintf("answered after %v, past twice the Timeout (%v)", got.took, outageTimeout)
		case res.Outcome == Allowed && !sc.right:
			problem = "let in with a wrong password"
		case res.Outcome == NotAuthorized && sc.right:
			problem = "refused as not authorized with the right password"
		case res.Outcome == Unavailable && res.Err == nil:
			problem = "unavailable without an error"
		}
		if problem != "" {
			if bad++; bad <= 5 {
				t.Errorf("%s: client %s of %s: %s (%v, %v)", phase, sc.r.ClientID, sc.r.Username, problem, res.Outcome, res.Err)
			}
		}
		switch res.Outcome {
		case Allowed:
			n.allowed++
		case NotAuthorized:
			n.refused++
		default:
			n.unavailable++
		}
	}
	if bad > 5 {
		t.Errorf("%s: %d wrong answers in all", phase, bad)
	}
	return n
}

// outageBackend is a real backend for testOutage: its source, and how to
// take it down and bring it back.
type outageBackend struct {
	source Source
	down   func(t testing.TB) // kills or stops the server
	up     func(t testing.TB) // starts it again on the same port, with the same users
}

// testOutage runs reconnect storms against a chain on b while b goes
// down and comes back.
func testOutage(t *testing.T, b outageBackend) {
	src := countSource(b.source)
	var logs logSink
	clk := newSkewClock()
	c := newTestChain(t, ChainConfig{
		Sources:         []Source{src},
		CacheTTL:        outageTTL,
		Timeout:         outageTimeout,
		MaxInflight:     outageMaxInflight,
		BreakerCooldown: outageCooldown,
		Logger:          logs.logger(),
	}, chainOptions{clock: clk})
	clients := stormClients()
	downLines := func() int { return logs.lines("auth: source down") }
	upLines := func() int { return logs.lines("auth: source up") }

	// The backend is up: every client gets its true answer, one call
	// each; a second storm within the TTL makes no call at all.
	t0 := time.Now()
	n := checkStorm(t, "backend up", clients, storm(c, clients))
	if !n.complete(clients) {
		t.Fatalf("backend up: %+v, want every client's true answer", n)
	}
	if got := src.calls(); got != outageClients {
		t.Fatalf("backend up: %d backend calls for %d distinct clients, want one each", got, outageClients)
	}
	n = checkStorm(t, "cached", clients, storm(c, clients))
	if took := time.Since(t0); took >= outageTTL {
		t.Fatalf("two storms took %v, past the cache TTL (%v): the machine is too slow for this test", took, outageTTL)
	}
	if !n.complete(clients) {
		t.Fatalf("cached: %+v, want every client's true answer", n)
	}
	if got := src.calls(); got != outageClients {
		t.Fatalf("a storm within the TTL made %d backend calls, want none", got-outageClients)
	}

	// The cached answers expire, and the clients come again. The backend
	// goes down in the middle of the storm: after the 60th call,
	// which waits at the gate until it is down.
	clk.skip(outageTTL)
	const beforeDown = 59
	drained, release := src.holdFrom(src.calls() + beforeDown + 1)
	results := make(chan []stormResult, 1)
	go func() { results <- storm(c, clients) }()
	select {
	case <-drained:
	case <-time.After(decideTimeout):
		release()
		t.Fatalf("the storm did not reach its call %d", beforeDown+1)
	}
	b.down(t)
	release()
	n = checkStorm(t, "backend going down", clients, <-results)
	if n.allowed+n.refused < beforeDown || n.unavailable == 0 {
		t.Errorf("backend going down: %+v; want at least %d answers from before it went down, and unavailable clients after", n, beforeDown)
	}
	if got := downLines(); got != 1 {
		t.Errorf("%d \"source down\" lines after the backend went down, want 1:\n%s", got, logs.String())
	}

	// Down, with the breaker open: clients are unavailable at once, and
	// the backend gets at most one trial call per cooldown.
	calls := src.calls()
	t1 := time.Now()
	n = checkStorm(t, "backend down", clients, storm(c, clients))
	trials := src.calls() - calls
	if limit := 1 + int64(time.Since(t1)/outageCooldown); trials > limit {
		t.Errorf("backend down: %d backend calls in one storm, want at most %d (one trial per cooldown)", trials, limit)
	}
	if n.unavailable == 0 || n.allowed+n.refused > beforeDown {
		t.Errorf("backend down: %+v; want unavailable clients, and answers only from the cache", n)
	}

	// Back: within a few seconds, a storm gets every client's answer.
	b.up(t)
	back := time.Now()
	for round := 1; ; round++ {
		n = checkStorm(t, fmt.Sprintf("backend back, storm %d", round), clients, storm(c, clients))
		if t.Failed() {
			t.FailNow()
		}
		if n.complete(clients) {
			break
		}
		if time.Since(back) > outageRecovery {
			t.Fatalf("%v after the backend came back, a storm got %+v; want every client's true answer", outageRecovery, n)
		}
		time.Sleep(50 * time.Millisecond) // polling for the backend's return: no signal to wait on
	}
	t.Logf("every client answered %v after the backend came back", time.Since(back).Round(time.Millisecond))
	if got := upLines(); got != 1 {
		t.Errorf("%d \"source up\" lines after the backend came back, want 1:\n%s", got, logs.String())
	}
	if got := downLines(); got != 1 {
		t.Errorf("%d \"source down\" lines in all, want 1:\n%s", got, logs.String())
	}
	if p := src.peak(); p > outageMaxInflight {
		t.Errorf("%d backend calls under way at once, want at most MaxInflight (%d)", p, outageMaxInflight)
	}
}

// A reconnect storm while Redis crashes (SIGKILL) and restarts.
func TestOutageRedisStorm(t *testing.T) {
	srv := startRedis(t)
	rc := redisClient(t, srv)
	hashes := make([]string, outageUsers)
	for i := range hashes {
		hashes[i] = mustHash(t, HashSHA512PBKDF2, outagePassword(i))
	}
	seed := func(t testing.TB) {
		t.Helper()
		ctx := context.Background()
		pipe := rc.Pipeline()
		for i, h := range hashes {
			pipe.HSet(ctx, "mqtt_user:"+outageUser(i), "password_hash", h)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	seed(t)
	testOutage(t, outageBackend{
		source: newTestRedisSource(t, RedisConfig{URL: srv.URL, PoolSize: outageMaxInflight}),
		down:   srv.Kill,
		up: func(t testing.TB) {
			srv.Start(t)
			seed(t) // no persistence: the restarted server is empty
		},
	})
}

// A reconnect storm while PostgreSQL stops (pg_ctl stop -m fast) and
// starts again.
func TestOutagePostgresStorm(t *testing.T) {
	srv := startPostgres(t)
	pgExec(t, srv.URL, pgTables[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var batch pgx.Batch
	for i := range outageUsers {
		batch.Queue("INSERT INTO mqtt_user (username, password_hash) VALUES ($1, $2)",
			outageUser(i), mustHash(t, HashSHA512PBKDF2, outagePassword(i)))
	}
	err = conn.SendBatch(ctx, &batch).Close()
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testOutage(t, outageBackend{
		source: newTestPostgresSource(t, PostgresConfig{URL: srv.URL, MaxConns: outageMaxInflight}),
		down:   srv.Stop,
		up:     srv.Start,
	})
}
