package auth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// The chain: what the broker asks at CONNECT.
//
// A decision goes through two stages. Authentication asks the Sources in
// order until one answers Allow or Deny; authorization then gathers the
// client's rules (from the deciding answer, or from every ACL source) and
// compiles them into a Matcher. Each question to a source goes through
// the same steps (a source that answers from memory, through the first
// and the last alone):
//
//	cache ── hit ─────────────────────────────────────────────▶ answer
//	  │ miss
//	circuit breaker ── open ──────────────────────────────────▶ unavailable
//	  │
//	flight (merge with the same question under way) ── joined ─▶ its answer
//	  │ new
//	call slot (at most MaxInflight per backend, wait ≤ Timeout)
//	  │
//	Source.Authenticate / ACLSource.Rules, deadline Timeout
//
// Check runs a decision on one of the chain's workers as far as the cache,
// the breakers and the sources that answer from memory (a password file,
// an ACL file: inMemory) can take it, so that a reconnecting client whose
// answers are cached, or a client checked against a password file, costs
// no goroutine; a decision that needs a backend call continues on a
// goroutine of its own, which waits for the call.
//
// A source that fails (an error, its deadline, an open breaker, no free
// call slot within the deadline) ends the decision: the client is
// Unavailable, and later sources are not asked. Asking them could let in,
// through a more permissive later source, a client the failed source
// would have refused; failing closed keeps the answer the same whether
// or not a backend is up.

// Defaults for zero ChainConfig fields.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultMaxInflight     = 64
	DefaultCacheSize       = 100_000
	DefaultBreakerFailures = 5
	DefaultBreakerCooldown = 10 * time.Second
)

// checkQueue bounds the decisions waiting for a worker; Check starts a
// goroutine for a decision that does not fit.
const checkQueue = 4096

// ChainConfig configures a Chain. The zero value of a field means its
// default; negative durations and sizes are refused, except where a field
// says otherwise.
type ChainConfig struct {
	// Sources authenticate, asked in order. Their names must be unique
	// and not empty: they label metrics and log lines.
	Sources []Source
	// ACLs give a client's rules when the deciding source's answer has
	// none; the rules of all of them are concatenated, in order. Their
	// names must be unique and not empty. A Source and an ACLSource with
	// the same name are one backend: they share a circuit breaker, a
	// concurrency bound and the metrics.
	ACLs []ACLSource
	// AllowAnonymous lets in a client with neither username nor password
	// that every source ignores. A source that denies it, or fails, still
	// decides.
	AllowAnonymous bool
	// CacheTTL is how long a source's answer (allow, deny, ignore, ACL
	// rules) is kept; errors are never kept. 0 turns caching off;
	// concurrent identical questions are still merged into one call.
	CacheTTL time.Duration
	// CacheSize bounds the answers kept, all sources together (0:
	// DefaultCacheSize).
	CacheSize int
	// Timeout bounds each question to a backend: the wait for a call slot
	// and the call together (0: DefaultTimeout).
	Timeout time.Duration
	// MaxInflight bounds the calls under way to one backend; further
	// questions wait for a slot within Timeout, then fail as unavailable
	// (0: DefaultMaxInflight).
	MaxInflight int
	// BreakerFailures is the number of consecutive failed calls after
	// which a backend is taken to be down: questions to it fail at once
	// for BreakerCooldown, then one trial call decides whether it is back
	// (0: DefaultBreakerFailures; negative: no circuit breaker).
	BreakerFailures int
	// BreakerCooldown is how long a down backend is left alone (0:
	// DefaultBreakerCooldown).
	BreakerCooldown time.Duration
	// Metrics receives the chain's metrics (see metrics.go); nil: a set
	// of the chain's own, which Chain.Metrics returns. Chains built on
	// the same set share the series of sources with the same name.
	Metrics *metrics.Set
	// Logger receives a line when a backend goes down and when it comes
	// back, never one per client; nil: no logging.
	Logger *slog.Logger
}

// Outcome is what the chain decided about a client.
type Outcome uint8

