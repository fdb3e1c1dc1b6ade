package trie

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrInvalidFilter is returned for a filter that breaks the MQTT wildcard
// rules: '#' not alone as the last level [MQTT-4.7.1-1], '+' not alone in
// its level [MQTT-4.7.1-2], an empty filter [MQTT-4.7.3-1], or a malformed
// "$share/<group>/<filter>" [MQTT-4.8.2-1, MQTT-4.8.2-2].
var ErrInvalidFilter = errors.New("trie: invalid topic filter")

type entry[K comparable, V any] struct {
	key K
	val V
}

// node is where one or more filter levels end. It is kept small because a
// trie of a million distinct filters holds a million of them: exact
// children are a short slice scanned in order until there are more than
// smallKids, then a map; the '+' and '#' children, shared groups and that
// map live in ext, which most nodes never allocate. A chain of exact
// levels with nothing in between is one edge whose label holds them all
// ("dev/42/temp"), so a filter's unshared tail costs one node.
type node[K comparable, V any] struct {
	kids []kid[K, V]
	ext  *ext[K, V]
	subs []entry[K, V] // plain subscriptions whose filter ends here
}

// kid is an edge to an exact child. label is one or more exact levels;
// kids are found by label's first level.
type kid[K comparable, V any] struct {
	label string
	n     *node[K, V]
}

type ext[K comparable, V any] struct {
	big    map[string]kid[K, V] // exact children by first level, once there are many
	plus   *node[K, V]
	hash   *node[K, V]
	groups []*Group[K, V] // shared groups whose filter ends here
}

// smallKids is the most exact children kept in the slice; a linear scan of
// that many short strings beats a map lookup.
const smallKids = 8

func (n *node[K, V]) empty() bool {
	return len(n.kids) == 0 && n.ext == nil && len(n.subs) == 0
}

func (n *node[K, V]) plus() *node[K, V] {
	if n.ext == nil {
		return nil
	}
	return n.ext.plus
}

func (n *node[K, V]) hash() *node[K, V] {
	if n.ext == nil {
		return nil
	}
	return n.ext.hash
}

func (n *node[K, V]) groups() []*Group[K, V] {
	if n.ext == nil {
		return nil
	}
	return n.ext.groups
}

func (n *node[K, V]) getExt() *ext[K, V] {
	if n.ext == nil {
		n.ext = new(ext[K, V])
	}
	return n.ext
}

// tidyExt drops ext when nothing in it is used.
func (n *node[K, V]) tidyExt() {
	if e := n.ext; e != nil && e.big == nil && e.plus == nil && e.hash == nil && len(e.groups) == 0 {
		n.ext = nil
	}
}

// kidB returns the edge whose label starts with level lvl.
func (n *node[K, V]) kidB(lvl []byte) (kid[K, V], bool) {
	if n.ext != nil && n.ext.big != nil {
		k, ok := n.ext.big[string(lvl)]
		return k, ok
	}
	for _, k := range n.kids {
		if len(k.label) >= len(lvl) && k.label[:len(lvl)] == string(lvl) &&
			(len(k.label) == len(lvl) || k.label[len(lvl)] == '/') {
			return k, true
		}
	}
	return kid[K, V]{}, false
}

func (n *node[K, V]) kid(lvl string) (kid[K, V], bool) { return n.kidB([]byte(lvl)) }

// setKid adds or replaces the edge whose label starts with level lvl.
func (n *node[K, V]) setKid(lvl string, k kid[K, V]) {
	if n.ext != nil && n.ext.big != nil {
		n.ext.big[lvl] = k
		return
	}
	for i := range n.kids {
		if firstLevel(n.kids[i].label) == lvl {
			n.kids[i] = k
			return
		}
	}
	if len(n.kids) < smallKids {
		n.kids = append(n.kids, k)
		return
	}
	big := make(map[string]kid[K, V], 2*smallKids)
	for _, k := range n.kids {
		big[firstLevel(k.label)] = k
	}
	big[lvl] = k
	n.getExt().big = big
	n.kids = nil
}

func firstLevel(label string) string {
	if i := strings.IndexByte(label, '/'); i >= 0 {
		return label[:i]
	}
	return label
}

