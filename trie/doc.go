// Package trie indexes MQTT topic filters for matching topic names.
//
// The broker matches every publish against every subscription, so match
// is the hot path: it runs on every event loop for every message. A trie
// keyed by filter level makes its cost depend on the topic's depth and the
// wildcards present along its path, not on the number of subscriptions.
//
// Shape. Each node is where one or more filter levels end and holds the
// plain subscriptions of that filter and its shared groups. Its children
// are the exact next levels plus at most one '+' and one '#' child, kept
// apart so that a match never looks wildcards up by name. A chain of exact
// levels with nothing in between is one edge whose label carries them all
// ("dev/42/temp"); the unshared tail of a filter therefore costs a single
// node, which keeps a million distinct five-level filters under 200 bytes
// each (see BENCHMARKS.md). An edge is split at the level where a new
// filter leaves it. Exact children sit in a short slice until there are
// more than smallKids of them, then in a map.
//
// Matching walks the topic once, level by level, without splitting it into
// a slice: at each node it visits the '#' child's entries, descends into
// the '+' child with the rest of the topic, and descends into the exact
// child for the level, comparing a multi-level edge label with the topic
// bytes directly. A topic starting with '$' skips the wildcard children of
// the root [MQTT-4.7.2-1]. Entries are handed to a visitor callback, so a
// match allocates nothing.
//
// Shared subscriptions "$share/<group>/<filter>" are stored at the node of
// <filter> as groups, reported once per group through a separate callback;
// the caller picks one member (Group.Next helps with round robin).
//
// Concurrency. One RWMutex guards the trie. Match holds it for reading, so
// matches on all event loops run in parallel; Subscribe and Unsubscribe
// take it for writing and are short. Subscription changes are rare next to
// publishes, and a read lock costs one atomic add, which is cheaper than
// the copy-on-write of a persistent structure would be at a million
// subscriptions.
package trie
