package auth

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
)

// A Matcher is one client's ACL rules compiled for the checks the broker
// makes on every PUBLISH, every delivery and every SUBSCRIBE.
//
// Semantics. A rule's Filter is an MQTT topic filter: '+' matches exactly
// one level, '#' (the whole last level) matches any number of levels
// including none, so "a/#" matches "a", "a/b" and "a/b/c"; and a filter
// whose first level is a wildcard never matches a topic whose first level
// starts with '$' [MQTT-4.7.2-1], so neither "#" nor "+/info" grants
// anything under "$SYS/". Deny rules win over allow rules; whatever no rule
// allows is denied.
//
//   - CanPublish(topic) is true iff some Write allow rule matches the topic
//     name and no Write deny rule does. CanRead(topic) is the same for Read:
//     may a message published on topic be delivered to this client.
//   - CanSubscribe(filter) compares whole filters. A rule covers a filter
//     when it matches every topic the filter can match, and overlaps it
//     when at least one topic matches both. The answer is SubDenied unless
//     a Read allow rule covers the filter, and SubDenied when a Read deny
//     rule covers it; otherwise SubAllowed when no Read deny rule overlaps
//     it, and SubPartial when one does: the broker then accepts the
//     subscription and asks CanRead for each message it would deliver on
//     it. The filter is passed without a shared subscription's
//     "$share/<group>/" prefix.
//
// A nil *Matcher means no ACL applies: every method allows everything.
//
// A Matcher is immutable: its methods may be called from any goroutine,
// concurrently, and allocate nothing. The rules are compiled into a trie
// keyed by topic level; a check walks the topic's levels once, following
// the literal child, the '+' child and the '#' mark at each node, so its
// cost grows with the depth of the topic and the number of wildcard paths
// that fit it, not with the number of rules. Nodes carry the union of the
// access bits below them, so a walk skips subtrees that cannot change the
// answer (the Write check ignores read-only rules; once an allow rule
// matched, only subtrees holding deny rules are visited).
type Matcher struct {
	base *trie // compiled rules; possibly shared with other matchers
	own  *trie // rules of this client alone (CompileWith); nil if none
	n    int   // rules compiled into base and own
}

// SubAccess is CanSubscribe's answer.
type SubAccess uint8

// CanSubscribe's answers.
const (
	// SubDenied refuses the subscription.
	SubDenied SubAccess = iota
	// SubAllowed accepts the subscription; every message it matches may
	// be delivered without another check.
	SubAllowed
	// SubPartial accepts the subscription, but some topics it matches are
	// denied: the broker asks CanRead for each message before delivering
	// it.
	SubPartial
)

func (s SubAccess) String() string {
	switch s {
	case SubAllowed:
		return "allowed"
	case SubPartial:
		return "partial"
	default:
		return "denied"
	}
}

// Compile builds a Matcher from rules. Rules whose Filter is not a valid
// MQTT topic filter (empty, longer than 65,535 bytes, '#' other than as the
// whole last level, '+' sharing its level with other characters) or whose
// Access has neither Read nor Write are skipped: sources report such rules
// when they load them. Compile keeps no reference to rules; the result is
// immutable and safe for concurrent use.
func Compile(rules []Rule) *Matcher {
	t := compileTrie(rules)
	return &Matcher{base: t, n: t.n}
}

// CompileShared is Compile for rule lists that many clients share (every
// user of an ACL file without client-id patterns): for a rule list equal
// (same rules in the same order) to one compiled recently, it returns the
// same *Matcher, so a hundred thousand clients with the same rules hold one
// trie. Matchers are interned in a bounded cache (sharedCacheSize lists,
// least recently used evicted; an evicted matcher stays valid for its
// holders). Safe for concurrent use; CompileShared keeps a copy of rules,
// not rules itself.
func CompileShared(rules []Rule) *Matcher {
	return sharedMatchers.get(rules)
}

// CompileWith returns a Matcher for shared and own together, as Compile
// of both lists would, but with shared compiled through CompileShared: the
// rules common to many clients (a user's block of an ACL file) are held
// once, and only own (the rules this client alone has, such as patterns
// that name its client id) is compiled for this client. Safe for
// concurrent use.
func CompileWith(shared, own []Rule) *Matcher {
	return withOwn(CompileShared(shared), own)
}