// Outcomes. The zero value is Unavailable, so that a Result nobody filled
// in lets nobody in.
const (
	// Unavailable: a source could not answer before one decided. The
	// broker refuses the client with 0x88 (Server unavailable).
	Unavailable Outcome = iota
	// NotAuthorized: a source denied the client, or none allowed it. The
	// broker refuses it with 0x86 (Bad username or password) or 0x87
	// (Not authorized).
	NotAuthorized
	// Allowed: the client may connect, under Result's Matcher.
	Allowed
)

func (o Outcome) String() string {
	switch o {
	case Allowed:
		return "allowed"
	case NotAuthorized:
		return "not authorized"
	default:
		return "unavailable"
	}
}

// Result is the chain's decision about one client.
type Result struct {
	Outcome Outcome
	// Superuser bypasses every ACL; Matcher is nil.
	Superuser bool
	// Username is the client's effective username: the deciding answer's
	// when it names one, the request's otherwise.
	Username string
	// Matcher is the client's compiled ACL, shared between clients with
	// the same rules (under an ACL file's client-id patterns, or rules
	// stored in Redis or PostgreSQL that name a client's values, the part
	// the clients of one user have in common is shared); nil when no
	// ACL applies (no ACL source, no rules in the answer) or for a
	// superuser: everything is allowed.
	Matcher *Matcher
	// FromAnswer reports that Matcher came with the deciding source's
	// answer (an HTTP answer's rules, a JWT claim): Chain.Rules does not
	// recompute it, and the broker keeps it for the connection's life.
	FromAnswer bool
	// Source names the source that decided, or that failed; empty when
	// no source decided (no sources configured, every source ignored the
	// client).
	Source string
	// Err says why, when Outcome is Unavailable; it wraps ErrUnavailable.
	// Its text names the source and shows the backend's error, with the
	// client's password redacted; it is meant for a log line.
	Err error
}

// Chain is the authentication chain with the ACL sources behind it.
//
// Its methods are safe for concurrent use from any goroutine. Check never
// blocks; Authenticate, Rules and Reload block their caller and must not
// be called from an event loop.
type Chain struct {
	sources        []chainLink
	acls           []chainLink
	allowAnonymous bool
	cache          *answerCache
	clock          chainClock
	salt           [32]byte // keys the cache's digests
	log            *slog.Logger
	set            *metrics.Set

	reloadMu sync.Mutex    // serialises Reload
	reloads  atomic.Uint64 // Reload calls, for Generation

	queue     chan *decision
	queueMu   sync.RWMutex // held for reading to send on queue, for writing to close it
	closed    bool         // guarded by queueMu
	closeOnce sync.Once
	workers   sync.WaitGroup

	onWait func() // tests: a call waits for a call slot
}

// chainLink is one Source or ACLSource in the chain.
type chainLink struct {
	name   string
	src    any // the Source or ACLSource, for Reload
	b      *chainBackend
	call   callFunc
	fields Fields // what its answers are keyed by (keys.go)
	local  bool   // answers from memory: asked on the worker (inMemory)
}

// inMemory reports whether src answers from what it holds in memory,
// never waiting for I/O: a password file, an ACL file, client
// certificates, JWTs checked against keys already loaded. The chain asks
// such a source on the worker that runs the decision, as it would read
// the cache: a question costs its own CPU work (a password hash, a
// signature) and no goroutine, flight, call slot or circuit breaker,
// which exist to wait for backends and to spare them. The workers
// (GOMAXPROCS of them) bound the checks under way at once, and so the
// CPU time and the memory (argon2id) of password hashes.
func inMemory(src any) bool {
	switch src.(type) {
	case *PasswordFile, *ACLFile, *CertSource, *JWTSource, memorySource:
		return true
	}
	return false
}

// memorySource is a source of another type that answers from memory.
type memorySource interface {
	answersFromMemory()
}

// callFunc asks a source one question; user is the effective username
// (ACL questions).
type callFunc func(ctx context.Context, r *Request, user string) (*cacheValue, error)

