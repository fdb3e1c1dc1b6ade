package auth

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func allow(a Access, filter string) Rule { return Rule{Filter: filter, Access: a} }
func deny(a Access, filter string) Rule  { return Rule{Filter: filter, Access: a, Deny: true} }

func TestMatcherTopics(t *testing.T) {
	type check struct {
		topic        string
		write, read  bool
		sub          SubAccess
		skipSubCheck bool
	}
	tests := []struct {
		name   string
		rules  []Rule
		checks []check
	}{
		{
			name:  "no rules deny everything",
			rules: nil,
			checks: []check{
				{topic: "a", sub: SubDenied},
				{topic: "$SYS/x", sub: SubDenied},
			},
		},
		{
			name:  "literal read and write",
			rules: []Rule{allow(Read, "a/b"), allow(Write, "c")},
			checks: []check{
				{topic: "a/b", read: true, sub: SubAllowed},
				{topic: "c", write: true, sub: SubDenied},
				{topic: "a", sub: SubDenied},
				{topic: "a/b/c", sub: SubDenied},
				{topic: "a/", sub: SubDenied},
				{topic: "/a/b", sub: SubDenied},
				{topic: "A/b", sub: SubDenied},
			},
		},
		{
			name:  "plus matches one level, empty included",
			rules: []Rule{allow(ReadWrite, "a/+/c")},
			checks: []check{
				{topic: "a/b/c", read: true, write: true, sub: SubAllowed},
				{topic: "a//c", read: true, write: true, sub: SubAllowed},
				{topic: "a/b/c/d", sub: SubDenied},
				{topic: "a/c", sub: SubDenied},
			},
		},
		{
			name:  "hash matches the parent and below",
			rules: []Rule{allow(ReadWrite, "a/#")},
			checks: []check{
				{topic: "a", read: true, write: true, sub: SubAllowed},
				{topic: "a/", read: true, write: true, sub: SubAllowed},
				{topic: "a/b/c", read: true, write: true, sub: SubAllowed},
				{topic: "ab", sub: SubDenied},
				{topic: "b/a", sub: SubDenied},
			},
		},
		{
			name:  "root wildcards skip dollar topics",
			rules: []Rule{allow(ReadWrite, "#"), allow(ReadWrite, "+/x")},
			checks: []check{
				{topic: "a", read: true, write: true, sub: SubAllowed},
				{topic: "/", read: true, write: true, sub: SubAllowed},
				{topic: "$SYS", sub: SubDenied},
				{topic: "$SYS/x", sub: SubDenied},
				{topic: "$x", sub: SubDenied},
				{topic: "a/$SYS", read: true, write: true, sub: SubAllowed},
			},
		},
		{
			name:  "dollar rules match dollar topics",
			rules: []Rule{allow(Read, "$SYS/#"), allow(Read, "$share/+/x")},
			checks: []check{
				{topic: "$SYS", read: true, sub: SubAllowed},
				{topic: "$SYS/broker/uptime", read: true, sub: SubAllowed},
				{topic: "$share/g/x", read: true, sub: SubAllowed},
				{topic: "SYS/a", sub: SubDenied},
			},
		},
		{
			name: "deny wins",
			rules: []Rule{
				allow(ReadWrite, "a/#"),
				deny(Write, "a/secret"),
				deny(Read, "a/+/private"),
			},
			checks: []check{
				{topic: "a/x", read: true, write: true, sub: SubAllowed},
				{topic: "a/secret", read: true, sub: SubAllowed},
				{topic: "a/b/private", write: true, sub: SubDenied},
				{topic: "a/b/private/x", read: true, write: true, sub: SubAllowed},
			},
		},
		{
			name:   "deny alone grants nothing",
			rules:  []Rule{deny(ReadWrite, "#")},
			checks: []check{{topic: "a", sub: SubDenied}},
		},
		{
			name:  "deny of both",
			rules: []Rule{allow(ReadWrite, "#"), deny(ReadWrite, "x/+")},
			checks: []check{
				{topic: "x/y", sub: SubDenied},
				{topic: "x", read: true, write: true, sub: SubAllowed},
				{topic: "x/y/z", read: true, write: true, sub: SubAllowed},
			},
		},
		{
			name: "invalid rules skipped",
			rules: []Rule{
				allow(ReadWrite, ""), allow(ReadWrite, "a/#/b"), allow(ReadWrite, "a+"),
				allow(ReadWrite, "b#"), allow(0, "c"), {Filter: "d", Access: 4},
			},
			checks: []check{
				{topic: "a/x/b", sub: SubDenied},
				{topic: "a+", sub: SubDenied},
				{topic: "b#", skipSubCheck: true},
				{topic: "c", sub: SubDenied},
				{topic: "d", sub: SubDenied},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Compile(tt.rules)
			for _, c := range tt.checks {
				topic := []byte(c.topic)
				if got := m.CanPublish(topic); got != c.write {
					t.Errorf("CanPublish(%q) = %v, want %v", c.topic, got, c.write)
				}
				if got := m.CanRead(topic); got != c.read {
					t.Errorf("CanRead(%q) = %v, want %v", c.topic, got, c.read)
				}
				if c.skipSubCheck {
					continue
				}
				if got := m.CanSubscribe(topic); got != c.sub {
					t.Errorf("CanSubscribe(%q) = %v, want %v", c.topic, got, c.sub)
				}
			}
		})
	}
}