// withOwn returns a Matcher for the rules of s, a matcher CompileShared
// returned, and own together: s's compiled rules shared, own compiled
// for this client alone.
func withOwn(s *Matcher, own []Rule) *Matcher {
	if len(own) == 0 {
		return s
	}
	t := compileTrie(own)
	if t.n == 0 {
		return s
	}
	return &Matcher{base: s.base, own: t, n: s.n + t.n}
}

// Len returns the number of rules compiled into m (invalid rules skipped);
// 0 for a nil Matcher.
func (m *Matcher) Len() int {
	if m == nil {
		return 0
	}
	return m.n
}

// CanPublish reports whether the client may publish on topic (a topic name,
// without wildcards). It allocates nothing and keeps no reference to topic.
func (m *Matcher) CanPublish(topic []byte) bool {
	if m == nil {
		return true
	}
	return m.check(topic, Write)
}

// CanRead reports whether a message published on topic may be delivered to
// the client. It allocates nothing and keeps no reference to topic.
func (m *Matcher) CanRead(topic []byte) bool {
	if m == nil {
		return true
	}
	return m.check(topic, Read)
}

// CanSubscribe tells whether the client may subscribe to filter (a topic
// filter, without "$share/<group>/"): see Matcher for the meaning of the
// answers. An invalid filter is SubDenied. It allocates nothing and keeps
// no reference to filter.
func (m *Matcher) CanSubscribe(filter []byte) SubAccess {
	if m == nil {
		return SubAllowed
	}
	if !validFilter(filter) {
		return SubDenied
	}
	var acc subAcc
	if m.base.root.sub&readBits != 0 {
		m.base.root.subscribe(filter, 0, true, true, &acc)
	}
	if m.own != nil && acc.cov&denyRead == 0 && m.own.root.sub&readBits != 0 {
		m.own.root.subscribe(filter, 0, true, true, &acc)
	}
	switch {
	case acc.cov&allowRead == 0 || acc.cov&denyRead != 0:
		return SubDenied
	case acc.ovl&denyRead != 0:
		return SubPartial
	default:
		return SubAllowed
	}
}

// check answers CanPublish (a == Write) and CanRead (a == Read).
func (m *Matcher) check(topic []byte, a Access) bool {
	allow := bits(a)
	deny := allow << 2
	got := m.base.root.match(topic, 0, true, allow|deny)
	if got&deny == 0 && m.own != nil {
		got |= m.own.root.match(topic, 0, true, (allow|deny)&^got)
	}
	return got&allow != 0 && got&deny == 0
}

// bits are the kinds of rules held at a trie node: allow or deny, for Read
// or Write. The allow bits equal the Access bits; the deny bits are those
// shifted left by 2.
type bits uint8

const (
	allowRead  bits = bits(Read)
	allowWrite bits = bits(Write)
	denyRead   bits = bits(Read) << 2
	denyWrite  bits = bits(Write) << 2
	readBits        = allowRead | denyRead
	denyBits        = denyRead | denyWrite
)

func ruleBits(r Rule) bits {
	b := bits(r.Access & ReadWrite)
	if r.Deny {
		b <<= 2
	}
	return b
}

// smallKids is the number of literal children up to which a node looks a
// level up by scanning its names; a node with more children uses a map.
const smallKids = 8

// trie is a compiled rule list. Nodes are never changed once compileTrie
// returns.
type trie struct {
	root *node
	n    int // rules compiled
}

// node is one topic level of the rules' filters.
type node struct {
	names []string         // literal children's levels, in no order
	kids  []*node          // literal children, in the order of names
	index map[string]*node // literal children by level, when more than smallKids
	plus  *node            // the '+' child
	end   bits             // rules whose filter ends at this level
	hash  bits             // rules whose filter continues with "/#" ("#" at the root)
	sub   bits             // end|hash of this node and of every node below it
	down  bits             // sub of every child; at the root, of the children that can match a topic starting with '$' excluded
}

func compileTrie(rules []Rule) *trie {
	t := &trie{root: &node{}}
	for _, r := range rules {
		b := ruleBits(r)
		if b == 0 || !validFilter(r.Filter) {
			continue
		}
		t.n++
		n := t.root
		for start := 0; ; {
			end := strings.IndexByte(r.Filter[start:], '/')
			if end < 0 {
				end = len(r.Filter)
			} else {
				end += start
			}
			level := r.Filter[start:end]
			if level == "#" {
				n.hash |= b
				break
			}
			if level == "+" {
				if n.plus == nil {
					n.plus = &node{}
				}
				n = n.plus
			} else {
				n = n.addChild(level)
			}
			if end == len(r.Filter) {
				n.end |= b
				break
			}
			start = end + 1
		}
	}
	t.root.freeze(true)
	return t
}