// chainBackend is what the links with one name share: the concurrency bound,
// the circuit breaker, the metrics.
type chainBackend struct {
	name    string
	sem     chan struct{} // one token per call under way
	brk     *breaker
	m       *sourceMetrics
	downErr error // a question refused by the open breaker
}

// errBreakerOpen is the cause of a question refused by an open circuit
// breaker.
var errBreakerOpen = errors.New("circuit breaker open after consecutive failures")

// unavailableError is a source's failure, as a Result's Err: it names the
// source, redacts the client's password from the text, and wraps both the
// cause and ErrUnavailable.
type unavailableError struct {
	msg string
	err error
}

func (e *unavailableError) Error() string   { return e.msg }
func (e *unavailableError) Unwrap() []error { return []error{e.err, ErrUnavailable} }

func newUnavailable(source string, err error, secret []byte) error {
	return &unavailableError{
		msg: fmt.Sprintf("auth: cannot ask source %q: %s", source, redactSecret(err.Error(), secret)),
		err: err,
	}
}

// chainOptions are what tests change of a chain.
type chainOptions struct {
	clock   chainClock
	workers int // 0: GOMAXPROCS
	queue   int // 0: checkQueue
}

// NewChain returns a chain configured by cfg, or an error naming the
// field that is wrong. Its workers run until Close.
func NewChain(cfg ChainConfig) (*Chain, error) {
	return newChain(cfg, chainOptions{})
}

