package server

import (
	"bytes"
	"sync"
)

// retainStore keeps the last retained message of every topic in a tree of
// topic levels, so that a new subscription finds the messages its filter
// matches by walking only the branches the filter allows.
type retainStore struct {
	mu    sync.RWMutex
	root  rnode
	count int
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
	if len(m.payload) == 0 {
		r.remove(m.topic)
		return
	}
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
	}
	n.msg = m
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