// addChild returns n's literal child for level, added if missing. Only
// compileTrie calls it.
func (n *node) addChild(level string) *node {
	if n.index != nil {
		if c := n.index[level]; c != nil {
			return c
		}
	} else if i := slices.Index(n.names, level); i >= 0 {
		return n.kids[i]
	}
	c := &node{}
	n.names = append(n.names, level)
	n.kids = append(n.kids, c)
	switch {
	case n.index != nil:
		n.index[level] = c
	case len(n.names) > smallKids:
		n.index = make(map[string]*node, 2*len(n.names))
		for i, name := range n.names {
			n.index[name] = n.kids[i]
		}
	}
	return c
}

// freeze computes sub and down for n and below, once every rule is in.
func (n *node) freeze(root bool) {
	for i, c := range n.kids {
		c.freeze(false)
		if !root || !strings.HasPrefix(n.names[i], "$") {
			n.down |= c.sub
		}
	}
	if n.plus != nil {
		n.plus.freeze(false)
		n.down |= n.plus.sub
	}
	n.sub = n.end | n.hash | n.down
	for _, c := range n.kids {
		n.sub |= c.sub
	}
}

// child returns n's literal child for level, or nil.
func (n *node) child(level []byte) *node {
	if n.index != nil {
		return n.index[string(level)]
	}
	for i, name := range n.names {
		if name == string(level) {
			return n.kids[i]
		}
	}
	return nil
}

// levelEnd returns the index of the '/' that ends the level starting at
// start, or len(b). Levels are mostly short: a plain loop finds their end
// faster than bytes.IndexByte, which takes over for long ones.
func levelEnd(b []byte, start int) int {
	const short = 16
	for i := start; i < len(b); i++ {
		if b[i] == '/' {
			return i
		}
		if i-start == short {
			if j := bytes.IndexByte(b[i+1:], '/'); j >= 0 {
				return i + 1 + j
			}
			return len(b)
		}
	}
	return len(b)
}

// match returns the bits of need carried by rules at or below n that match
// the topic name from its level starting at start (start == len(topic)+1:
// no level left). It returns as soon as it finds a deny bit. root is true
// for the trie's root, where wildcards do not match a level starting with
// '$'. It follows one path in a loop and recurses only where both a
// literal child and a '+' child can match.
func (n *node) match(topic []byte, start int, root bool, need bits) bits {
	var got bits
	for {
		dollar := root && len(topic) > 0 && topic[0] == '$'
		if !dollar {
			got |= n.hash & need
		}
		if start > len(topic) {
			return got | n.end&need
		}
		if got&denyBits != 0 {
			return got
		}
		need &^= got
		end := levelEnd(topic, start)
		next := n.child(topic[start:end])
		if next != nil && next.sub&need == 0 {
			next = nil
		}
		if p := n.plus; p != nil && !dollar && p.sub&need != 0 {
			if next != nil {
				got |= next.match(topic, end+1, false, need)
				if got&denyBits != 0 {
					return got
				}
				need &^= got
				if p.sub&need == 0 {
					return got
				}
			}
			next = p
		}
		if next == nil {
			return got
		}
		n, start, root = next, end+1, false
	}
}

// subAcc gathers the read bits of the rules that cover a subscription
// filter (cov) and that overlap it (ovl).
type subAcc struct {
	cov, ovl bits
}