func newChain(cfg ChainConfig, opt chainOptions) (*Chain, error) {
	switch {
	case cfg.CacheTTL < 0:
		return nil, errors.New("auth: CacheTTL is negative")
	case cfg.CacheSize < 0:
		return nil, errors.New("auth: CacheSize is negative")
	case cfg.Timeout < 0:
		return nil, errors.New("auth: Timeout is negative")
	case cfg.MaxInflight < 0:
		return nil, errors.New("auth: MaxInflight is negative")
	case cfg.BreakerCooldown < 0:
		return nil, errors.New("auth: BreakerCooldown is negative")
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.BreakerFailures == 0 {
		cfg.BreakerFailures = DefaultBreakerFailures
	}
	if cfg.BreakerCooldown == 0 {
		cfg.BreakerCooldown = DefaultBreakerCooldown
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.clock == nil {
		opt.clock = monoClock{origin: time.Now()}
	}
	if opt.workers <= 0 {
		opt.workers = runtime.GOMAXPROCS(0)
	}
	if opt.queue <= 0 {
		opt.queue = checkQueue
	}

	c := &Chain{
		allowAnonymous: cfg.AllowAnonymous,
		cache:          newCache(cfg.CacheTTL, cfg.CacheSize, cfg.Timeout, opt.clock),
		clock:          opt.clock,
		log:            cfg.Logger,
		set:            cfg.Metrics,
		queue:          make(chan *decision, opt.queue),
	}
	if _, err := rand.Read(c.salt[:]); err != nil {
		return nil, fmt.Errorf("auth: cannot draw the cache key salt: %w", err)
	}
	backends := make(map[string]*chainBackend)
	backendFor := func(name string) *chainBackend {
		if b := backends[name]; b != nil {
			return b
		}
		m := newSourceMetrics(cfg.Metrics, name)
		b := &chainBackend{
			name:    name,
			sem:     make(chan struct{}, cfg.MaxInflight),
			brk:     newBreaker(name, cfg.BreakerFailures, cfg.BreakerCooldown, cfg.Logger, m.up),
			m:       m,
			downErr: newUnavailable(name, errBreakerOpen, nil),
		}
		backends[name] = b
		return b
	}
	seen := make(map[string]bool)
	for i, s := range cfg.Sources {
		if s == nil {
			return nil, fmt.Errorf("auth: Sources[%d] is nil", i)
		}
		name := s.Name()
		switch {
		case name == "":
			return nil, fmt.Errorf("auth: Sources[%d] has no name", i)
		case seen[name]:
			return nil, fmt.Errorf("auth: Sources[%d]: another source is named %q", i, name)
		}
		seen[name] = true
		c.sources = append(c.sources, chainLink{name: name, src: s, b: backendFor(name), call: authCall(s), fields: authKeyFields(s), local: inMemory(s)})
	}
	clear(seen)
	for i, a := range cfg.ACLs {
		if a == nil {
			return nil, fmt.Errorf("auth: ACLs[%d] is nil", i)
		}
		name := a.Name()
		switch {
		case name == "":
			return nil, fmt.Errorf("auth: ACLs[%d] has no name", i)
		case seen[name]:
			return nil, fmt.Errorf("auth: ACLs[%d]: another ACL source is named %q", i, name)
		}
		seen[name] = true
		l := chainLink{name: name, src: a, b: backendFor(name), call: aclCall(a, len(cfg.ACLs) == 1), fields: rulesKeyFields(a), local: inMemory(a)}
		if ts, ok := a.(templateACLSource); ok {
			l.call, l.fields = templateCall(ts, len(cfg.ACLs) == 1), ts.templatesKeyedBy()&AllFields
		}
		c.acls = append(c.acls, l)
	}

	c.workers.Add(opt.workers)
	for range opt.workers {
		go c.work()
	}
	return c, nil
}

// authCall asks s to authenticate. An answer is checked and reduced to
// what the chain uses: the verdict, and for Allow the superuser flag, the
// username and the compiled rules.
func authCall(s Source) callFunc {
	return func(ctx context.Context, r *Request, _ string) (*cacheValue, error) {
		a, err := s.Authenticate(ctx, r)
		if err != nil {
			return nil, err
		}
		switch a.Verdict {
		case Allow:
		case Deny, Ignore:
			return &cacheValue{answer: Answer{Verdict: a.Verdict}}, nil
		default:
			return nil, fmt.Errorf("answer has an unknown verdict %d", a.Verdict)
		}
		v := &cacheValue{answer: a}
		if a.HasRules && !a.Superuser {
			v.matcher = CompileShared(a.Rules)
		}
		v.answer.Rules = nil
		return v, nil
	}
}

// splitACLSource is an ACLSource that also gives a client's rules in two
// parts (ACLFile.SplitRules): shared, the rules every client of the user
// has, and own, the rules of this client alone (patterns naming its
// client id). The chain compiles them with CompileWith, so that the
// clients of one user hold one trie of the shared part, interned once,
// and only own is compiled per client: with a client-id pattern, a
// CONNECT neither compiles the user's rules again nor pushes other
// users' lists out of CompileShared's cache.
//
// SplitRules answers as Rules does, and must not change either slice
// after returning it: the chain keeps them, uncopied, for the cache's
// TTL.
type splitACLSource interface {
	SplitRules(ctx context.Context, r *Request, username string) (shared, own []Rule, err error)
}

// aclCall asks a for a client's rules. The only ACL source of a chain
// compiles them at once; with several, the chain keeps them and compiles
// their concatenation at the end of the ACL stage.
//
// A splitACLSource is asked for its two parts. Alone, it gives its value
// the matcher CompileWith compiles of them. With other ACL sources, its
// value holds shared in rules and own in answer.Rules (an ACL value has
// no other use for its answer); another source's rules all go with the
// shared parts.
func aclCall(a ACLSource, only bool) callFunc {
	if s, ok := a.(splitACLSource); ok {
		return func(ctx context.Context, r *Request, user string) (*cacheValue, error) {
			shared, own, err := s.SplitRules(ctx, r, user)
			if err != nil {
				return nil, err
			}
			if only {
				return &cacheValue{matcher: CompileWith(shared, own)}, nil
			}
			return &cacheValue{rules: shared, answer: Answer{Rules: own}}, nil
		}
	}
	return func(ctx context.Context, r *Request, user string) (*cacheValue, error) {
		rules, err := a.Rules(ctx, r, user)
		if err != nil {
			return nil, err
		}
		if only {
			return &cacheValue{matcher: CompileShared(rules)}, nil
		}
		return &cacheValue{rules: slices.Clone(rules)}, nil
	}
}

// templateACLSource is an ACLSource that also gives a client's rules as
// stored (the Redis and PostgreSQL sources): the placeholders of their
// topic filters left in, for the chain to fill in with each client's
// values (placeholders.go, Rule templates). Its answers are then keyed by
// what its query reads alone (templatesKeyedBy, besides the effective
// username, which is always in the key), not by the values a stored
// filter may name: with a query that reads only ${username}, a reconnect
// storm of many clients of one user costs one query, and concurrent
// lookups for the user are one call, whatever the stored filters name.
//
// ruleTemplates must answer for the client as Rules does, before the
// values are put in; the chain keeps the slice, uncopied, for the
// cache's TTL.
type templateACLSource interface {
	ruleTemplates(ctx context.Context, r *Request, username string) ([]ruleTemplate, error)
	templatesKeyedBy() Fields
}

// templateCall asks s for a user's rules as stored. The rules that name
// no value but the username are the same for every client of the user:
// they are filled in once, and, when s is the chain's only ACL source,
// compiled once (CompileShared). The others are kept as templates, for
// the ACL stage to fill in and compile for each client (perClient).
func templateCall(s templateACLSource, only bool) callFunc {
	return func(ctx context.Context, r *Request, user string) (*cacheValue, error) {
		ts, err := s.ruleTemplates(ctx, r, user)
		if err != nil {
			return nil, err
		}
		shared, perClient := splitTemplates(ts, user)
		if only {
			return &cacheValue{matcher: CompileShared(shared), perClient: perClient}, nil
		}
		return &cacheValue{rules: shared, perClient: perClient}, nil
	}
}

// Enabled reports whether any source or ACL source is configured. A
// chain with neither lets every client in with no ACL.
func (c *Chain) Enabled() bool { return len(c.sources)+len(c.acls) > 0 }

// Metrics returns the set the chain's metrics are in.
func (c *Chain) Metrics() *metrics.Set { return c.set }

// Check decides about r off the caller's goroutine: it returns at once,
// and calls done exactly once, from another goroutine, with the decision.
// It never drops a request: when the workers' queue is full, the decision
// runs on a goroutine of its own.
//
// r must not be changed until done is called; the chain keeps no reference
// to it afterwards. done must not be nil. It may run on one of the
// chain's workers: it must return quickly (hand the Result to the
// connection's event loop) and must not call Close. Check may be called
// after Close; the decision then runs on a goroutine of its own.
func (c *Chain) Check(r *Request, done func(Result)) {
	d := &decision{r: r, done: done}
	c.queueMu.RLock()
	if !c.closed {
		select {
		case c.queue <- d:
			c.queueMu.RUnlock()
			return
		default:
		}
	}
	c.queueMu.RUnlock()
	go c.finish(d)
}

// work runs queued decisions as far as they go without waiting for a
// backend, and hands the others to goroutines of their own.
func (c *Chain) work() {
	defer c.workers.Done()
	for d := range c.queue {
		if c.advance(context.Background(), d, false) {
			d.done(d.res)
		} else {
			go c.finish(d)
		}
	}
}

// finish runs decision d to its end and calls its done.
func (c *Chain) finish(d *decision) {
	c.advance(context.Background(), d, true)
	d.done(d.res)
}

// Close stops the chain's workers once the decisions queued for them
// have gone as far as they can without waiting for a backend; decisions
// that wait still end and call done. It must not be called from a done
// callback. Close is idempotent; the chain stays usable.
func (c *Chain) Close() {
	c.closeOnce.Do(func() {
		c.queueMu.Lock()
		c.closed = true
		close(c.queue)
		c.queueMu.Unlock()
		c.workers.Wait()
	})
}

// Authenticate decides about r on the caller's goroutine, waiting for
// backends; it is Check's synchronous form, for tests and admin tools. A
// question whose wait ctx ends fails, and the client is Unavailable; the
// backend call goes on for whoever else waits for it.
func (c *Chain) Authenticate(ctx context.Context, r *Request) Result {
	d := decision{r: r}
	c.advance(ctx, &d, true)
	return d.res
}

// Rules returns the rules the ACL sources give now to a connected client
// whose request was r and whose effective username is username, compiled
// and shared: nil when no ACL source is configured. It does not apply to
// a superuser, or to a client whose Result.FromAnswer was set: the broker
// keeps their matchers.
//
// When an ACL source fails, Rules returns an error wrapping
// ErrUnavailable, and the broker keeps the client's current matcher: an
// outage leaves connected clients alone. Answers come from the cache when
// they are there; see Generation. Rules blocks; call it off any event
// loop.
func (c *Chain) Rules(ctx context.Context, r *Request, username string) (*Matcher, error) {
	if len(c.acls) == 0 {
		return nil, nil
	}
	d := decision{r: r, stage: stageACL, res: Result{Outcome: Allowed, Username: username}}
	c.advance(ctx, &d, true)
	if d.res.Outcome != Allowed {
		return nil, d.res.Err
	}
	return d.res.Matcher, nil
}

// Reload reloads every source and ACL source that is a Reloader, once
// each, and forgets every cached answer. It returns the errors of the
// sources that failed, joined; each of those keeps its old state, and the
// others take their new one. Calls are serialised.
func (c *Chain) Reload() error {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	var errs []error
	var done []any
	for _, l := range slices.Concat(c.sources, c.acls) {
		rl, ok := l.src.(Reloader)
		if !ok || reloaded(done, l.src) {
			continue
		}
		done = append(done, l.src)
		if err := rl.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("auth: cannot reload source %q: %w", l.name, err))
		}
	}
	c.cache.purge()
	c.reloads.Add(1)
	return errors.Join(errs...)
}