func TestMatcherSubscribe(t *testing.T) {
	tests := []struct {
		rules []Rule
		subs  map[string]SubAccess
	}{
		{
			rules: []Rule{allow(Read, "#")},
			subs: map[string]SubAccess{
				"#": SubAllowed, "a/#": SubAllowed, "+": SubAllowed, "+/+/#": SubAllowed,
				"$SYS/#": SubDenied, "$SYS": SubDenied, "$SYS/+": SubDenied,
				"a/$SYS": SubAllowed,
			},
		},
		{
			rules: []Rule{allow(Read, "a/+/c")},
			subs: map[string]SubAccess{
				"a/+/c": SubAllowed, "a/b/c": SubAllowed, "a/#": SubDenied, "a/+/+": SubDenied,
				"+/b/c": SubDenied, "a/b/#": SubDenied, "a/+": SubDenied,
			},
		},
		{
			rules: []Rule{allow(Read, "a/#")},
			subs: map[string]SubAccess{
				"a": SubAllowed, "a/#": SubAllowed, "a/+": SubAllowed, "a/+/+/#": SubAllowed,
				"#": SubDenied, "+": SubDenied, "+/#": SubDenied, "b/#": SubDenied,
			},
		},
		{
			rules: []Rule{allow(Read, "a/#"), deny(Read, "a/secret/#")},
			subs: map[string]SubAccess{
				"a/#":           SubPartial,
				"a/+":           SubPartial,
				"a/+/x":         SubPartial,
				"a/public/#":    SubAllowed,
				"a/secret":      SubDenied,
				"a/secret/x":    SubDenied,
				"a/secret/#":    SubDenied,
				"a":             SubAllowed,
				"a/secretive/#": SubAllowed,
			},
		},
		{
			// A Write deny does not restrict reading.
			rules: []Rule{allow(Read, "#"), deny(Write, "a/#")},
			subs:  map[string]SubAccess{"a/#": SubAllowed, "#": SubAllowed},
		},
		{
			// Deny rules at the root and under '$'.
			rules: []Rule{allow(Read, "#"), allow(Read, "$SYS/#"), deny(Read, "+/private")},
			subs: map[string]SubAccess{
				"#":              SubPartial,
				"$SYS/#":         SubAllowed,
				"$SYS/private":   SubAllowed,
				"x/private":      SubDenied,
				"x/+":            SubPartial,
				"x/public":       SubAllowed,
				"+/+/private":    SubAllowed,
				"x/private/more": SubAllowed,
			},
		},
		{
			rules: []Rule{allow(Read, "#"), deny(Read, "$SYS/#"), deny(Read, "a")},
			subs:  map[string]SubAccess{"#": SubPartial, "+": SubPartial, "b/#": SubAllowed, "+/+": SubAllowed, "+/#": SubPartial},
		},
		{
			// Rules under '$' do not overlap root wildcards.
			rules: []Rule{allow(Read, "#"), allow(Read, "$SYS/#"), deny(Read, "$SYS/#"), deny(Read, "$x")},
			subs: map[string]SubAccess{
				"#": SubAllowed, "+": SubAllowed, "+/#": SubAllowed, "+/+": SubAllowed,
				"$SYS/#": SubDenied, "$x": SubDenied, "$y": SubDenied,
			},
		},
		{
			// Invalid filters.
			rules: []Rule{allow(Read, "#")},
			subs:  map[string]SubAccess{"": SubDenied, "a/#/b": SubDenied, "a+": SubDenied, "#a": SubDenied},
		},
	}
	for i, tt := range tests {
		m := Compile(tt.rules)
		for f, want := range tt.subs {
			if got := m.CanSubscribe([]byte(f)); got != want {
				t.Errorf("case %d: CanSubscribe(%q) = %v, want %v", i, f, got, want)
			}
			if got := refSubscribe(tt.rules, f); got != want {
				t.Errorf("case %d: reference CanSubscribe(%q) = %v, want %v", i, f, got, want)
			}
		}
	}
}