// hasLevels reports whether f starts with the whole levels of label.
func hasLevels(f, label string) bool {
	return len(f) >= len(label) && f[:len(label)] == label && (len(f) == len(label) || f[len(label)] == '/')
}

// commonLevels returns the length of the longest run of whole levels that
// label and f both start with.
func commonLevels(label, f string) int {
	end := 0
	for i := 0; ; i++ {
		lEnd, fEnd := i >= len(label) || label[i] == '/', i >= len(f) || f[i] == '/'
		if lEnd && fEnd {
			end = i
			if i >= len(label) || i >= len(f) {
				return end
			}
			continue
		}
		if lEnd || fEnd || label[i] != f[i] {
			return end
		}
	}
}

// exactPrefix returns the levels of f before its first wildcard level.
func exactPrefix(f string) (label, rest string, more bool) {
	start := 0
	for {
		lvl, _, m := nextLevel(f[start:])
		if lvl == "+" || lvl == "#" {
			return f[:start-1], f[start:], true
		}
		if !m {
			return f, "", false
		}
		start += len(lvl) + 1
	}
}

// Group is one shared subscription group, "$share/<Name>/<Filter>". Its
// methods are safe inside Match's visitGroup callback, which is the only
// place the broker reads it.
type Group[K comparable, V any] struct {
	Name   string
	Filter string
	subs   []entry[K, V]
	next   atomic.Uint64
}

// Len is the number of members.
func (g *Group[K, V]) Len() int { return len(g.subs) }

// At returns member i, 0 <= i < Len().
func (g *Group[K, V]) At(i int) (K, V) { return g.subs[i].key, g.subs[i].val }

// Next returns a counter that grows by one per call, for round-robin picks.
// It is safe from any goroutine.
func (g *Group[K, V]) Next() uint64 { return g.next.Add(1) - 1 }

// Trie indexes topic filters. All methods are safe for concurrent use.
type Trie[K comparable, V any] struct {
	mu    sync.RWMutex
	root  node[K, V]
	count int
}

// New returns an empty trie.
func New[K comparable, V any]() *Trie[K, V] { return &Trie[K, V]{} }

// parse splits a filter into its share group (empty for a plain filter)
// and the filter proper, validating both.
func parse(filter string) (group, f string, err error) {
	f = filter
	if strings.HasPrefix(f, "$share/") {
		rest := f[len("$share/"):]
		i := strings.IndexByte(rest, '/')
		if i <= 0 || strings.ContainsAny(rest[:i], "+#") || i == len(rest)-1 {
			return "", "", ErrInvalidFilter
		}
		group, f = rest[:i], rest[i+1:]
	}
	if f == "" {
		return "", "", ErrInvalidFilter
	}
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case '#':
			if i != len(f)-1 || (i > 0 && f[i-1] != '/') {
				return "", "", ErrInvalidFilter
			}
		case '+':
			if (i > 0 && f[i-1] != '/') || (i < len(f)-1 && f[i+1] != '/') {
				return "", "", ErrInvalidFilter
			}
		}
	}
	return group, f, nil
}

// nextLevel splits the first level off f.
func nextLevel(f string) (level, rest string, more bool) {
	if i := strings.IndexByte(f, '/'); i >= 0 {
		return f[:i], f[i+1:], true
	}
	return f, "", false
}

