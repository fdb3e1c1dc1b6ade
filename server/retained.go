package server

import (
	"bytes"
	"maps"
	"sync"

	"github.com/gannetmq/gannet/persist"
)

// retainStore keeps the last retained message of every topic in a tree of
// topic levels, so that a new subscription finds the messages its filter
// matches by walking only the branches the filter allows.
type retainStore struct {
	mu    sync.RWMutex
	root  rnode
	count int
	bytes int64 // topics and payloads of the retained messages
	// tombs remembers when each topic was last cleared, so that a cluster
	// peer's older copy does not bring it back (apply); the store keeps
	// them too (setRetained), until they expire (forgetTombs).
	tombs     map[string]int64
	tombBytes int64 // topics of the tombs
}

type rnode struct {
	children map[string]*rnode
	msg      *message
}

// set stores m as the retained message of its topic; an empty payload
// removes it [MQTT-3.3.1-6, MQTT-3.3.1-7].
func (r *retainStore) set(m *message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setLocked(m)
}

// apply stores m unless the topic holds a version at least as new (a
// message or a clearing); it reports whether m took effect. Peers' copies
// converge this way whatever order they arrive in.
func (r *retainStore) apply(m *message) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.get(m.topic); cur != nil && cur.stamp >= m.stamp {
		return false
	}
	if t, ok := r.tombs[string(m.topic)]; ok && t >= m.stamp {
		return false
	}
	r.setLocked(m)
	return true
}

// get returns the retained message of topic, or nil.
// REQUIRES: r.mu held.
func (r *retainStore) get(topic []byte) *message {
	n := &r.root
	for level := range levels(topic) {
		if n = n.children[string(level)]; n == nil {
			return nil
		}
	}
	return n.msg
}

// snapshot returns every retained message and every remembered clearing.
func (r *retainStore) snapshot() ([]*message, map[string]int64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var all []*message
	for _, c := range r.root.children {
		if c.msg != nil {
			all = append(all, c.msg)
		}
		all = r.all(all, c, false)
	}
	return all, maps.Clone(r.tombs)
}

// forgetTombs drops clearings older than before. With a store (b not
// nil) it adds their deletions to b and hands b to commit, under r.mu:
// a version of one of the topics set afterwards is handed to the store
// after the deletion, so the deletion cannot remove it. It returns the
// number of clearings dropped.
func (r *retainStore) forgetTombs(before int64, b *persist.Batch, commit func(*persist.Batch)) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for t, stamp := range r.tombs {
		if stamp < before {
			r.dropTomb(t)
			if b != nil {
				b.DeleteRetained([]byte(t))
			}
			n++
		}
	}
	if b != nil && b.Len() > 0 {
		commit(b)
	}
	return n
}

// tombCount returns the number of clearings kept and the bytes of their
// topics.
func (r *retainStore) tombCount() (int, int64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.tombs), r.tombBytes
}

// setTomb remembers that topic was cleared at stamp.
// REQUIRES: r.mu held.
func (r *retainStore) setTomb(topic string, stamp int64) {
	if r.tombs == nil {
		r.tombs = make(map[string]int64)
	}
	if _, ok := r.tombs[topic]; !ok {
		r.tombBytes += int64(len(topic))
	}
	r.tombs[topic] = stamp
}

// dropTomb forgets topic's clearing.
// REQUIRES: r.mu held.
func (r *retainStore) dropTomb(topic string) {
	if _, ok := r.tombs[topic]; ok {
		delete(r.tombs, topic)
		r.tombBytes -= int64(len(topic))
	}
}

// restoreTomb takes a clearing kept in the store (which holds a topic's
// message or its clearing, never both).
func (r *retainStore) restoreTomb(topic []byte, stamp int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setTomb(string(topic), stamp)
}

// setLocked is set under r.mu.
func (r *retainStore) setLocked(m *message) {
	if len(m.payload) == 0 {
		if m.stamp != 0 {
			r.setTomb(string(m.topic), m.stamp)
		}
		r.remove(m.topic)
		return
	}
	r.dropTomb(string(m.topic))
	n := &r.root
	for level := range levels(m.topic) {
		if n.children == nil {
			n.children = make(map[string]*rnode)
		}
		c := n.children[string(level)]
		if c == nil {
			c = &rnode{}
			n.children[string(level)] = c
		}
		n = c
	}
	if n.msg == nil {
		r.count++
	} else {
		r.bytes -= retainedSize(n.msg)
	}
	r.bytes += retainedSize(m)
	n.msg = m
}