func TestMatcherNil(t *testing.T) {
	var m *Matcher
	if !m.CanPublish([]byte("$SYS/x")) || !m.CanRead([]byte("a")) {
		t.Error("a nil Matcher denies")
	}
	if got := m.CanSubscribe([]byte("#")); got != SubAllowed {
		t.Errorf("nil CanSubscribe = %v, want allowed", got)
	}
	if m.Len() != 0 {
		t.Errorf("nil Len = %d", m.Len())
	}
}

func TestMatcherLen(t *testing.T) {
	m := Compile([]Rule{allow(Read, "a"), allow(Read, "a"), allow(Read, "a/#/b"), deny(Write, "c")})
	if m.Len() != 3 {
		t.Errorf("Len = %d, want 3", m.Len())
	}
	w := CompileWith([]Rule{allow(Read, "a")}, []Rule{deny(Read, "b"), allow(Read, "")})
	if w.Len() != 2 {
		t.Errorf("CompileWith Len = %d, want 2", w.Len())
	}
}

// TestMatcherManyChildren covers nodes with more literal children than
// smallKids, looked up through a map.
func TestMatcherManyChildren(t *testing.T) {
	var rules []Rule
	for i := range 3 * smallKids {
		rules = append(rules, allow(Write, "dev/"+strconv.Itoa(i)+"/out"))
		if i%3 == 0 {
			rules = append(rules, deny(Write, "dev/"+strconv.Itoa(i)+"/out"))
		}
	}
	m := Compile(rules)
	for i := range 4 * smallKids {
		topic := []byte("dev/" + strconv.Itoa(i) + "/out")
		want := i < 3*smallKids && i%3 != 0
		if got := m.CanPublish(topic); got != want {
			t.Errorf("CanPublish(%q) = %v, want %v", topic, got, want)
		}
	}
}

