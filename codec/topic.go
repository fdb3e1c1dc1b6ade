package codec

import "bytes"

// ValidateTopicName checks a topic name for PUBLISH or a will: at least one
// byte [MQTT-4.7.3-1], no wildcard characters [MQTT-3.3.2-2], at most 65,535
// bytes. UTF-8 is checked when the string is decoded.
func ValidateTopicName(t []byte) error {
	if len(t) == 0 {
		return &Error{Code: TopicNameInvalid, Rule: "MQTT-4.7.3-1", Msg: "empty topic name"}
	}
	if len(t) > 0xffff {
		return &Error{Code: TopicNameInvalid, Msg: "topic name longer than 65535 bytes"}
	}
	if hasWildcard(t) {
		return &Error{Code: TopicNameInvalid, Rule: "MQTT-3.3.2-2", Msg: "wildcard in topic name " + quote(t)}
	}
	return nil
}

// hasWildcard reports whether b holds '+' or '#'. Two IndexByte scans are
// several times faster than bytes.ContainsAny, which builds a set per call:
// this runs for every PUBLISH.
func hasWildcard(b []byte) bool {
	return bytes.IndexByte(b, '+') >= 0 || bytes.IndexByte(b, '#') >= 0
}

// ValidateTopicFilter checks a SUBSCRIBE or UNSUBSCRIBE topic filter,
// including a shared subscription's "$share/<group>/<filter>" form: at least
// one byte [MQTT-4.7.3-1]; '#' only as the whole last level [MQTT-4.7.1-1];
// '+' only as a whole level [MQTT-4.7.1-2]; a share name of at least one
// byte without '+', '#' or '/' followed by a filter [MQTT-4.8.2-1,
// MQTT-4.8.2-2].
func ValidateTopicFilter(f []byte) error {
	if len(f) == 0 {
		return &Error{Code: TopicFilterInvalid, Rule: "MQTT-4.7.3-1", Msg: "empty topic filter"}
	}
	if len(f) > 0xffff {
		return &Error{Code: TopicFilterInvalid, Msg: "topic filter longer than 65535 bytes"}
	}
	if bytes.HasPrefix(f, sharePrefix) {
		group, rest, ok := SplitShared(f)
		if !ok || len(group) == 0 || hasWildcard(group) {
			return &Error{Code: TopicFilterInvalid, Rule: "MQTT-4.8.2-2", Msg: "bad share name in " + quote(f)}
		}
		if len(rest) == 0 {
			return &Error{Code: TopicFilterInvalid, Rule: "MQTT-4.8.2-1", Msg: "shared subscription without a filter: " + quote(f)}
		}
		f = rest
	}
	for i, c := range f {
		switch c {
		case '#':
			if i != len(f)-1 || (i > 0 && f[i-1] != '/') {
				return &Error{Code: TopicFilterInvalid, Rule: "MQTT-4.7.1-1", Msg: "'#' not alone as the last level of " + quote(f)}
			}
		case '+':
			if (i > 0 && f[i-1] != '/') || (i < len(f)-1 && f[i+1] != '/') {
				return &Error{Code: TopicFilterInvalid, Rule: "MQTT-4.7.1-2", Msg: "'+' not alone in its level of " + quote(f)}
			}
		}
	}
	return nil
}

var sharePrefix = []byte("$share/")

// SplitShared splits "$share/<group>/<filter>" into its group and filter,
// aliasing f. ok is false when f is not a shared subscription; a group or
// filter may still be empty or invalid (see ValidateTopicFilter).
func SplitShared(f []byte) (group, filter []byte, ok bool) {
	if !bytes.HasPrefix(f, sharePrefix) {
		return nil, nil, false
	}
	rest := f[len(sharePrefix):]
	i := bytes.IndexByte(rest, '/')
	if i < 0 {
		return rest, nil, true
	}
	return rest[:i], rest[i+1:], true
}

func quote(b []byte) string {
	const max = 64
	if len(b) > max {
		return "\"" + string(b[:max]) + "...\""
	}
	return "\"" + string(b) + "\""
}
