package trie

import "math/bits"

// The exact children of a node are edges kept in node.kids, in one of two
// forms told apart by its length:
//
//   - a list of at most smallKids edges, scanned in order;
//   - once there are more, an open-addressing hash table of a power of two
//     slots, at least 2*smallKids, at most 3/4 full, with linear probing;
//     an empty slot has a nil node. ext.nkids counts the edges in it.
//
// Either way an edge carries the hash of its label's first level, so a
// lookup compares 32-bit hashes and reads the label's bytes - a cache
// miss in a big trie, since labels live apart from the nodes - only for
// the edge that will be taken.

// edge leads to an exact child. Its label is one or more exact levels
// ("dev/42/temp"); a parent finds an edge by the label's first level.
type edge[K comparable, V any] struct {
	label string
	n     *node[K, V]
	h     uint32 // levelHash of label's first level
}

// smallKids is the most exact children kept as a list: scanning that
// many hashes costs less than the probe arithmetic of the table.
const smallKids = 8

// hashSeed is a per-trie secret, so that levels whose hashes collide - and
// make lookups in one node slow - cannot be chosen in advance.
type hashSeed struct{ a, b uint64 }

// levelHash hashes one level (a string or bytes: both give the same
// hash) 8 bytes at a time, mixing with a 64x64->128-bit multiply in the
// manner of wyhash. Levels are short, and this costs a few nanoseconds.
func levelHash[T string | []byte](s hashSeed, b T) uint32 {
	h := s.a ^ uint64(len(b))
	i := 0
	for ; len(b)-i >= 8; i += 8 {
		w := uint64(b[i]) | uint64(b[i+1])<<8 | uint64(b[i+2])<<16 | uint64(b[i+3])<<24 |
			uint64(b[i+4])<<32 | uint64(b[i+5])<<40 | uint64(b[i+6])<<48 | uint64(b[i+7])<<56
		h = mix(h^w, s.b)
	}
	var w uint64
	for j := len(b) - 1; j >= i; j-- {
		w = w<<8 | uint64(b[j])
	}
	h = mix(h^w, s.b^0x9e3779b97f4a7c15)
	return uint32(h ^ h>>32)
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// isTable reports whether kids is a hash table rather than a list.
func isTable[K comparable, V any](kids []edge[K, V]) bool { return len(kids) > smallKids }

// startsWith reports whether label's first level is lvl.
func startsWith(label string, lvl []byte) bool {
	return len(label) >= len(lvl) && label[:len(lvl)] == string(lvl) &&
		(len(label) == len(lvl) || label[len(lvl)] == '/')
}

// child returns the position in kids of the edge whose label's first
// level is lvl, of hash h, or -1.
func (n *node[K, V]) child(lvl []byte, h uint32) int {
	kids := n.kids
	if !isTable(kids) {
		for i := range kids {
			if kids[i].h == h && startsWith(kids[i].label, lvl) {
				return i
			}
		}
		return -1
	}
	mask := uint32(len(kids) - 1)
	for i := h & mask; kids[i].n != nil; i = (i + 1) & mask {
		if kids[i].h == h && startsWith(kids[i].label, lvl) {
			return int(i)
		}
	}
	return -1
}

// childS is child for a level held in a string.
func (n *node[K, V]) childS(lvl string, h uint32) int {
	kids := n.kids
	if !isTable(kids) {
		for i := range kids {
			if kids[i].h == h && hasLevels(kids[i].label, lvl) {
				return i
			}
		}
		return -1
	}
	mask := uint32(len(kids) - 1)
	for i := h & mask; kids[i].n != nil; i = (i + 1) & mask {
		if kids[i].h == h && hasLevels(kids[i].label, lvl) {
			return int(i)
		}
	}
	return -1
}

// numKids returns the number of exact children.
func (n *node[K, V]) numKids() int {
	if isTable(n.kids) {
		return n.ext.nkids
	}
	return len(n.kids)
}

// addChild adds e, whose first level no edge of n has.
func (n *node[K, V]) addChild(e edge[K, V]) {
	if !isTable(n.kids) {
		if len(n.kids) < smallKids {
			n.kids = append(n.kids, e)
			return
		}
		n.rehash(2 * smallKids)
	} else if (n.ext.nkids+1)*4 > len(n.kids)*3 {
		n.rehash(2 * len(n.kids))
	}
	n.ext.nkids++
	place(n.kids, e)
}

// place puts e into the first free slot of its probe sequence in table.
func place[K comparable, V any](table []edge[K, V], e edge[K, V]) {
	mask := uint32(len(table) - 1)
	i := e.h & mask
	for table[i].n != nil {
		i = (i + 1) & mask
	}
	table[i] = e
}

// rehash moves the exact children into a table of size slots, or into a
// list when size is 0.
func (n *node[K, V]) rehash(size int) {
	old := n.kids
	oldTable := isTable(old)
	if size == 0 {
		n.kids = make([]edge[K, V], 0, n.ext.nkids)
		for _, e := range old {
			if e.n != nil {
				n.kids = append(n.kids, e)
			}
		}
		n.ext.nkids = 0
		n.tidyExt()
		return
	}
	n.kids = make([]edge[K, V], size)
	if !oldTable {
		n.getExt().nkids = len(old)
	}
	for _, e := range old {
		if e.n != nil {
			place(n.kids, e)
		}
	}
}

// removeChild removes the edge at position i of kids, and adapts the form
// of kids to the new number of edges.
func (n *node[K, V]) removeChild(i int) {
	kids := n.kids
	if !isTable(kids) {
		last := len(kids) - 1
		kids[i] = kids[last]
		kids[last] = edge[K, V]{}
		n.kids = kids[:last]
		if last == 0 {
			n.kids = nil
		}
		return
	}
	// Backward-shift deletion: pull later edges of the probe run into the
	// hole when their home slot is not after it, so that no lookup meets
	// an empty slot before its edge.
	mask := len(kids) - 1
	j := i
	for {
		j = (j + 1) & mask
		if kids[j].n == nil {
			break
		}
		home := int(kids[j].h) & mask
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			kids[i] = kids[j]
			i = j
		}
	}
	kids[i] = edge[K, V]{}
	n.ext.nkids--
	switch c := n.ext.nkids; {
	case c <= smallKids/2:
		// Back to a list; the margin under smallKids keeps a node at the
		// limit from converting back and forth.
		n.rehash(0)
	case len(kids) > 2*smallKids && c*8 < len(kids):
		n.rehash(len(kids) / 2)
	}
}