func TestMatcherNoAllocs(t *testing.T) {
	rules := benchRules(100)
	shared, own := rules[:90], rules[90:]
	for name, m := range map[string]*Matcher{"Compile": Compile(rules), "CompileWith": CompileWith(shared, own)} {
		topics, filters := benchTopics, benchFilters
		var sink int
		allocs := testing.AllocsPerRun(100, func() {
			for _, tp := range topics {
				if m.CanPublish(tp) {
					sink++
				}
				if m.CanRead(tp) {
					sink++
				}
			}
			for _, f := range filters {
				sink += int(m.CanSubscribe(f))
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, allocs)
		}
		if sink == 0 {
			t.Errorf("%s: nothing allowed", name)
		}
	}
}

func TestCompileShared(t *testing.T) {
	a := []Rule{allow(Read, "a/#"), deny(Read, "a/b")}
	b := slices.Clone(a)
	ma, mb := CompileShared(a), CompileShared(b)
	if ma != mb {
		t.Fatal("equal rule lists got different matchers")
	}
	if !ma.CanRead([]byte("a/c")) || ma.CanRead([]byte("a/b")) {
		t.Error("shared matcher answers wrongly")
	}
	// Any difference makes a different matcher.
	for i, other := range [][]Rule{
		{allow(Read, "a/#"), deny(Write, "a/b")},
		{allow(Read, "a/#"), allow(Read, "a/b")},
		{allow(Read, "a/#"), deny(Read, "a/c")},
		{deny(Read, "a/b"), allow(Read, "a/#")},
		{allow(Read, "a/#")},
		nil,
	} {
		if CompileShared(other) == ma {
			t.Errorf("list %d shares the matcher of a different list", i)
		}
	}
	// Changing the caller's slice afterwards changes nothing.
	a[1].Filter = "a/c"
	if CompileShared(b) != ma {
		t.Error("the cache kept the caller's slice")
	}

	// CompileWith shares the base trie between clients.
	w1 := CompileWith(b, []Rule{allow(Write, "c/1")})
	w2 := CompileWith(b, []Rule{allow(Write, "c/2")})
	if w1.base != ma.base || w2.base != ma.base {
		t.Error("CompileWith does not share the base")
	}
	if !w1.CanPublish([]byte("c/1")) || w1.CanPublish([]byte("c/2")) || !w2.CanPublish([]byte("c/2")) {
		t.Error("CompileWith answers wrongly")
	}
	if CompileWith(b, nil) != ma {
		t.Error("CompileWith without own rules is not the shared matcher")
	}
}

func TestMatcherCacheEviction(t *testing.T) {
	c := newMatcherCache(3)
	list := func(i int) []Rule { return []Rule{allow(Read, "x/"+strconv.Itoa(i))} }
	m0 := c.get(list(0))
	m1 := c.get(list(1))
	c.get(list(2))
	if c.get(list(0)) != m0 { // 0 is now the most recently used
		t.Fatal("entry 0 lost before eviction")
	}
	c.get(list(3)) // evicts 1
	if n := c.len(); n != 3 {
		t.Fatalf("cache holds %d lists, want 3", n)
	}
	if c.get(list(0)) != m0 {
		t.Error("the most recently used entry was evicted")
	}
	if c.get(list(1)) == m1 {
		t.Error("the least recently used entry was not evicted")
	}
	if !m1.CanRead([]byte("x/1")) {
		t.Error("an evicted matcher stopped working")
	}
}

func TestMatcherCacheCollision(t *testing.T) {
	c := newMatcherCache(10)
	a, b := []Rule{allow(Read, "a")}, []Rule{allow(Read, "b")}
	ma := c.get(a)
	// Plant a's entry under b's hash, as a hash collision would.
	c.mu.Lock()
	c.mu.byHash[c.hash(b)] = c.mu.byHash[c.hash(a)]
	c.mu.Unlock()
	mb := c.get(b)
	if mb == ma || mb.CanRead([]byte("a")) || !mb.CanRead([]byte("b")) {
		t.Error("a colliding rule list got another list's matcher")
	}
}

func TestCompileSharedConcurrent(t *testing.T) {
	const goroutines = 8
	var wg sync.WaitGroup
	results := make([][]*Matcher, goroutines)
	start := make(chan struct{})
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for i := range 50 {
				rules := []Rule{allow(ReadWrite, "conc/"+strconv.Itoa(i)+"/#"), deny(Read, "conc/x")}
				m := CompileShared(rules)
				if !m.CanPublish([]byte("conc/" + strconv.Itoa(i) + "/y")) {
					t.Errorf("matcher %d denies its own topic", i)
				}
				results[g] = append(results[g], m)
			}
		})
	}
	close(start)
	wg.Wait()
	for g := 1; g < goroutines; g++ {
		for i := range results[g] {
			if results[g][i] != results[0][i] {
				t.Errorf("goroutine %d got another matcher for list %d", g, i)
			}
		}
	}
}