// reloaded reports whether src, a source that may be in both lists, is in
// done. A source of a type that cannot be compared is reloaded each time
// it appears.
func reloaded(done []any, src any) bool {
	if !reflect.TypeOf(src).Comparable() {
		return false
	}
	return slices.Contains(done, src)
}

// Generation is a number that increases on every Reload and, with ACL
// sources and caching on, every CacheTTL: whenever the rules of connected
// clients may have changed. A broker that sees it change recomputes its
// clients' matchers with Rules. A change in a backend reaches new clients
// within CacheTTL and connected ones within twice that.
func (c *Chain) Generation() uint64 {
	g := c.reloads.Load()
	if c.cache.ttl > 0 && len(c.acls) > 0 {
		g += uint64(c.clock.now() / c.cache.ttl)
	}
	return g
}

// Decision stages.
const (
	stageAuth uint8 = iota
	stageACL
	stageDone
)

// decision is one client's way through the chain. It belongs to one
// goroutine at a time: Check's caller, then a worker, then maybe a
// goroutine of its own.
type decision struct {
	r    *Request
	done func(Result)

	stage  uint8
	next   int  // next source (stageAuth) or ACL source (stageACL)
	missed bool // next's cache lookup missed: a backend call is due
	hasSum bool
	sum    [32]byte // the stage's question digest over sumOf, once computed
	sumOf  Fields   // the fields sum covers; links keyed alike reuse it
	rules  []Rule   // stageACL, several ACL sources: shared rules so far
	own    []Rule   // stageACL, several ACL sources: this client's own rules so far
	res    Result
}

