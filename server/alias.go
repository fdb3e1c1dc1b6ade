package server

import (
	"github.com/gannetmq/gannet/fanout"
)

// Outbound topic aliases (MQTT 5, 3.3.2.3.4): a client that announces a
// Topic Alias Maximum lets the broker replace a topic it has already sent
// on this connection with a two-byte alias. Each connection keeps the
// topics it received most recently, up to the lower of the client's
// maximum and --topic-alias-out; when the table is full, the least
// recently used alias is given to the new topic (the PUBLISH carries the
// topic and the alias, which redefines it for the client).
//
// Only the client's own loop sets or uses aliases. Its packets go straight
// into the client's pending bytes in the order they are made, so every use
// of an alias is written after the packet that defined it and before any
// packet that redefines it. Deliveries from other loops reach the client
// later, through its loop's inbox: they carry the topic and no alias, which
// is always correct.
//
// The alias number is per receiver but the frame is shared: fanout leaves
// the alias's two bytes out of the shared encoding, and each receiver's
// are written beside it from aliasWire, as its packet identifier is.

// maxTopicAliasOut bounds --topic-alias-out: the table is scanned for the
// least recently used entry when it is full, and aliasWire holds a pair of
// bytes per number.
const maxTopicAliasOut = 1024

// aliasWire[a] is alias a in wire order; never modified.
var aliasWire = func() (t [maxTopicAliasOut + 1][2]byte) {
	for a := range t {
		t[a] = [2]byte{byte(a >> 8), byte(a)}
	}
	return t
}()

// aliasTable is one connection's outbound aliases.
// REQUIRES: the owning session's mu held for every method.
type aliasTable struct {
	ids    map[string]uint16 // topic -> alias
	topics []string          // alias-1 -> topic ("" while unused)
	used   []uint32          // alias-1 -> tick of its last use
	tick   uint32
}

func newAliasTable(n int) *aliasTable {
	return &aliasTable{topics: make([]string, 0, n), used: make([]uint32, 0, n)}
}

// lookup returns the alias to send topic with, and whether the topic goes
// too (AliasSet: first use, or the alias was given to another topic since)
// or not (AliasUse).
func (t *aliasTable) lookup(topic []byte) (uint16, fanout.AliasMode) {
	t.tick++
	if a, ok := t.ids[string(topic)]; ok {
		t.used[a-1] = t.tick
		return a, fanout.AliasUse
	}
	if t.ids == nil {
		t.ids = make(map[string]uint16, cap(t.topics))
	}
	var a uint16
	if len(t.topics) < cap(t.topics) {
		t.topics = append(t.topics, "")
		t.used = append(t.used, 0)
		a = uint16(len(t.topics))
	} else {
		lru := 0
		for i, u := range t.used {
			// Ticks wrap: compare ages, not stamps.
			if t.tick-u > t.tick-t.used[lru] {
				lru = i
			}
		}
		a = uint16(lru + 1)
		delete(t.ids, t.topics[lru])
	}
	name := string(topic)
	t.ids[name] = a
	t.topics[a-1] = name
	t.used[a-1] = t.tick
	return a, fanout.AliasSet
}

// forget takes back alias a, set by the last lookup, when its PUBLISH was
// not sent after all: the client never learned it.
func (t *aliasTable) forget(a uint16) {
	delete(t.ids, t.topics[a-1])
	t.topics[a-1] = ""
	t.used[a-1] = t.tick - 1<<31 // the oldest: next to be given out
}