// The reference implementation: a linear scan over the rules with a
// level matcher.

func refValid(f string) bool {
	if f == "" || len(f) > 0xffff {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && l != "+" && l != "#" {
			return false
		}
		if l == "#" && i != len(levels)-1 {
			return false
		}
	}
	return true
}

func dollarLevel(l string) bool { return strings.HasPrefix(l, "$") }

func refMatch(filter, topic string) bool {
	f, tp := strings.Split(filter, "/"), strings.Split(topic, "/")
	if (f[0] == "+" || f[0] == "#") && dollarLevel(tp[0]) {
		return false
	}
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(tp) || l != "+" && l != tp[i] {
			return false
		}
	}
	return len(f) == len(tp)
}

func refCheck(rules []Rule, topic string, a Access) bool {
	allowed := false
	for _, r := range rules {
		if !refValid(r.Filter) || r.Access&a == 0 || !refMatch(r.Filter, topic) {
			continue
		}
		if r.Deny {
			return false
		}
		allowed = true
	}
	return allowed
}

// refCover reports whether rule filter r matches every topic that
// subscription filter f matches (both split in levels).
func refCover(r, f []string, root bool) bool {
	if len(r) > 0 && r[0] == "#" {
		return !(root && dollarLevel(f[0]))
	}
	if len(f) == 0 || len(r) == 0 {
		return len(f) == 0 && len(r) == 0
	}
	switch {
	case f[0] == "#":
		return false
	case f[0] == "+":
		if r[0] != "+" {
			return false
		}
	case r[0] == "+":
		if root && dollarLevel(f[0]) {
			return false
		}
	case r[0] != f[0]:
		return false
	}
	return refCover(r[1:], f[1:], false)
}

// refOverlap reports whether some topic matches both r and f.
func refOverlap(r, f []string, root bool) bool {
	if len(r) > 0 && r[0] == "#" {
		return len(f) == 0 || !(root && dollarLevel(f[0]))
	}
	if len(f) > 0 && f[0] == "#" {
		return len(r) == 0 || !(root && dollarLevel(r[0]))
	}
	if len(f) == 0 || len(r) == 0 {
		return len(f) == 0 && len(r) == 0
	}
	switch {
	case r[0] == "+" && f[0] == "+":
	case r[0] == "+":
		if root && dollarLevel(f[0]) {
			return false
		}
	case f[0] == "+":
		if root && dollarLevel(r[0]) {
			return false
		}
	case r[0] != f[0]:
		return false
	}
	return refOverlap(r[1:], f[1:], false)
}

func refSubscribe(rules []Rule, filter string) SubAccess {
	if !refValid(filter) {
		return SubDenied
	}
	f := strings.Split(filter, "/")
	covered, overlapped := false, false
	for _, r := range rules {
		if !refValid(r.Filter) || r.Access&Read == 0 {
			continue
		}
		rl := strings.Split(r.Filter, "/")
		switch {
		case r.Deny && refCover(rl, f, true):
			return SubDenied
		case r.Deny && refOverlap(rl, f, true):
			overlapped = true
		case !r.Deny && refCover(rl, f, true):
			covered = true
		}
	}
	switch {
	case !covered:
		return SubDenied
	case overlapped:
		return SubPartial
	default:
		return SubAllowed
	}
}

