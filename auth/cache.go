package auth

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The cache in front of the backends.
//
// A key names one question asked of one source: the kind of question
// (authentication or ACL), the source's place in the chain, and a SHA-256
// digest of the parts of the request the source's answer depends on (see
// keys.go). The digest is salted with random
// bytes drawn when the chain is built, so the cache holds nothing from
// which a password could be recovered by guessing: not the password, not
// an unsalted hash of it.
//
// The cache is split in shards by key, each with its own lock and its own
// share of the bound on entries. Eviction is CLOCK (second chance): a hit
// sets the entry's reference bit under the shard's read lock, so hits do
// not serialise on a write lock as they would with an LRU list; an insert
// into a full shard sweeps the hand past referenced entries, clearing
// their bits, to the first unreferenced or expired one.
//
// Questions asked again while the first is still being answered join the
// call under way (a flight) instead of making another one. A flight runs
// on its own goroutine with its own deadline, so that each waiter can give
// up on its own context without cancelling the call for the others.
//
// Lock order: a shard's mu is a leaf; nothing else is locked while it is
// held.

// chainClock reads a monotonic time for TTLs and circuit breaker cooldowns.
// It must be safe for concurrent use.
type chainClock interface {
	now() time.Duration
}

// monoClock is the real clock: time since the chain was built, read from
// the monotonic clock.
type monoClock struct{ origin time.Time }

func (c monoClock) now() time.Duration { return time.Since(c.origin) }

// Question kinds, the first field of a cache key.
const (
	kindAuth uint8 = iota
	kindACL
)

// cacheKey names one question to one source.
type cacheKey struct {
	kind   uint8
	source int32 // index in ChainConfig.Sources or ChainConfig.ACLs
	sum    [sha256.Size]byte
}

// cacheValue is one source's answer, shared read-only by every lookup
// that gets it; nothing modifies it once it is built.
type cacheValue struct {
	answer Answer // kindAuth; Rules is nil, see matcher
	// rules are an ACL source's rules for the client (kindACL, in a
	// chain with more than one ACL source, which concatenates them).
	rules []Rule
	// matcher is compiled from answer.Rules (kindAuth, when
	// answer.HasRules) or from the ACL source's rules (kindACL, in a
	// chain with one ACL source), so that a hit compiles nothing.
	matcher *Matcher
	// perClient are an ACL source's rules that name a client's values
	// (kindACL, from a source that gives its rules as stored: see
	// templateACLSource); they are applied to each client that gets the
	// value, and added to matcher or rules for it alone.
	perClient []ruleTemplate
}

type cacheEntry struct {
	key     cacheKey
	val     *cacheValue
	expires time.Duration
	slot    int         // index in the shard's ring
	ref     atomic.Bool // CLOCK reference bit, set by hits under the read lock
}

// flight is one backend call and the lookups waiting for it.
type flight struct {
	done  chan struct{} // closed when val and err are set
	ctx   context.Context
	epoch uint64 // the cache's epoch when the call started
	val   *cacheValue
	err   error
}

type cacheShard struct {
	mu      sync.RWMutex
	m       map[cacheKey]*cacheEntry
	ring    []*cacheEntry // CLOCK ring; len(ring) <= limit
	hand    int
	limit   int
	flights map[cacheKey]*flight
	_       [64]byte // keep shards' locks off each other's cache lines
}

// answerCache is the chain's answer cache; see the top of this file. Its
// methods are safe for concurrent use.
type answerCache struct {
	ttl     time.Duration // 0: keep nothing, only merge concurrent calls
	timeout time.Duration // deadline of each call
	clock   chainClock
	shards  []cacheShard
	// epoch counts purges: a call that started before a purge does not
	// store its answer after it.
	epoch atomic.Uint64

	onJoin func() // tests: called, under a shard lock, when a lookup waits for a flight
}

// Shards: a cache has one per minShardEntries of its bound, up to
// maxCacheShards (a power of two); a cache that keeps nothing has
// maxCacheShards for its flights.
const (
	maxCacheShards  = 16
	minShardEntries = 1024
)

// newCache returns a cache that keeps answers for ttl (0: none) and at
// most size of them, and gives each call it makes the deadline timeout.
func newCache(ttl time.Duration, size int, timeout time.Duration, clk chainClock) *answerCache {
	if ttl <= 0 || size <= 0 {
		ttl, size = 0, 0
	}
	n := 1
	for n < maxCacheShards && (size == 0 || size/(2*n) >= minShardEntries) {
		n *= 2
	}
	c := &answerCache{ttl: ttl, timeout: timeout, clock: clk, shards: make([]cacheShard, n)}
	for i := range c.shards {
		s := &c.shards[i]
		s.limit = size / n
		s.m = make(map[cacheKey]*cacheEntry)
		s.flights = make(map[cacheKey]*flight)
	}
	return c
}

func (c *answerCache) shard(k *cacheKey) *cacheShard {
	h := binary.LittleEndian.Uint64(k.sum[:8])
	return &c.shards[h&uint64(len(c.shards)-1)]
}