// Subscribe adds key's entry under filter, or replaces its value. A
// "$share/<group>/<filter>" filter adds key to that group, kept apart from
// plain subscriptions. added is false when the entry existed; first is true
// when the filter (for a share: the group and filter) had no entry before.
func (t *Trie[K, V]) Subscribe(filter string, key K, val V) (added, first bool, err error) {
	group, f, err := parse(filter)
	if err != nil {
		return false, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.root.insert(f)
	subs := &n.subs
	if group != "" {
		var g *Group[K, V]
		for _, x := range n.groups() {
			if x.Name == group {
				g = x
				break
			}
		}
		if g == nil {
			g = &Group[K, V]{Name: group, Filter: filter[len("$share/")+len(group)+1:]}
			e := n.getExt()
			e.groups = append(e.groups, g)
		}
		subs = &g.subs
	}
	for i := range *subs {
		if (*subs)[i].key == key {
			(*subs)[i].val = val
			return false, false, nil
		}
	}
	first = len(*subs) == 0
	*subs = append(*subs, entry[K, V]{key, val})
	t.count++
	return true, first, nil
}

// insert returns the node where filter f ends, creating what is missing.
// Labels alias f: the broker keeps its filter strings anyway.
func (n *node[K, V]) insert(f string) *node[K, V] {
	for {
		lvl, rest, more := nextLevel(f)
		if lvl == "+" || lvl == "#" {
			e := n.getExt()
			w := &e.plus
			if lvl == "#" {
				w = &e.hash
			}
			if *w == nil {
				*w = new(node[K, V])
			}
			n = *w
			if !more {
				return n
			}
			f = rest
			continue
		}
		k, ok := n.kid(lvl)
		if !ok {
			label, rest, more := exactPrefix(f)
			c := new(node[K, V])
			n.setKid(lvl, kid[K, V]{label, c})
			if !more {
				return c
			}
			n, f = c, rest
			continue
		}
		cp := commonLevels(k.label, f)
		if cp < len(k.label) {
			// Split the edge where f leaves it.
			mid := new(node[K, V])
			tail := k.label[cp+1:]
			mid.setKid(firstLevel(tail), kid[K, V]{tail, k.n})
			k = kid[K, V]{k.label[:cp], mid}
			n.setKid(lvl, k)
		}
		n = k.n
		if cp == len(f) {
			return n
		}
		f = f[cp+1:]
	}
}

// unlink removes the child reached through level lvl.
func (n *node[K, V]) unlink(lvl string) {
	switch lvl {
	case "+":
		n.ext.plus = nil
	case "#":
		n.ext.hash = nil
	default:
		if n.ext != nil && n.ext.big != nil {
			delete(n.ext.big, lvl)
			if len(n.ext.big) == 0 {
				n.ext.big = nil
			}
		} else {
			for i := range n.kids {
				if firstLevel(n.kids[i].label) == lvl {
					n.kids = append(n.kids[:i], n.kids[i+1:]...)
					n.kids[len(n.kids):cap(n.kids)][0] = kid[K, V]{}
					break
				}
			}
			if len(n.kids) == 0 {
				n.kids = nil
			}
		}
	}
	n.tidyExt()
}

// remove deletes key from subs, keeping order.
func remove[K comparable, V any](subs []entry[K, V], key K) ([]entry[K, V], bool) {
	for i := range subs {
		if subs[i].key == key {
			copy(subs[i:], subs[i+1:])
			var zero entry[K, V]
			subs[len(subs)-1] = zero
			subs = subs[:len(subs)-1]
			if len(subs) == 0 {
				subs = nil
			}
			return subs, true
		}
	}
	return subs, false
}

// Unsubscribe removes key's entry under filter. removed reports that it
// existed; last that the filter (for a share: the group) has no entry left.
func (t *Trie[K, V]) Unsubscribe(filter string, key K) (removed, last bool, err error) {
	group, f, err := parse(filter)
	if err != nil {
		return false, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	// The path, to prune nodes left empty. Filters are short; a small
	// array on the stack covers them.
	type step struct {
		parent *node[K, V]
		lvl    string
	}
	var buf [16]step
	path := buf[:0]
	n := &t.root
	for {
		lvl, rest, more := nextLevel(f)
		var c *node[K, V]
		switch lvl {
		case "+":
			c = n.plus()
		case "#":
			c = n.hash()
		default:
			k, ok := n.kid(lvl)
			if !ok || !hasLevels(f, k.label) {
				return false, false, nil
			}
			c = k.n
			rest, more = "", len(f) > len(k.label)
			if more {
				rest = f[len(k.label)+1:]
			}
		}
		if c == nil {
			return false, false, nil
		}
		path = append(path, step{n, lvl})
		n = c
		if !more {
			break
		}
		f = rest
	}
	if group == "" {
		n.subs, removed = remove(n.subs, key)
		last = removed && len(n.subs) == 0
	} else {
		for i, g := range n.groups() {
			if g.Name != group {
				continue
			}
			g.subs, removed = remove(g.subs, key)
			if removed && len(g.subs) == 0 {
				last = true
				n.ext.groups = append(n.ext.groups[:i:i], n.ext.groups[i+1:]...)
				if len(n.ext.groups) == 0 {
					n.ext.groups = nil
				}
				n.tidyExt()
			}
			break
		}
	}
	if !removed {
		return false, false, nil
	}
	t.count--
	for i := len(path) - 1; i >= 0 && n.empty(); i-- {
		path[i].parent.unlink(path[i].lvl)
		n = path[i].parent
	}
	return true, last, nil
}

// Match calls visit for every plain subscription whose filter matches
// topic and visitGroup once for every matching shared group. Filters
// starting with a wildcard do not match topics starting with '$'
// [MQTT-4.7.2-1]. The callbacks run with the trie read-locked: they must
// not call back into it. Match does not keep topic and allocates nothing.
func (t *Trie[K, V]) Match(topic []byte, visit func(K, V), visitGroup func(*Group[K, V])) {
	t.mu.RLock()
	dollar := len(topic) > 0 && topic[0] == '$'
	t.root.match(topic, true, dollar, visit, visitGroup)
	t.mu.RUnlock()
}

// match visits what matches below n, where rest is the topic after the
// levels consumed so far; more is false once every level is consumed.
func (n *node[K, V]) match(rest []byte, more, noWild bool, visit func(K, V), visitGroup func(*Group[K, V])) {
	e := n.ext
	if !more {
		n.visit(visit, visitGroup)
		// "sport/#" also matches "sport" [MQTT-4.7.1-2].
		if e != nil && e.hash != nil {
			e.hash.visit(visit, visitGroup)
		}
		return
	}
	lvl, next := rest, []byte(nil)
	nextMore := false
	if i := bytes.IndexByte(rest, '/'); i >= 0 {
		lvl, next, nextMore = rest[:i], rest[i+1:], true
	}
	if e != nil && !noWild {
		if e.hash != nil {
			e.hash.visit(visit, visitGroup)
		}
		if e.plus != nil {
			e.plus.match(next, nextMore, false, visit, visitGroup)
		}
	}
	k, ok := n.kidB(lvl)
	switch {
	case !ok:
	case len(k.label) == len(lvl):
		k.n.match(next, nextMore, false, visit, visitGroup)
	case len(rest) == len(k.label) && string(rest) == k.label:
		k.n.match(nil, false, false, visit, visitGroup)
	case len(rest) > len(k.label) && rest[len(k.label)] == '/' && string(rest[:len(k.label)]) == k.label:
		k.n.match(rest[len(k.label)+1:], true, false, visit, visitGroup)
	}
}

func (n *node[K, V]) visit(visit func(K, V), visitGroup func(*Group[K, V])) {
	for i := range n.subs {
		visit(n.subs[i].key, n.subs[i].val)
	}
	for _, g := range n.groups() {
		visitGroup(g)
	}
}

// Count returns the number of entries, plain and shared.
func (t *Trie[K, V]) Count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.count
}

// Walk calls fn for every entry with its full filter ("$share/g/f" for a
// shared one) until fn returns false. fn must not call into the trie.
func (t *Trie[K, V]) Walk(fn func(filter string, key K, val V) bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	t.root.walk(nil, true, fn)
}

func (n *node[K, V]) walk(prefix []byte, root bool, fn func(string, K, V) bool) bool {
	f := string(prefix)
	for _, e := range n.subs {
		if !fn(f, e.key, e.val) {
			return false
		}
	}
	for _, g := range n.groups() {
		for _, e := range g.subs {
			if !fn("$share/"+g.Name+"/"+f, e.key, e.val) {
				return false
			}
		}
	}
	step := func(lvl string, c *node[K, V]) bool {
		p := prefix
		if !root {
			p = append(p[:len(p):len(p)], '/')
		}
		return c.walk(append(p, lvl...), false, fn)
	}
	for _, k := range n.kids {
		if !step(k.label, k.n) {
			return false
		}
	}
	if e := n.ext; e != nil {
		for _, k := range e.big {
			if !step(k.label, k.n) {
				return false
			}
		}
		if e.plus != nil && !step("+", e.plus) {
			return false
		}
		if e.hash != nil && !step("#", e.hash) {
			return false
		}
	}
	return true
}