// TestReferenceCoverOverlap checks refCover and refOverlap against their
// definitions: over every topic made of the filters' literal levels, a
// fresh level and a fresh '$' level, one level longer than the longer
// filter (every other topic behaves like one of these).
func TestReferenceCoverOverlap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 400 {
		r, f := randFilter(rng, smallLevels, 3), randFilter(rng, smallLevels, 3)
		rl, fl := strings.Split(r, "/"), strings.Split(f, "/")
		alphabet := []string{"z", "$z"}
		for _, l := range slices.Concat(rl, fl) {
			if l != "+" && l != "#" && !slices.Contains(alphabet, l) {
				alphabet = append(alphabet, l)
			}
		}
		cover, overlap := true, false
		for _, topic := range allTopics(alphabet, max(len(rl), len(fl))+1) {
			if refMatch(f, topic) {
				if refMatch(r, topic) {
					overlap = true
				} else {
					cover = false
				}
			}
		}
		if got := refCover(rl, fl, true); got != cover {
			t.Errorf("refCover(%q, %q) = %v, want %v", r, f, got, cover)
		}
		if got := refOverlap(rl, fl, true); got != overlap {
			t.Errorf("refOverlap(%q, %q) = %v, want %v", r, f, got, overlap)
		}
	}
}

func allTopics(alphabet []string, depth int) []string {
	var out []string
	level := []string{""}
	for d := 1; d <= depth; d++ {
		var next []string
		for _, p := range level {
			for _, l := range alphabet {
				if d == 1 {
					next = append(next, l)
				} else {
					next = append(next, p+"/"+l)
				}
			}
		}
		out = append(out, next...)
		level = next
	}
	return out
}

var (
	smallLevels = []string{"a", "b", "$s", "", "+", "+", "#"}
	wideLevels  = func() []string {
		l := []string{"+", "#", "$SYS", ""}
		for i := range 3 * smallKids {
			l = append(l, "n"+strconv.Itoa(i))
		}
		return l
	}()
)

// randFilter returns a random valid filter of up to depth levels drawn
// from levels.
func randFilter(rng *rand.Rand, levels []string, depth int) string {
	n := 1 + rng.IntN(depth)
	var b strings.Builder
	for i := range n {
		l := levels[rng.IntN(len(levels))]
		if l == "#" && i != n-1 {
			l = "+"
		}
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(l)
	}
	return b.String()
}

func randTopic(rng *rand.Rand, levels []string, depth int) string {
	n := 1 + rng.IntN(depth)
	parts := make([]string, n)
	for i := range parts {
		for {
			parts[i] = levels[rng.IntN(len(levels))]
			if parts[i] != "+" && parts[i] != "#" {
				break
			}
		}
	}
	return strings.Join(parts, "/")
}

func randRules(rng *rand.Rand, levels []string, n, depth int) []Rule {
	rules := make([]Rule, n)
	for i := range rules {
		rules[i] = Rule{
			Filter: randFilter(rng, levels, depth),
			Access: Access(1 + rng.IntN(3)),
			Deny:   rng.IntN(4) == 0,
		}
	}
	return rules
}

// TestMatcherAgainstReference compares the trie with the linear reference
// on random rules, topics and filters.
func TestMatcherAgainstReference(t *testing.T) {
	for _, tc := range []struct {
		name   string
		levels []string
		depth  int
		rules  int
	}{
		{"small", smallLevels, 4, 8},
		{"deep", smallLevels, 7, 30},
		{"wide", wideLevels, 4, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(len(tc.name)), 7))
			for iter := range 120 {
				rules := randRules(rng, tc.levels, rng.IntN(tc.rules+1), tc.depth)
				split := rng.IntN(len(rules) + 1)
				ms := map[string]*Matcher{
					"Compile":     Compile(rules),
					"CompileWith": CompileWith(rules[:split], rules[split:]),
				}
				for range 25 {
					topic := randTopic(rng, tc.levels, tc.depth+1)
					filter := randFilter(rng, tc.levels, tc.depth+1)
					for name, m := range ms {
						if got, want := m.CanPublish([]byte(topic)), refCheck(rules, topic, Write); got != want {
							t.Fatalf("iter %d %s: CanPublish(%q) = %v, want %v; rules %v", iter, name, topic, got, want, rules)
						}
						if got, want := m.CanRead([]byte(topic)), refCheck(rules, topic, Read); got != want {
							t.Fatalf("iter %d %s: CanRead(%q) = %v, want %v; rules %v", iter, name, topic, got, want, rules)
						}
						if got, want := m.CanSubscribe([]byte(filter)), refSubscribe(rules, filter); got != want {
							t.Fatalf("iter %d %s: CanSubscribe(%q) = %v, want %v; rules %v", iter, name, filter, got, want, rules)
						}
					}
				}
			}
		})
	}
}