// get returns k's unexpired answer, or nil.
func (c *answerCache) get(k cacheKey) *cacheValue {
	if c.ttl == 0 {
		return nil
	}
	s := c.shard(&k)
	now := c.clock.now()
	s.mu.RLock()
	e := s.m[k]
	if e == nil || now >= e.expires {
		s.mu.RUnlock()
		return nil
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	v := e.val
	s.mu.RUnlock()
	return v
}

// do returns k's answer: from the cache, from a call under way for k, or
// from call, started on a new goroutine with a context that expires after
// the cache's timeout. It waits until the answer comes, ctx is done, or
// the call's deadline passes (plus flightGrace) without the call
// returning (a source that ignores its context), whichever is first. A successful answer is kept
// for the TTL; an error is not kept.
func (c *answerCache) do(ctx context.Context, k cacheKey, call func(context.Context) (*cacheValue, error)) (*cacheValue, error) {
	s := c.shard(&k)
	epoch := c.epoch.Load()
	s.mu.Lock()
	if e := s.m[k]; e != nil && c.clock.now() < e.expires {
		v := e.val
		s.mu.Unlock()
		return v, nil
	}
	if err := ctx.Err(); err != nil {
		s.mu.Unlock()
		return nil, err // nobody would wait for a call started now
	}
	f := s.flights[k]
	if f == nil || f.epoch != epoch {
		cctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		f = &flight{done: make(chan struct{}), ctx: cctx, epoch: epoch}
		s.flights[k] = f
		go func() {
			v, err := call(cctx)
			c.land(s, k, f, v, err)
			cancel()
		}()
	}
	if c.onJoin != nil {
		c.onJoin()
	}
	s.mu.Unlock()

	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-f.ctx.Done():
		// A call that honours its deadline returns its own error (a
		// clearer one) right after it; one that does not is left behind.
		t := time.NewTimer(flightGrace)
		defer t.Stop()
		select {
		case <-f.done:
			return f.val, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, f.ctx.Err()
		}
	}
}

// flightGrace is how long after a call's deadline its waiters still wait
// for its answer.
const flightGrace = 20 * time.Millisecond

// land ends flight f with the call's answer: it stores a successful one,
// unless the cache was purged since the call started, and wakes the
// waiters.
func (c *answerCache) land(s *cacheShard, k cacheKey, f *flight, v *cacheValue, err error) {
	s.mu.Lock()
	if s.flights[k] == f {
		delete(s.flights, k)
	}
	if err == nil && c.ttl > 0 && f.epoch == c.epoch.Load() {
		now := c.clock.now()
		s.insertLocked(k, v, now, now+c.ttl)
	}
	s.mu.Unlock()
	f.val, f.err = v, err
	close(f.done)
}

// store keeps v, the answer to k of a call that started at the cache's
// epoch epoch, for the TTL, unless the cache was purged since.
func (c *answerCache) store(k cacheKey, v *cacheValue, epoch uint64) {
	if c.ttl == 0 || epoch != c.epoch.Load() {
		return
	}
	s := c.shard(&k)
	s.mu.Lock()
	if epoch == c.epoch.Load() {
		now := c.clock.now()
		s.insertLocked(k, v, now, now+c.ttl)
	}
	s.mu.Unlock()
}

// insertLocked stores v under k until expires, evicting an entry when the
// shard is full: the first one the hand finds expired at now or not
// referenced since the hand last passed.
//
// REQUIRES: s.mu held for writing.
func (s *cacheShard) insertLocked(k cacheKey, v *cacheValue, now, expires time.Duration) {
	e := &cacheEntry{key: k, val: v, expires: expires}
	if old := s.m[k]; old != nil {
		e.slot = old.slot
		s.ring[e.slot] = e
		s.m[k] = e
		return
	}
	if s.limit == 0 {
		return
	}
	if len(s.ring) < s.limit {
		e.slot = len(s.ring)
		s.ring = append(s.ring, e)
		s.m[k] = e
		return
	}
	for {
		old := s.ring[s.hand]
		if !old.ref.Load() || old.expires <= now {
			delete(s.m, old.key)
			e.slot = s.hand
			s.ring[s.hand] = e
			s.m[k] = e
			s.hand = (s.hand + 1) % len(s.ring)
			return
		}
		old.ref.Store(false)
		s.hand = (s.hand + 1) % len(s.ring)
	}
}

// purge drops every stored answer; calls under way do not store theirs.
func (c *answerCache) purge() {
	c.epoch.Add(1)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.m)
		clear(s.ring)
		s.ring = s.ring[:0]
		s.hand = 0
		s.mu.Unlock()
	}
}

// len returns the number of stored answers, expired ones included.
func (c *answerCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

func flagByte(hasUsername, hasPassword bool) byte {
	var f byte
	if hasUsername {
		f |= 1
	}
	if hasPassword {
		f |= 2
	}
	return f
}

func appendSumField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// remoteHost returns the host part of an "ip:port" address: the part in
// brackets of "[ipv6]:port", the part before the colon of "ipv4:port",
// and the whole address when it has no port (a bare IPv6 address, a Unix
// socket path).
func addrHost(addr string) string {
	if strings.HasPrefix(addr, "[") {
		if i := strings.IndexByte(addr, ']'); i > 0 {
			return addr[1:i]
		}
		return addr
	}
	if i := strings.IndexByte(addr, ':'); i >= 0 && strings.IndexByte(addr[i+1:], ':') < 0 {
		return addr[:i]
	}
	return addr
}
