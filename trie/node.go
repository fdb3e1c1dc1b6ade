package trie

// node is where one or more filter levels end. A trie of a million
// distinct filters holds about a million of them, so it is kept to 80
// bytes for small keys and values: what most nodes lack - wildcard
// children, shared groups, the count of a table of exact children - lives
// in ext, allocated on first use.
//
// Invariant: a node other than the root holds entries, a wildcard child,
// a group or an exact child; one reached through an exact edge has
// entries, ext or at least two exact children. Otherwise it is removed,
// or merged into the edge above it, so the shape of the trie depends only
// on the filters in it, not on the order they came and went.
type node[K comparable, V any] struct {
	kids []edge[K, V] // exact children: see kids.go
	ext  *ext[K, V]
	subs entries[K, V] // plain subscriptions whose filter ends here
}

type ext[K comparable, V any] struct {
	plus   *node[K, V]    // the '+' child
	hash   *node[K, V]    // the '#' child
	groups []*Group[K, V] // shared groups whose filter ends here
	nkids  int            // exact children, while kids is a table
}

func (n *node[K, V]) empty() bool {
	return len(n.kids) == 0 && n.ext == nil && n.subs.len() == 0
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

// tidyExt drops ext once nothing in it is used.
func (n *node[K, V]) tidyExt() {
	if x := n.ext; x != nil && x.plus == nil && x.hash == nil && len(x.groups) == 0 && x.nkids == 0 {
		n.ext = nil
	}
}

// wild returns the '+' or '#' child, or nil.
func (n *node[K, V]) wild(lvl string) *node[K, V] {
	if n.ext == nil {
		return nil
	}
	if lvl == "+" {
		return n.ext.plus
	}
	return n.ext.hash
}

// insert returns the node where filter f ends, creating what is missing.
// Labels are substrings of f: the caller keeps its filter strings anyway
// (the broker in its sessions), so sharing them costs nothing more.
func (n *node[K, V]) insert(s hashSeed, f string) *node[K, V] {
	for {
		lvl, rest, more := nextLevel(f)
		if lvl == "+" || lvl == "#" {
			x := n.getExt()
			w := &x.plus
			if lvl == "#" {
				w = &x.hash
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
		h := levelHash(s, lvl)
		i := n.childS(lvl, h)
		if i < 0 {
			// A new edge takes every exact level up to the next wildcard.
			label, rest, more := exactPrefix(f)
			c := new(node[K, V])
			n.addChild(edge[K, V]{label, c, h})
			if !more {
				return c
			}
			n, f = c, rest
			continue
		}
		e := &n.kids[i]
		cp := commonLevels(e.label, f)
		if cp < len(e.label) {
			// f leaves the edge part way: split it there.
			mid := new(node[K, V])
			tail := e.label[cp+1:]
			mid.addChild(edge[K, V]{tail, e.n, levelHash(s, firstLevel(tail))})
			e.label, e.n = e.label[:cp], mid
		}
		n = e.n
		if cp == len(f) {
			return n
		}
		f = f[cp+1:]
	}
}

// step is one move down the trie: from parent through level lvl, "+",
// "#" or the first level of an exact edge of hash h.
type step[K comparable, V any] struct {
	parent *node[K, V]
	lvl    string
	h      uint32
}

// lookup returns the node where filter f ends, or nil, and appends the
// steps that lead there to path.
func (n *node[K, V]) lookup(s hashSeed, f string, path []step[K, V]) (*node[K, V], []step[K, V]) {
	for {
		lvl, rest, more := nextLevel(f)
		var c *node[K, V]
		var h uint32
		if lvl == "+" || lvl == "#" {
			c = n.wild(lvl)
		} else {
			h = levelHash(s, lvl)
			i := n.childS(lvl, h)
			if i < 0 || !hasLevels(f, n.kids[i].label) {
				return nil, path
			}
			label := n.kids[i].label
			c = n.kids[i].n
			rest, more = "", len(f) > len(label)
			if more {
				rest = f[len(label)+1:]
			}
		}
		if c == nil {
			return nil, path
		}
		path = append(path, step[K, V]{n, lvl, h})
		if !more {
			return c, path
		}
		n, f = c, rest
	}
}

// prune restores the invariant after an entry or group left n, the end of
// path: it removes the nodes left empty, bottom up, then merges the
// lowest remaining node into the edge above it if that node now only
// passes through to a single exact child.
func (n *node[K, V]) prune(path []step[K, V]) {
	i := len(path) - 1
	for ; i >= 0 && n.empty(); i-- {
		path[i].parent.unlink(path[i])
		n = path[i].parent
	}
	if i < 0 || n.ext != nil || n.subs.len() != 0 || len(n.kids) != 1 {
		return
	}
	st := path[i]
	if st.lvl == "+" || st.lvl == "#" {
		return // a wildcard child has no label to merge into
	}
	up := &st.parent.kids[st.parent.childS(st.lvl, st.h)]
	down := n.kids[0]
	up.label, up.n = up.label+"/"+down.label, down.n
}

// unlink removes the child that st leads to from st.parent.
func (n *node[K, V]) unlink(st step[K, V]) {
	switch st.lvl {
	case "+":
		n.ext.plus = nil
	case "#":
		n.ext.hash = nil
	default:
		n.removeChild(n.childS(st.lvl, st.h))
	}
	n.tidyExt()
}