// advance takes d as far as it goes. With block set it waits for backend
// calls (each bounded by ctx and the chain's Timeout), ends the decision
// and reports true. Without, it stops before the first backend call and
// reports false when a call is due, leaving d to be taken on with block
// set.
func (c *Chain) advance(ctx context.Context, d *decision, block bool) bool {
	for {
		switch d.stage {
		case stageAuth:
			if d.next == len(c.sources) {
				c.noneDecided(d)
				continue
			}
			l := &c.sources[d.next]
			if !d.hasSum || d.sumOf != l.fields {
				d.sum, d.sumOf, d.hasSum = keySum(&c.salt, kindAuth, l.fields, d.r, ""), l.fields, true
			}
			v, ok, err := c.lookup(ctx, d, l, cacheKey{kind: kindAuth, source: int32(d.next), sum: d.sum}, "", block)
			if !ok {
				return false
			}
			if err != nil {
				c.fail(d, l.name, d.r.Username, err)
				continue
			}
			switch v.answer.Verdict {
			case Allow:
				c.allowed(d, l.name, v)
			case Deny:
				d.res = Result{Outcome: NotAuthorized, Username: d.r.Username, Source: l.name}
				d.stage = stageDone
			default:
				d.next++
			}

		case stageACL:
			if d.next == len(c.acls) {
				if len(c.acls) > 1 {
					d.res.Matcher = CompileWith(d.rules, d.own)
				}
				d.stage = stageDone
				continue
			}
			l := &c.acls[d.next]
			if !d.hasSum || d.sumOf != l.fields {
				d.sum, d.sumOf, d.hasSum = keySum(&c.salt, kindACL, l.fields, d.r, d.res.Username), l.fields, true
			}
			v, ok, err := c.lookup(ctx, d, l, cacheKey{kind: kindACL, source: int32(d.next), sum: d.sum}, d.res.Username, block)
			if !ok {
				return false
			}
			if err != nil {
				c.fail(d, l.name, d.res.Username, err)
				continue
			}
			if len(c.acls) == 1 {
				d.res.Matcher = v.matcher
				if len(v.perClient) > 0 {
					d.res.Matcher = withOwn(v.matcher, applyTemplates(nil, v.perClient, d.r, d.res.Username))
				}
			} else {
				d.rules = appendRules(d.rules, v.rules)
				d.own = appendRules(d.own, v.answer.Rules)
				d.own = applyTemplates(d.own, v.perClient, d.r, d.res.Username)
			}
			d.next++

		default:
			return true
		}
	}
}

