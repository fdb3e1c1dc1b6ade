package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func cacheTestKey(i byte) cacheKey { return cacheKey{kind: kindAuth, sum: [32]byte{i}} }

func cachedVerdict(v Verdict) *cacheValue { return &cacheValue{answer: Answer{Verdict: v}} }

// put stores v under k through a call, as the chain does.
func cachePut(t *testing.T, c *answerCache, k cacheKey, v *cacheValue) {
	t.Helper()
	got, err := c.do(context.Background(), k, func(context.Context) (*cacheValue, error) { return v, nil })
	if err != nil || got != v {
		t.Fatalf("do = %v, %v", got, err)
	}
}

func TestCacheTTL(t *testing.T) {
	clk := &stepClock{}
	c := newCache(time.Minute, 10, time.Second, clk)
	v := cachedVerdict(Allow)
	cachePut(t, c, cacheTestKey(1), v)
	if c.get(cacheTestKey(1)) != v {
		t.Fatal("stored answer not found")
	}
	if c.get(cacheTestKey(2)) != nil {
		t.Fatal("an answer found for another key")
	}
	clk.advance(time.Minute - 1)
	if c.get(cacheTestKey(1)) != v {
		t.Fatal("answer gone before its TTL")
	}
	clk.advance(1)
	if c.get(cacheTestKey(1)) != nil {
		t.Fatal("answer kept past its TTL")
	}
	// An expired entry is asked again, and replaced.
	w := cachedVerdict(Deny)
	cachePut(t, c, cacheTestKey(1), w)
	if c.get(cacheTestKey(1)) != w || c.len() != 1 {
		t.Fatalf("expired entry not replaced: %d entries", c.len())
	}
}

func TestCacheErrorsNotKept(t *testing.T) {
	c := newCache(time.Minute, 10, time.Second, &stepClock{})
	boom := errors.New("boom")
	_, err := c.do(context.Background(), cacheTestKey(1), func(context.Context) (*cacheValue, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("do = %v, want the call's error", err)
	}
	if c.get(cacheTestKey(1)) != nil || c.len() != 0 {
		t.Error("an error was kept")
	}
}

func TestCacheBound(t *testing.T) {
	for _, size := range []int{1, 4, 1000, 3000, 5000} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			c := newCache(time.Hour, size, time.Second, &stepClock{})
			for i := range 3 * size {
				k := cacheKey{source: int32(i)}
				k.sum[0], k.sum[1], k.sum[2] = byte(i), byte(i>>8), byte(i>>16)
				sh := c.shard(&k)
				sh.mu.Lock()
				sh.insertLocked(k, cachedVerdict(Allow), 0, time.Hour)
				sh.mu.Unlock()
				if n := c.len(); n > size {
					t.Fatalf("%d entries after %d inserts, bound %d", n, i+1, size)
				}
			}
			if n := c.len(); n != size {
				t.Errorf("%d entries, want the bound %d", n, size)
			}
		})
	}
}

func TestCacheClockEviction(t *testing.T) {
	clk := &stepClock{}
	c := newCache(time.Hour, 4, time.Second, clk)
	for i := byte(1); i <= 4; i++ {
		cachePut(t, c, cacheTestKey(i), cachedVerdict(Allow))
	}
	c.get(cacheTestKey(1)) // referenced: gets a second chance
	c.get(cacheTestKey(3))
	cachePut(t, c, cacheTestKey(5), cachedVerdict(Allow))
	if c.get(cacheTestKey(2)) != nil {
		t.Error("entry 2, the first unreferenced one, was not evicted")
	}
	for _, i := range []byte{1, 3, 4, 5} {
		if c.get(cacheTestKey(i)) == nil {
			t.Errorf("entry %d evicted", i)
		}
	}

}

func TestCacheEvictsExpiredFirst(t *testing.T) {
	clk := &stepClock{}
	c := newCache(time.Hour, 4, time.Second, clk)
	for i := byte(1); i <= 4; i++ {
		cachePut(t, c, cacheTestKey(i), cachedVerdict(Allow)) // slots 0-3, expire at 60m
	}
	clk.advance(30 * time.Minute)
	c.get(cacheTestKey(1))
	cachePut(t, c, cacheTestKey(5), cachedVerdict(Allow)) // passes 1, evicts 2: slot 1
	cachePut(t, c, cacheTestKey(6), cachedVerdict(Allow)) // evicts 3: slot 2
	cachePut(t, c, cacheTestKey(7), cachedVerdict(Allow)) // evicts 4: slot 3
	c.get(cacheTestKey(1))
	cachePut(t, c, cacheTestKey(8), cachedVerdict(Allow)) // passes 1, evicts 5: slot 1; the hand is at slot 2
	for _, i := range []byte{1, 6, 7, 8} {
		if c.get(cacheTestKey(i)) == nil {
			t.Fatalf("entry %d evicted early", i)
		}
	}
	clk.advance(40 * time.Minute) // 1 has expired; 6, 7, 8 have not, and all are referenced
	cachePut(t, c, cacheTestKey(9), cachedVerdict(Allow))
	for _, i := range []byte{6, 7, 8, 9} {
		if c.get(cacheTestKey(i)) == nil {
			t.Errorf("entry %d evicted while an expired one was there", i)
		}
	}
	if n := c.len(); n != 4 {
		t.Errorf("%d entries, want 4", n)
	}
}

