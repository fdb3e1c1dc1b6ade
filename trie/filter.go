package trie

import (
	"errors"
	"strings"
)

// ErrInvalidFilter is returned for a filter that breaks the MQTT wildcard
// rules: an empty filter [MQTT-4.7.3-1], '#' other than alone as the last
// level [MQTT-4.7.1-1], '+' not alone in its level [MQTT-4.7.1-2], or a
// malformed "$share/<group>/<filter>" [MQTT-4.8.2-1] [MQTT-4.8.2-2].
// Statement ids are those of MQTT 5.0.
var ErrInvalidFilter = errors.New("trie: invalid topic filter")

// sharePrefix starts a shared subscription's filter [MQTT-4.8.2-1].
const sharePrefix = "$share/"

// parse splits filter into its share group (empty for a plain filter) and
// the filter proper, and checks both. The results are substrings of
// filter.
func parse(filter string) (group, f string, err error) {
	f = filter
	if strings.HasPrefix(f, sharePrefix) {
		rest := f[len(sharePrefix):]
		i := strings.IndexByte(rest, '/')
		// A share name of at least one character without '+' or '#' (nor
		// '/', which ends it), then '/' and a filter [MQTT-4.8.2-1]
		// [MQTT-4.8.2-2].
		if i <= 0 || strings.ContainsAny(rest[:i], "+#") {
			return "", "", ErrInvalidFilter
		}
		group, f = rest[:i], rest[i+1:]
	}
	if f == "" {
		return "", "", ErrInvalidFilter // [MQTT-4.7.3-1]
	}
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case '#':
			// Alone in the last level [MQTT-4.7.1-1].
			if i != len(f)-1 || (i > 0 && f[i-1] != '/') {
				return "", "", ErrInvalidFilter
			}
		case '+':
			// Alone in its level [MQTT-4.7.1-2].
			if (i > 0 && f[i-1] != '/') || (i < len(f)-1 && f[i+1] != '/') {
				return "", "", ErrInvalidFilter
			}
		}
	}
	return group, f, nil
}

// nextLevel splits the first level off filter f. more is false when f
// has a single level.
func nextLevel(f string) (level, rest string, more bool) {
	if i := strings.IndexByte(f, '/'); i >= 0 {
		return f[:i], f[i+1:], true
	}
	return f, "", false
}

// firstLevel returns the first level of a label.
func firstLevel(label string) string {
	l, _, _ := nextLevel(label)
	return l
}

// hasLevels reports whether f starts with the whole levels of label.
func hasLevels(f, label string) bool {
	return len(f) >= len(label) && f[:len(label)] == label && (len(f) == len(label) || f[len(label)] == '/')
}

// commonLevels returns the length of the longest run of whole levels that
// label and f both start with; 0 when even their first levels differ
// (callers only ask when the first levels are equal).
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

// exactPrefix splits f before its first wildcard level: label holds the
// exact levels (f starts with one), rest the filter from the wildcard on;
// more is false when f has no wildcard.
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