// FuzzMatcher builds rules from spec, one per line: the first byte holds
// the access (bits 0-1), deny (bit 2) and whether the rule goes in the
// client's own part for CompileWith (bit 3); the rest is the filter. It
// checks subject as a topic and as a filter against the reference.
func FuzzMatcher(f *testing.F) {
	seeds := []struct{ spec, subject string }{
		{"\x03#\n\x05$SYS/#", "$SYS/x"},
		{"\x03a/#\n\x06a/b", "a/b"},
		{"\x01+/+\n\x0d+/b", "+/b"},
		{"\x03#\n\x05a/secret/#", "a/#"},
		{"\x01a/+/c\n\x09a/b/#", "a/+/c"},
		{"\x03/\n\x07//#", "//"},
		{"\x03a+\n\x03a/#/b", "a+"},
		{"\x01$SYS/+\n\x05+/x", "$SYS/x"},
		{"\x0b%u/#\n\x03\n\x01#", ""},
	}
	for _, s := range seeds {
		f.Add(s.spec, s.subject)
	}
	f.Fuzz(func(t *testing.T, spec, subject string) {
		var all, shared, own []Rule
		for line := range strings.SplitSeq(spec, "\n") {
			if line == "" {
				continue
			}
			r := Rule{Filter: line[1:], Access: Access(line[0] & 3), Deny: line[0]&4 != 0}
			all = append(all, r)
			if line[0]&8 != 0 {
				own = append(own, r)
			} else {
				shared = append(shared, r)
			}
		}
		m, w := Compile(all), CompileWith(shared, own)
		if !strings.ContainsAny(subject, "+#") {
			for _, a := range []Access{Read, Write} {
				want := refCheck(all, subject, a)
				if got := m.check([]byte(subject), a); got != want {
					t.Errorf("Compile: %v access to %q = %v, want %v", a, subject, got, want)
				}
				if got := w.check([]byte(subject), a); got != want {
					t.Errorf("CompileWith: %v access to %q = %v, want %v", a, subject, got, want)
				}
			}
		}
		want := refSubscribe(all, subject)
		if got := m.CanSubscribe([]byte(subject)); got != want {
			t.Errorf("Compile: CanSubscribe(%q) = %v, want %v", subject, got, want)
		}
		if got := w.CanSubscribe([]byte(subject)); got != want {
			t.Errorf("CompileWith: CanSubscribe(%q) = %v, want %v", subject, got, want)
		}
	})
}

func ExampleMatcher() {
	m := Compile([]Rule{
		{Filter: "sensors/#", Access: Read},
		{Filter: "sensors/+/calibration", Access: Read, Deny: true},
		{Filter: "sensors/dev1/out", Access: Write},
	})
	fmt.Println(m.CanPublish([]byte("sensors/dev1/out")))
	fmt.Println(m.CanRead([]byte("sensors/dev2/temp")))
	fmt.Println(m.CanRead([]byte("sensors/dev2/calibration")))
	fmt.Println(m.CanSubscribe([]byte("sensors/dev2/+")))
	fmt.Println(m.CanSubscribe([]byte("$SYS/#")))
	// Output:
	// true
	// true
	// false
	// partial
	// denied
}
