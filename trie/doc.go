// Package trie indexes MQTT topic filters for matching topic names.
//
// The broker matches every publish against every subscription, on every
// event loop, so Match is the hot path; the cluster matches again against
// its route table (filter -> nodes). A trie keyed by filter level makes the
// cost of a match depend on the topic's depth and on the wildcards met
// along its path, not on the number of subscriptions.
//
// # Shape
//
// A node is where one or more filter levels end. It holds the plain
// subscriptions whose filter ends there and the shared groups of that
// filter, and leads on to its children:
//
//	root ──"site"──▶ • ──"12"──▶ • ──"dev/42"──▶ • ──"temp"──▶ • {k1, k2}
//	                              │                 └──"hum"───▶ • {k3}
//	                              └─'+'─▶ • ──"42/temp"──▶ • {k4}
//
// Exact children hang on labelled edges; the '+' and '#' children are
// kept apart, so a match never looks a wildcard up by name. A run of exact
// levels with nothing in between is one edge ("dev/42"), so the unshared
// tail of a filter costs one node; an edge is split at the level where a
// new filter leaves it, and merged again when that filter goes, so the
// shape depends only on the filters present. Labels are substrings of the
// subscribed filter strings, which the broker keeps anyway.
//
// A node's exact children are a short list, or past eight a hash table
// with linear probing. Every edge carries a 32-bit hash of its first
// level, seeded per trie so that nobody can pick levels that collide, and
// a lookup compares hashes before it reads a label: labels live apart from
// the nodes, and in a big trie each one read is a cache miss. The first
// subscription of a filter is held in its node, since most filters have
// one; further ones go in a slice, with a map from key to position once
// there are more than 32, so that a filter with a hundred thousand
// subscribers changes as fast as one with three.
//
// # Matching
//
// Match walks the topic once, level by level, without splitting it: at
// each node it reports the '#' child's entries, descends into the '+'
// child with the rest of the topic, and follows the exact edge of the
// level, comparing a label of several levels with the topic bytes in
// place. A topic starting with '$' skips the root's wildcard children
// [MQTT-4.7.2-1]. Entries go to a visitor callback and shared groups to a
// second one, once per group, for the caller to pick a member (Group.Next
// helps with round robin); a match allocates nothing.
//
// The benchmarks build a million 5-level subscriptions, one per filter,
// in about 135 bytes each (filter strings included). Matching a topic
// whose path is in the CPU caches takes a few hundred nanoseconds; one
// whose every node comes from main memory costs a cache miss per step,
// about a dozen in all.
//
// # Concurrency
//
// One sync.RWMutex guards the trie. Match holds it for reading, so the
// event loops match in parallel; Subscribe and Unsubscribe take it for
// writing and are short: about a microsecond in a trie of a million, most
// of it cache misses on the way down. Reads dominate, but a
// lock-free copy-on-write trie would cost more than it saves here: each
// change would copy the path to the changed node, including tables of
// thousands of children and entry sets of thousands of subscribers, and a
// Group handed to visitGroup would need its own snapshot so that Len and
// At agree. The price of the lock is an atomic add on a shared word per
// Match. The callbacks run under the read lock: they must not call into
// the trie, and locks they take rank below it.
//
// There is no result cache (nats-server's Sublist keeps one): a cached
// result must be stored, which allocates on a miss, and device topics are
// often unique, so the cache would mostly miss and be invalidated by every
// subscription change.
package trie