func TestCachePurge(t *testing.T) {
	c := newCache(time.Hour, 10, time.Second, &stepClock{})
	cachePut(t, c, cacheTestKey(1), cachedVerdict(Allow))

	// A call that started before the purge does not store its answer.
	entered := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int64
	slow := func(context.Context) (*cacheValue, error) {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
		return cachedVerdict(Deny), nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := c.do(context.Background(), cacheTestKey(2), slow); err != nil {
			t.Errorf("do = %v", err)
		}
	}()
	<-entered
	c.purge()
	if c.get(cacheTestKey(1)) != nil || c.len() != 0 {
		t.Fatal("purge kept an answer")
	}
	// A question after the purge does not join the call from before it.
	if _, err := c.do(context.Background(), cacheTestKey(2), slow); err != nil || calls.Load() != 2 {
		t.Fatalf("do after purge = %v with %d calls, want a call of its own", err, calls.Load())
	}
	close(release)
	<-done
	if n := c.len(); n != 1 {
		t.Errorf("%d entries, want only the answer from after the purge", n)
	}
}

func TestCacheMergesWithoutTTL(t *testing.T) {
	c := newCache(0, 0, time.Second, &stepClock{})
	const n = 10
	all := make(chan struct{})
	var joined, calls atomic.Int64
	c.onJoin = func() {
		if joined.Add(1) == n {
			close(all)
		}
	}
	v := cachedVerdict(Allow)
	errs := make(chan error, n)
	for range n {
		go func() {
			got, err := c.do(context.Background(), cacheTestKey(1), func(context.Context) (*cacheValue, error) {
				calls.Add(1)
				<-all
				return v, nil
			})
			if err == nil && got != v {
				err = errors.New("another value")
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 || c.len() != 0 {
		t.Errorf("%d calls, %d entries; want 1 call and nothing kept", calls.Load(), c.len())
	}
}

func TestCacheWaiterContext(t *testing.T) {
	c := newCache(time.Minute, 10, time.Hour, &stepClock{})
	release := make(chan struct{})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.do(ctx, cacheTestKey(1), func(context.Context) (*cacheValue, error) {
		<-release
		return cachedVerdict(Allow), nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("do = %v, want the waiter's deadline", err)
	}
}

func TestCacheDoneContextStartsNoCall(t *testing.T) {
	c := newCache(time.Minute, 10, time.Second, &stepClock{})
	v := cachedVerdict(Allow)
	cachePut(t, c, cacheTestKey(1), v)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, err := c.do(ctx, cacheTestKey(1), nil); got != v || err != nil {
		t.Errorf("do = %v, %v; want the cached answer", got, err)
	}
	release := make(chan struct{})
	defer close(release)
	k := cacheTestKey(2)
	_, err := c.do(ctx, k, func(context.Context) (*cacheValue, error) {
		<-release
		return v, nil
	})
	s := c.shard(&k)
	s.mu.Lock()
	started := len(s.flights)
	s.mu.Unlock()
	if !errors.Is(err, context.Canceled) || started != 0 {
		t.Errorf("do = %v with %d calls under way; want the context's error and no call", err, started)
	}
}

// authSum is keySum of an authentication question by every field: the
// key of a source that does not say what it reads.
func authSum(salt *[32]byte, r *Request) [32]byte {
	return keySum(salt, kindAuth, AllFields, r, "")
}

func TestAuthSumSalted(t *testing.T) {
	var s1, s2 [32]byte
	s2[0] = 1
	r := chainUser("alice", "pw")
	if authSum(&s1, r) == authSum(&s2, r) {
		t.Error("two salts give one digest")
	}
	if authSum(&s1, r) != authSum(&s1, chainUser("alice", "pw")) {
		t.Error("one request gives two digests")
	}
	a, b := chainUser("x", ""), chainUser("x", "")
	a.ClientID, b.ClientID = "c", "ec"
	if keySum(&s1, kindACL, FieldClientID, a, "alice") == keySum(&s1, kindACL, FieldClientID, b, "alic") {
		t.Error("ACL digest fields run together")
	}
	if keySum(&s1, kindAuth, FieldUsername, r, "") == keySum(&s1, kindACL, FieldUsername, r, "") {
		t.Error("an authentication and an ACL question share a digest")
	}
	if keySum(&s1, kindAuth, FieldUsername, r, "") == keySum(&s1, kindAuth, FieldUsername|FieldListener, r, "") {
		t.Error("two field sets share a digest")
	}
}

// TestKeySumFlags checks that the username and password flags are in
// every key, whatever the fields: a request without a password never
// shares an answer with one that has one.
func TestKeySumFlags(t *testing.T) {
	var salt [32]byte
	for _, kind := range []uint8{kindAuth, kindACL} {
		for f := Fields(0); f <= AllFields; f++ {
			with := chainUser("alice", "")
			without := chainUser("alice", "")
			without.HasPassword = false
			if keySum(&salt, kind, f, with, "alice") == keySum(&salt, kind, f, without, "alice") {
				t.Fatalf("kind %d, fields %#x: HasPassword is not in the key", kind, f)
			}
			without = chainUser("", "")
			without.HasUsername = false
			anon := chainUser("", "")
			if keySum(&salt, kind, f, anon, "") == keySum(&salt, kind, f, without, "") {
				t.Fatalf("kind %d, fields %#x: HasUsername is not in the key", kind, f)
			}
		}
	}
}

// sumFields is what authSum must tell apart.
func sumFields(r *Request) string {
	return strings.Join([]string{
		strconv.FormatBool(r.HasUsername), strconv.FormatBool(r.HasPassword),
		strconv.Itoa(int(r.Protocol)), strconv.Quote(r.Username), strconv.Quote(string(r.Password)),
		strconv.Quote(r.ClientID), strconv.Quote(r.Listener), strconv.Quote(addrHost(r.Remote)),
		strconv.Quote(peerHost(r.Remote)), strconv.Quote(r.CertCN), fmt.Sprintf("%q", r.CertSANs),
	}, ",")
}

// FuzzAuthSum checks that the digest's encoding is unambiguous: two
// requests share a digest exactly when they agree on every field a
// source may see.
func FuzzAuthSum(f *testing.F) {
	f.Add("alice", "pw", "c1", "alice", "pw", "c1", byte(0))
	f.Add("ab", "c", "x", "a", "bc", "x", byte(3))
	f.Add("", "", "", "", "", "", byte(0xff))
	f.Add("u", "p\x00q", "1.2.3.4:5", "u", "p", "1.2.3.4:6", byte(0x11))
	f.Fuzz(func(t *testing.T, u1, p1, x1, u2, p2, x2 string, flags byte) {
		mk := func(u, p, x string, fl byte) *Request {
			r := &Request{Username: u, Password: []byte(p), HasUsername: fl&1 != 0, HasPassword: fl&2 != 0, Protocol: fl >> 6}
			switch fl >> 2 & 3 {
			case 0:
				r.ClientID = x
			case 1:
				r.Remote = x
			case 2:
				r.CertCN = x
			case 3:
				r.CertSANs = strings.Split(x, ",")
			}
			return r
		}
		var salt [32]byte
		a, b := mk(u1, p1, x1, flags), mk(u2, p2, x2, flags>>4|flags<<4)
		same := sumFields(a) == sumFields(b)
		if got := authSum(&salt, a) == authSum(&salt, b); got != same {
			t.Errorf("requests %q and %q: same digest %v, same fields %v", sumFields(a), sumFields(b), got, same)
		}
	})
}

func TestAddrHost(t *testing.T) {
	tests := map[string]string{
		"192.0.2.1:1883":       "192.0.2.1",
		"[2001:db8::1]:1883":   "2001:db8::1",
		"[2001:db8::1]":        "2001:db8::1",
		"2001:db8::1":          "2001:db8::1",
		"host.example:8883":    "host.example",
		"/run/gannet.sock":     "/run/gannet.sock",
		"":                     "",
		"[broken":              "[broken",
		"[fe80::1%eth0]:50000": "fe80::1%eth0",
	}
	for in, want := range tests {
		if got := addrHost(in); got != want {
			t.Errorf("addrHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzAddrHost checks that addrHost takes a substring of its input, and
// gives back the host of any address net.JoinHostPort builds.
func FuzzAddrHost(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "2001:db8::1", "", "a:b:c", "[x", "fe80::1%eth0"} {
		f.Add(s, uint16(1883))
	}
	f.Fuzz(func(t *testing.T, host string, port uint16) {
		if got := addrHost(host); !strings.Contains(host, got) {
			t.Errorf("addrHost(%q) = %q, not part of it", host, got)
		}
		if strings.ContainsAny(host, "[]") {
			return
		}
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		if got := addrHost(addr); got != host {
			t.Errorf("addrHost(%q) = %q, want %q", addr, got, host)
		}
		if h, _, err := net.SplitHostPort(addr); err == nil && h != host {
			t.Fatalf("net.SplitHostPort(%q) = %q: the property is wrong", addr, h)
		}
	})
}

func TestEscapeLabelValue(t *testing.T) {
	tests := map[string]string{
		"redis":     "redis",
		`a"b`:       `a\"b`,
		`a\b`:       `a\\b`,
		"a\nb":      `a\nb`,
		`\"` + "\n": `\\\"\n`,
	}
	for in, want := range tests {
		if got := escapeLabelValue(in); got != want {
			t.Errorf("escapeLabelValue(%q) = %q, want %q", in, got, want)
		}
	}
	if !slices.Equal([]byte(escapeLabelValue("ok")), []byte("ok")) {
		t.Error("plain value changed")
	}
}
