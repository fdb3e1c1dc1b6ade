package trie

import (
	"bytes"
	"math/rand/v2"
	"sync"
)

// Trie indexes topic filters: plain subscriptions, and shared groups
// "$share/<group>/<filter>" kept apart from them. Each entry is a key (a
// subscriber, a peer node: anything comparable) with a value. All methods
// are safe for concurrent use.
type Trie[K comparable, V any] struct {
	seed hashSeed // set by New, read-only after
	mu   struct {
		sync.RWMutex
		root  node[K, V]
		count int // entries, plain and shared
	}
}

// New returns an empty trie.
func New[K comparable, V any]() *Trie[K, V] {
	t := new(Trie[K, V])
	t.seed = hashSeed{rand.Uint64(), rand.Uint64() | 1} // an odd multiplier loses no bits
	return t
}

// Subscribe adds key's entry under filter, or replaces its value. A
// "$share/<group>/<filter>" filter adds key to that group, kept apart from
// plain subscriptions to <filter>. added is false when key had an entry
// under this filter already. first is true when key is the filter's first
// entry (for a share: the group's first member), the moment the cluster
// announces a route. The trie keeps substrings of filter.
func (t *Trie[K, V]) Subscribe(filter string, key K, val V) (added, first bool, err error) {
	group, f, err := parse(filter)
	if err != nil {
		return false, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.mu.root.insert(t.seed, f)
	subs := &n.subs
	if group != "" {
		g := n.group(group)
		if g == nil {
			g = &Group[K, V]{Name: group, Filter: f}
			e := n.getExt()
			e.groups = append(e.groups, g)
		}
		subs = &g.subs
	}
	first = subs.len() == 0
	if !subs.put(key, val) {
		return false, false, nil
	}
	t.mu.count++
	return true, first, nil
}

// group returns n's shared group called name, or nil.
func (n *node[K, V]) group(name string) *Group[K, V] {
	for _, g := range n.groups() {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// Unsubscribe removes key's entry under filter. removed reports that it
// existed; last that the filter (for a share: the group) has no entry
// left, the moment the cluster withdraws a route.
func (t *Trie[K, V]) Unsubscribe(filter string, key K) (removed, last bool, err error) {
	group, f, err := parse(filter)
	if err != nil {
		return false, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var buf [8]step[K, V]
	n, path := t.mu.root.lookup(t.seed, f, buf[:0])
	if n == nil {
		return false, false, nil
	}
	if group == "" {
		if !n.subs.del(key) {
			return false, false, nil
		}
		last = n.subs.len() == 0
	} else {
		g := n.group(group)
		if g == nil || !g.subs.del(key) {
			return false, false, nil
		}
		if last = g.subs.len() == 0; last {
			n.dropGroup(g)
		}
	}
	t.mu.count--
	n.prune(path)
	return true, last, nil
}

// dropGroup removes the empty group g from n.
func (n *node[K, V]) dropGroup(g *Group[K, V]) {
	gs := n.ext.groups
	for i := range gs {
		if gs[i] == g {
			last := len(gs) - 1
			gs[i] = gs[last]
			gs[last] = nil
			n.ext.groups = gs[:last]
			break
		}
	}
	if len(n.ext.groups) == 0 {
		n.ext.groups = nil
	}
	n.tidyExt()
}

// Match calls visit for every plain subscription whose filter matches
// topic, and visitGroup once for every shared group whose filter matches.
// A filter whose first level is a wildcard does not match a topic that
// starts with '$' [MQTT-4.7.2-1]. The order of calls is arbitrary.
//
// The callbacks run while the trie is read-locked: they must not call
// into it, and the *Group is valid only during its call. Match does not
// keep topic and allocates nothing.
func (t *Trie[K, V]) Match(topic []byte, visit func(K, V), visitGroup func(*Group[K, V])) {
	m := matcher[K, V]{t.seed, visit, visitGroup}
	dollar := len(topic) > 0 && topic[0] == '$'
	t.mu.RLock()
	m.match(&t.mu.root, topic, true, dollar)
	t.mu.RUnlock()
}

// matcher holds what stays the same during one Match.
type matcher[K comparable, V any] struct {
	seed       hashSeed
	visit      func(K, V)
	visitGroup func(*Group[K, V])
}

// match visits what matches below n. rest is the topic after the levels
// consumed so far; more is false once every level is consumed. noWild
// skips n's wildcard children: for the root when the topic starts with
// '$'.
func (m *matcher[K, V]) match(n *node[K, V], rest []byte, more, noWild bool) {
	x := n.ext
	if !more {
		m.entries(n)
		// "sport/#" matches "sport" too.
		if x != nil && x.hash != nil && !noWild {
			m.entries(x.hash)
		}
		return
	}
	lvl, next, nextMore := rest, []byte(nil), false
	if i := bytes.IndexByte(rest, '/'); i >= 0 {
		lvl, next, nextMore = rest[:i], rest[i+1:], true
	}
	if x != nil && !noWild {
		if x.hash != nil {
			m.entries(x.hash)
		}
		if x.plus != nil {
			m.match(x.plus, next, nextMore, false)
		}
	}
	if len(n.kids) == 0 {
		return
	}
	i := n.child(lvl, levelHash(m.seed, lvl))
	if i < 0 {
		return
	}
	e := &n.kids[i]
	switch {
	case len(e.label) == len(lvl):
		m.match(e.n, next, nextMore, false)
	case len(rest) == len(e.label):
		// A label of several levels: the topic must hold all of them.
		if string(rest) == e.label {
			m.match(e.n, nil, false, false)
		}
	case len(rest) > len(e.label):
		if rest[len(e.label)] == '/' && string(rest[:len(e.label)]) == e.label {
			m.match(e.n, rest[len(e.label)+1:], true, false)
		}
	}
}

// entries visits the entries and groups of n.
func (m *matcher[K, V]) entries(n *node[K, V]) {
	n.subs.each(m.visit)
	if n.ext != nil {
		for _, g := range n.ext.groups {
			m.visitGroup(g)
		}
	}
}

// Count returns the number of entries, plain and shared.
func (t *Trie[K, V]) Count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.mu.count
}

// Walk calls fn for every entry with its filter - "$share/<group>/<filter>"
// for a member of a shared group - until fn returns false. It holds the
// trie read-locked: fn must not call into it.
func (t *Trie[K, V]) Walk(fn func(filter string, key K, val V) bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	t.mu.root.walk(make([]byte, 0, 64), true, fn)
}

// walk reports the entries at and below n, whose filter is prefix. It
// returns false once fn has.
func (n *node[K, V]) walk(prefix []byte, root bool, fn func(string, K, V) bool) bool {
	if n.subs.len() > 0 {
		f := string(prefix)
		for i := range n.subs.len() {
			if e := n.subs.at(i); !fn(f, e.key, e.val) {
				return false
			}
		}
	}
	for _, g := range n.groups() {
		f := sharePrefix + g.Name + "/" + g.Filter
		for i := range g.subs.len() {
			if e := g.subs.at(i); !fn(f, e.key, e.val) {
				return false
			}
		}
	}
	down := func(label string, c *node[K, V]) bool {
		p := prefix
		if !root {
			p = append(p, '/')
		}
		return c.walk(append(p, label...), false, fn)
	}
	for _, e := range n.kids {
		if e.n != nil && !down(e.label, e.n) {
			return false
		}
	}
	if x := n.ext; x != nil {
		if x.plus != nil && !down("+", x.plus) {
			return false
		}
		if x.hash != nil && !down("#", x.hash) {
			return false
		}
	}
	return true
}