func retainedSize(m *message) int64 { return int64(len(m.topic) + len(m.payload)) }

// setBounded is set for a message published here: a new topic past
// maxCount messages, or a message that would take the retained bytes past
// maxBytes, is not kept and the reason returned (0: no bound). Clearing is
// always allowed. Copies from cluster peers are not bounded (apply): nodes
// must converge, and each bounds what its own clients publish.
func (r *retainStore) setBounded(m *message, maxCount int, maxBytes int64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(m.payload) > 0 && (maxCount > 0 || maxBytes > 0) {
		cur := r.get(m.topic)
		if maxCount > 0 && cur == nil && r.count >= maxCount {
			return "max_retained"
		}
		grow := retainedSize(m)
		if cur != nil {
			grow -= retainedSize(cur)
		}
		if maxBytes > 0 && grow > 0 && r.bytes+grow > maxBytes {
			return "max_retained_bytes"
		}
	}
	r.setLocked(m)
	return ""
}

// remove deletes the retained message of topic and prunes empty nodes.
// REQUIRES: r.mu held.
func (r *retainStore) remove(topic []byte) {
	var path []*rnode
	var keys []string
	n := &r.root
	for level := range levels(topic) {
		c := n.children[string(level)]
		if c == nil {
			return
		}
		path = append(path, n)
		keys = append(keys, string(level))
		n = c
	}
	if n.msg == nil {
		return
	}
	r.bytes -= retainedSize(n.msg)
	n.msg = nil
	r.count--
	for i := len(path) - 1; i >= 0; i-- {
		child := path[i].children[keys[i]]
		if child.msg != nil || len(child.children) > 0 {
			break
		}
		delete(path[i].children, keys[i])
	}
}

// dropExpired removes the retained messages whose expiry has passed and
// returns them.
func (r *retainStore) dropExpired(now int64) []*message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []*message
	for _, m := range r.all(nil, &r.root, false) {
		if m.expired(now) {
			gone = append(gone, m)
		}
	}
	for _, m := range gone {
		r.remove(m.topic)
	}
	return gone
}

// len returns the number of retained messages.
func (r *retainStore) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.count
}

// match appends to dst every retained message whose topic filter matches.
// Topics starting with '$' are not matched by a leading wildcard
// [MQTT-4.7.2-1].
func (r *retainStore) match(dst []*message, filter []byte) []*message {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var lv [][]byte
	for level := range levels(filter) {
		lv = append(lv, level)
	}
	return r.walk(dst, &r.root, lv, true)
}

func (r *retainStore) walk(dst []*message, n *rnode, lv [][]byte, top bool) []*message {
	if len(lv) == 0 {
		if n.msg != nil {
			dst = append(dst, n.msg)
		}
		return dst
	}
	switch {
	case bytes.Equal(lv[0], []byte("#")):
		// '#' matches the parent level too [MQTT-4.7.1-2].
		if n.msg != nil && !top {
			dst = append(dst, n.msg)
		}
		return r.all(dst, n, top)
	case bytes.Equal(lv[0], []byte("+")):
		for k, c := range n.children {
			if top && len(k) > 0 && k[0] == '$' {
				continue
			}
			dst = r.walk(dst, c, lv[1:], false)
		}
		return dst
	default:
		if c := n.children[string(lv[0])]; c != nil {
			dst = r.walk(dst, c, lv[1:], false)
		}
		return dst
	}
}

// all appends every message below n.
func (r *retainStore) all(dst []*message, n *rnode, top bool) []*message {
	for k, c := range n.children {
		if top && len(k) > 0 && k[0] == '$' {
			continue
		}
		if c.msg != nil {
			dst = append(dst, c.msg)
		}
		dst = r.all(dst, c, false)
	}
	return dst
}

// levels yields the '/'-separated levels of a topic or filter.
func levels(t []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for {
			i := bytes.IndexByte(t, '/')
			if i < 0 {
				yield(t)
				return
			}
			if !yield(t[:i]) {
				return
			}
			t = t[i+1:]
		}
	}
}