// appendRules appends src, a cached value's rules, to dst, the rules of
// a decision's ACL sources so far. The first list is taken as it is,
// clipped so that the next append copies it instead of writing into the
// cached value; a client whose rules come from one of the sources
// alone then costs no copy.
func appendRules(dst, src []Rule) []Rule {
	if len(dst) == 0 {
		return slices.Clip(src)
	}
	return append(dst, src...)
}

// noneDecided ends authentication when no source allowed or denied.
func (c *Chain) noneDecided(d *decision) {
	r := d.r
	if len(c.sources) > 0 && !(c.allowAnonymous && !r.HasUsername && !r.HasPassword) {
		d.res = Result{Outcome: NotAuthorized, Username: r.Username}
		d.stage = stageDone
		return
	}
	d.res = Result{Outcome: Allowed, Username: r.Username}
	c.toACL(d)
}

// allowed ends authentication with source's Allow answer v.
func (c *Chain) allowed(d *decision, source string, v *cacheValue) {
	a := &v.answer
	d.res = Result{Outcome: Allowed, Superuser: a.Superuser, Username: d.r.Username, Source: source}
	if a.Username != "" {
		d.res.Username = a.Username
	}
	switch {
	case a.Superuser:
		d.stage = stageDone
	case a.HasRules:
		d.res.Matcher, d.res.FromAnswer = v.matcher, true
		d.stage = stageDone
	default:
		c.toACL(d)
	}
}

// toACL starts the ACL stage, or ends the decision when no ACL source is
// configured.
func (c *Chain) toACL(d *decision) {
	if len(c.acls) == 0 {
		d.stage = stageDone
		return
	}
	d.stage, d.next, d.missed, d.hasSum = stageACL, 0, false, false
}

// fail ends d as Unavailable because source failed.
func (c *Chain) fail(d *decision, source, username string, err error) {
	d.res = Result{Outcome: Unavailable, Username: username, Source: source, Err: err}
	d.stage = stageDone
}

// lookup answers d's question k to l: from the cache or the breaker
// at once, by asking l at once when it answers from memory, or, with
// block set, by a backend call. It reports false when a call is due and
// block is not set; d remembers that the cache missed, so that the
// lookup is counted once.
func (c *Chain) lookup(ctx context.Context, d *decision, l *chainLink, k cacheKey, user string, block bool) (*cacheValue, bool, error) {
	if !d.missed {
		v, err := c.peek(l, k)
		if v != nil || err != nil {
			return v, true, err
		}
		d.missed = true
	}
	if l.local {
		d.missed = false
		v, err := c.ask(ctx, l, k, d.r, user)
		return v, true, err
	}
	if !block {
		return nil, false, nil
	}
	d.missed = false
	v, err := c.fetch(ctx, l, k, d.r, user)
	return v, true, err
}

