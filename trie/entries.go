package trie

import "sync/atomic"

type entry[K comparable, V any] struct {
	key K
	val V
}

// entries is the set of keys subscribed under one filter, or the members
// of one shared group. Most filters have one subscriber, so the first
// entry is held inline: a match reads it from the node it already has in
// cache, and a one-entry set allocates nothing of its own. Further
// entries sit in more. Subscribe and Unsubscribe find a key by scanning
// while the set is small and through an index once it is big, so a
// filter with a hundred thousand subscribers costs the same per change as
// one with three. Removal moves the last entry into the hole: the order
// of entries is not kept.
type entries[K comparable, V any] struct {
	first entry[K, V] // entry 0, when n > 0
	n     int32       // number of entries
	more  *more[K, V] // entries 1 to n-1, when n > 1
}

type more[K comparable, V any] struct {
	rest []entry[K, V] // entries 1 to n-1
	idx  map[K]int32   // position by key, while n > unindexAt
}

const (
	// indexAt is the size past which entries keeps an index. A scan of
	// this many keys is about as fast as a map lookup, and most filters
	// have fewer subscribers, so they never pay for a map.
	indexAt = 32
	// unindexAt is the size under which the index is dropped again; lower
	// than indexAt so that a set hovering at the limit does not build and
	// drop the map on every change.
	unindexAt = 16
)

func (es *entries[K, V]) len() int { return int(es.n) }

// at returns entry i, 0 <= i < len().
func (es *entries[K, V]) at(i int) *entry[K, V] {
	if i == 0 {
		return &es.first
	}
	return &es.more.rest[i-1]
}

// each calls visit for every entry.
func (es *entries[K, V]) each(visit func(K, V)) {
	if es.n == 0 {
		return
	}
	visit(es.first.key, es.first.val)
	if es.more != nil {
		for i := range es.more.rest {
			visit(es.more.rest[i].key, es.more.rest[i].val)
		}
	}
}

// find returns the position of key, or -1.
func (es *entries[K, V]) find(key K) int {
	if es.n == 0 {
		return -1
	}
	if es.first.key == key {
		return 0
	}
	if es.more == nil {
		return -1
	}
	if es.more.idx != nil {
		if i, ok := es.more.idx[key]; ok {
			return int(i)
		}
		return -1
	}
	for i := range es.more.rest {
		if es.more.rest[i].key == key {
			return i + 1
		}
	}
	return -1
}

// put adds key with val, or replaces its value. It reports whether key
// was added.
func (es *entries[K, V]) put(key K, val V) bool {
	if i := es.find(key); i >= 0 {
		es.at(i).val = val
		return false
	}
	if es.n == 0 {
		es.first = entry[K, V]{key, val}
		es.n = 1
		return true
	}
	if es.more == nil {
		es.more = new(more[K, V])
	}
	m := es.more
	m.rest = append(m.rest, entry[K, V]{key, val})
	es.n++
	switch {
	case m.idx != nil:
		m.idx[key] = es.n - 1
	case es.n > indexAt:
		m.idx = make(map[K]int32, es.n)
		for i := range int(es.n) {
			m.idx[es.at(i).key] = int32(i)
		}
	}
	return true
}

// del removes key. It reports whether key was there.
func (es *entries[K, V]) del(key K) bool {
	i := es.find(key)
	if i < 0 {
		return false
	}
	last := int(es.n) - 1
	if i != last {
		moved := es.at(last)
		*es.at(i) = *moved
		if es.more.idx != nil {
			es.more.idx[moved.key] = int32(i)
		}
	}
	*es.at(last) = entry[K, V]{} // drop what K and V reference
	es.n--
	if last == 0 {
		return true
	}
	m := es.more
	m.rest = m.rest[:last-1]
	if m.idx != nil {
		delete(m.idx, key)
		if es.n < unindexAt {
			m.idx = nil
		}
	}
	switch r := len(m.rest); {
	case r == 0:
		es.more = nil
	case cap(m.rest) > 2*indexAt && r < cap(m.rest)/4:
		// Give back the memory of a crowd that has left.
		m.rest = append([]entry[K, V](nil), m.rest...)
	}
	return true
}

// Group is one shared subscription group, "$share/<Name>/<Filter>": the
// broker delivers each matching message to one of its members, which it
// picks itself. Match hands a group to visitGroup; Len and At are safe
// inside that callback, which holds the trie's read lock, and must not be
// called elsewhere. Next is safe from any goroutine at any time.
type Group[K comparable, V any] struct {
	Name   string // the share name
	Filter string // the filter after "$share/<Name>/"
	subs   entries[K, V]
	next   atomic.Uint64
}

// Len returns the number of members, at least one.
func (g *Group[K, V]) Len() int { return g.subs.len() }

// At returns member i, 0 <= i < Len(). The order of members is arbitrary
// and changes when members leave.
func (g *Group[K, V]) At(i int) (K, V) {
	if uint(i) >= uint(g.subs.len()) {
		panic("trie: Group.At index out of range")
	}
	e := g.subs.at(i)
	return e.key, e.val
}

// Next returns a counter that grows by one per call, for round-robin
// picks: member Next() % Len().
func (g *Group[K, V]) Next() uint64 { return g.next.Add(1) - 1 }