// subscribe adds to acc the rules at or below n that cover (when covering)
// or overlap the filter from its level starting at start (start ==
// len(filter)+1: no level left). covering is false below a point where a
// rule's literal level met the filter's '+': such rules cannot cover it.
func (n *node) subscribe(filter []byte, start int, root, covering bool, acc *subAcc) {
	if start > len(filter) {
		// The filter ends here: it matches the one topic of this path.
		b := (n.end | n.hash) & readBits
		if covering {
			acc.cov |= b
		}
		acc.ovl |= b
		return
	}
	end := levelEnd(filter, start)
	level := filter[start:end]
	dollar := root && len(level) > 0 && level[0] == '$'
	if !dollar {
		// A rule ending in '#' here matches whatever the rest is.
		if covering {
			acc.cov |= n.hash & readBits
		}
		acc.ovl |= n.hash & readBits
	}
	if acc.cov&denyRead != 0 {
		return
	}
	want := denyRead
	if covering {
		want = readBits
	}
	switch {
	case len(level) == 1 && level[0] == '#':
		// The filter matches this path's topic and everything below it
		// (at the root, everything not starting with '$'): each rule
		// here or below overlaps it; only a '#' rule here covers it.
		acc.ovl |= (n.end | n.down) & readBits
	case len(level) == 1 && level[0] == '+':
		if p := n.plus; p != nil && p.sub&want != 0 {
			p.subscribe(filter, end+1, false, covering, acc)
		}
		for i, c := range n.kids {
			if c.sub&denyRead == 0 || root && strings.HasPrefix(n.names[i], "$") {
				continue
			}
			c.subscribe(filter, end+1, false, false, acc)
		}
	default:
		if c := n.child(level); c != nil && c.sub&want != 0 {
			c.subscribe(filter, end+1, false, covering, acc)
		}
		if p := n.plus; p != nil && !dollar && p.sub&want != 0 {
			p.subscribe(filter, end+1, false, covering, acc)
		}
	}
}

// validFilter reports whether f is a topic filter a rule may hold: at
// least one byte [MQTT-4.7.3-1], at most 65,535, '#' only as the whole last
// level [MQTT-4.7.1-1], '+' only as a whole level [MQTT-4.7.1-2].
func validFilter[S ~string | ~[]byte](f S) bool {
	if len(f) == 0 || len(f) > 0xffff {
		return false
	}
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case '#':
			if i != len(f)-1 || i > 0 && f[i-1] != '/' {
				return false
			}
		case '+':
			if i > 0 && f[i-1] != '/' || i < len(f)-1 && f[i+1] != '/' {
				return false
			}
		}
	}
	return true
}

// sharedCacheSize bounds the number of rule lists CompileShared interns.
const sharedCacheSize = 4096

// sharedMatchers is CompileShared's cache.
var sharedMatchers = newMatcherCache(sharedCacheSize)

// matcherCache interns compiled matchers by rule list, least recently used
// evicted first.
type matcherCache struct {
	seed maphash.Seed
	max  int
	mu   struct {
		sync.Mutex
		byHash map[uint64]*list.Element // of *cached
		lru    list.List                // most recently used at the front
	}
}

type cached struct {
	hash  uint64
	rules []Rule // a copy of what m was compiled from
	m     *Matcher
}

func newMatcherCache(max int) *matcherCache {
	c := &matcherCache{seed: maphash.MakeSeed(), max: max}
	c.mu.byHash = map[uint64]*list.Element{}
	return c
}

func (c *matcherCache) get(rules []Rule) *Matcher {
	h := c.hash(rules)
	if e := c.lookup(h); e != nil {
		if slices.Equal(e.rules, rules) {
			return e.m
		}
		// Two lists with one hash: do not intern either in place
		// of the other.
		return Compile(rules)
	}
	e := &cached{hash: h, rules: slices.Clone(rules), m: Compile(rules)}
	return c.insert(e)
}

// lookup returns the entry for h, marked as the most recently used, or nil.
func (c *matcherCache) lookup(h uint64) *cached {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.mu.byHash[h]
	if el == nil {
		return nil
	}
	c.mu.lru.MoveToFront(el)
	return el.Value.(*cached)
}

// insert adds e unless another goroutine added the same list meanwhile, and
// returns the matcher to use.
func (c *matcherCache) insert(e *cached) *Matcher {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.mu.byHash[e.hash]; el != nil {
		if old := el.Value.(*cached); slices.Equal(old.rules, e.rules) {
			return old.m
		}
		return e.m
	}
	c.mu.byHash[e.hash] = c.mu.lru.PushFront(e)
	for c.mu.lru.Len() > c.max {
		last := c.mu.lru.Back()
		c.mu.lru.Remove(last)
		delete(c.mu.byHash, last.Value.(*cached).hash)
	}
	return e.m
}

// len returns the number of interned lists.
func (c *matcherCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.lru.Len()
}

func (c *matcherCache) hash(rules []Rule) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	var buf [10]byte
	for _, r := range rules {
		n := binary.PutUvarint(buf[:], uint64(len(r.Filter)))
		h.Write(buf[:n])
		h.WriteString(r.Filter)
		d := byte(0)
		if r.Deny {
			d = 1
		}
		h.WriteByte(byte(r.Access))
		h.WriteByte(d)
	}
	return h.Sum64()
}