// peek counts a lookup and answers it from the cache, or fails it when
// the backend's breaker is open. Both results nil: a call is due.
func (c *Chain) peek(l *chainLink, k cacheKey) (*cacheValue, error) {
	m := l.b.m
	m.lookups.Inc()
	if v := c.cache.get(k); v != nil {
		m.hits.Inc()
		m.countValue(k.kind, v)
		return v, nil
	}
	m.misses.Inc()
	if l.b.brk.failFast(c.clock.now()) {
		m.errors.Inc()
		return nil, l.b.downErr
	}
	return nil, nil
}

// fetch answers question k to l by a backend call, or by joining one
// under way, and counts the result. r is copied for the call, which may
// outlive the wait.
func (c *Chain) fetch(ctx context.Context, l *chainLink, k cacheKey, r *Request, user string) (*cacheValue, error) {
	rc := detachRequest(r)
	v, err := c.cache.do(ctx, k, func(cctx context.Context) (*cacheValue, error) {
		return c.call(cctx, l, rc, user)
	})
	if err != nil {
		if _, ok := err.(*unavailableError); !ok {
			err = newUnavailable(l.name, err, nil) // the wait's context, or the call's deadline
		}
		l.b.m.countError(err)
		return nil, err
	}
	l.b.m.countValue(k.kind, v)
	return v, nil
}

// ask answers question k to l, a source that answers from memory, on the
// calling goroutine, and keeps the answer for the TTL. Identical
// questions asked at once are not merged: each worker asks its own, and
// the first answer to reach the cache ends the repeats.
func (c *Chain) ask(ctx context.Context, l *chainLink, k cacheKey, r *Request, user string) (*cacheValue, error) {
	b := l.b
	epoch := c.cache.epoch.Load()
	b.m.inflight.Inc()
	start := time.Now()
	v, err := l.call(ctx, r, user)
	b.m.duration.UpdateDuration(start)
	b.m.inflight.Dec()
	if err != nil {
		err = newUnavailable(l.name, err, r.Password)
		b.m.countError(err)
		return nil, err
	}
	c.cache.store(k, v, epoch)
	b.m.countValue(k.kind, v)
	return v, nil
}

// call makes one backend call, on a flight's goroutine, with ctx's
// deadline: through the breaker, within the concurrency bound.
func (c *Chain) call(ctx context.Context, l *chainLink, r *Request, user string) (*cacheValue, error) {
	b := l.b
	ok, trial := b.brk.allow(c.clock.now())
	if !ok {
		return nil, b.downErr
	}
	select {
	case b.sem <- struct{}{}:
	default:
		if c.onWait != nil {
			c.onWait()
		}
		select {
		case b.sem <- struct{}{}:
		case <-ctx.Done():
			err := fmt.Errorf("no free call slot (%d under way): %w", cap(b.sem), ctx.Err())
			if trial {
				b.brk.record(err, true, c.clock.now(), nil)
			}
			return nil, newUnavailable(l.name, err, nil)
		}
	}
	b.m.inflight.Inc()
	start := time.Now()
	v, err := l.call(ctx, r, user)
	b.m.duration.UpdateDuration(start)
	b.m.inflight.Dec()
	<-b.sem
	b.brk.record(err, trial, c.clock.now(), r.Password)
	if err != nil {
		return nil, newUnavailable(l.name, err, r.Password)
	}
	return v, nil
}

func detachRequest(r *Request) *Request {
	rc := *r
	rc.Password = slices.Clone(r.Password)
	rc.CertSANs = slices.Clone(r.CertSANs)
	return &rc
}

// isTimeout reports whether err is a deadline passing.
func timedOut(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
