package auth

// ACL rules as JSON, as an HTTP answer's "acl" field and a JWT's ACL claim
// carry them. Two forms are accepted, EMQX's:
//
// The list form, one object per rule, in order:
//
//	[{"permission": "allow", "action": "publish", "topic": "t/${clientid}"},
//	 {"permission": "deny", "action": "all", "topic": "t/private/#"}]
//
// permission is "allow" or "deny"; action is "publish" (Write),
// "subscribe" (Read) or "all" (ReadWrite); topic is a topic filter. All
// three are required. The conditions that EMQX lets a rule carry besides
// these ("qos", "retain", "clientid_re", "ipaddr", ...) and the "eq "
// topic prefix are refused rather than ignored: ignoring a condition of an
// allow rule would grant more than its author meant.
//
// The older map form, every entry an allow rule:
//
//	{"pub": ["a/#"], "sub": ["b/+"], "all": ["c"]}
//
// pub is Write, sub is Read, all is ReadWrite; any other key is refused.
//
// Topics may hold the placeholders ${username} and %u (the client's
// username, as authentication settled it), ${clientid} and %c (its client
// id), ${peerhost} (its IP address) and ${cert_common_name} (its verified
// certificate's CN); any other ${...} is refused. They are filled in as
// for the Redis and PostgreSQL sources (placeholders.go, Rule templates):
// a value that is empty, holds '/', '+', '#' or NUL, is not UTF-8, or
// would start the filter with '$' cannot be put into a filter safely; an
// allow rule that needs one is dropped, and a deny rule is widened to
// cover every topic the value could make it name, so that an unusable
// value never grants more and never denies less.
//
// Whatever fails to parse refuses the whole document: a client never gets
// part of an ACL. Both forms are the complete ACL of the client: what no
// rule allows is denied.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/gannetmq/gannet/codec"
)

const (
	// maxJSONRules bounds the rules of one document, counted before
	// placeholders drop any.
	maxJSONRules = 1000
	// maxJSONRulesBytes bounds the size of one document.
	maxJSONRulesBytes = 64 << 10
)

// parseJSONRules parses data, a JSON ACL in either form, into rules with
// placeholders replaced by r's values, username standing for the
// username authentication settled on. field names data in
// errors ("acl", `claim "acl"`): every error says which entry and which
// member was wrong. A JSON null is not accepted here: callers that treat
// null as "no ACL" check for it first.
//
// Safe for concurrent use; it keeps nothing.
func parseJSONRules(data []byte, field string, r *Request, username string) ([]Rule, error) {
	if len(data) > maxJSONRulesBytes {
		return nil, fmt.Errorf("%s: longer than %d bytes", field, maxJSONRulesBytes)
	}
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%s: bad JSON at byte %d: %s", field, se.Offset, se.Error())
		}
		return nil, fmt.Errorf("%s: bad JSON", field)
	}
	ex := rulesExpander{id: newClientValues(r, username)}
	switch rulesFirstByte(data) {
	case '[':
		return ex.parseList(data, field)
	case '{':
		return ex.parseMap(data, field)
	default:
		return nil, fmt.Errorf("%s: want a list of rules or an object of topic lists", field)
	}
}

// rulesFirstByte returns the first byte of data that is not JSON white
// space, or 0.
func rulesFirstByte(data []byte) byte {
	for _, c := range data {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}

func (ex *rulesExpander) parseList(data []byte, field string) ([]Rule, error) {
	var entries []json.RawMessage
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, fmt.Errorf("%s: want a list of rules", field)
	}
	if len(entries) > maxJSONRules {
		return nil, fmt.Errorf("%s: %d rules, more than the %d allowed", field, len(entries), maxJSONRules)
	}
	rules := make([]Rule, 0, len(entries))
	for i, raw := range entries {
		name := fmt.Sprintf("%s[%d]", field, i)
		members, err := rulesObject(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		var permission, action, topic string
		var havePermission, haveAction, haveTopic bool
		for _, m := range members {
			var dst *string
			switch m.key {
			case "permission":
				dst, havePermission = &permission, true
			case "action":
				dst, haveAction = &action, true
			case "topic":
				dst, haveTopic = &topic, true
			default:
				return nil, fmt.Errorf("%s: unsupported member %s (a rule has only \"permission\", \"action\" and \"topic\"; conditions such as qos and retain are not supported)", name, rulesQuote(m.key))
			}
			if rulesFirstByte(m.value) != '"' || json.Unmarshal(m.value, dst) != nil {
				return nil, fmt.Errorf("%s.%s: want a string", name, m.key)
			}
		}
		switch {
		case !havePermission:
			return nil, fmt.Errorf("%s: no \"permission\"", name)
		case !haveAction:
			return nil, fmt.Errorf("%s: no \"action\"", name)
		case !haveTopic:
			return nil, fmt.Errorf("%s: no \"topic\"", name)
		}
		var r Rule
		switch permission {
		case "allow":
		case "deny":
			r.Deny = true
		default:
			return nil, fmt.Errorf("%s.permission: %s is neither \"allow\" nor \"deny\"", name, rulesQuote(permission))
		}
		switch action {
		case "publish":
			r.Access = Write
		case "subscribe":
			r.Access = Read
		case "all":
			r.Access = ReadWrite
		default:
			return nil, fmt.Errorf("%s.action: %s is not \"publish\", \"subscribe\" or \"all\"", name, rulesQuote(action))
		}
		rules, err = ex.appendRule(rules, r, topic, name+".topic")
		if err != nil {
			return nil, err
		}
	}
	return rules, nil
}

func (ex *rulesExpander) parseMap(data []byte, field string) ([]Rule, error) {
	members, err := rulesObject(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	var rules []Rule
	n := 0
	for _, m := range members {
		name := field + "." + m.key
		var access Access
		switch m.key {
		case "pub":
			access = Write
		case "sub":
			access = Read
		case "all":
			access = ReadWrite
		default:
			return nil, fmt.Errorf("%s: unknown key %s (want \"pub\", \"sub\" or \"all\")", field, rulesQuote(m.key))
		}
		var topics []json.RawMessage
		if rulesFirstByte(m.value) != '[' || json.Unmarshal(m.value, &topics) != nil {
			return nil, fmt.Errorf("%s: want a list of topic filters", name)
		}
		n += len(topics)
		if n > maxJSONRules {
			return nil, fmt.Errorf("%s: more than the %d rules allowed", field, maxJSONRules)
		}
		for i, raw := range topics {
			var topic string
			if rulesFirstByte(raw) != '"' || json.Unmarshal(raw, &topic) != nil {
				return nil, fmt.Errorf("%s[%d]: want a string", name, i)
			}
			rules, err = ex.appendRule(rules, Rule{Access: access}, topic, fmt.Sprintf("%s[%d]", name, i))
			if err != nil {
				return nil, err
			}
		}
	}
	if rules == nil {
		rules = []Rule{}
	}
	return rules, nil
}

// rulesMember is one member of a JSON object, in document order.
type rulesMember struct {
	key   string
	value json.RawMessage
}

// rulesObject splits raw, which must be valid JSON, into its members in
// order, refusing anything but an object and refusing duplicate keys
// (encoding/json would keep the last silently, and two readers of one
// document must not disagree about what it grants).
func rulesObject(raw []byte) ([]rulesMember, error) {
	if rulesFirstByte(raw) != '{' {
		return nil, errors.New("want an object")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, errors.New("want an object")
	}
	var members []rulesMember
	seen := make(map[string]struct{})
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("bad JSON object")
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errors.New("bad JSON object")
		}
		if _, dup := seen[key]; dup {
			return nil, fmt.Errorf("duplicate member %s", rulesQuote(key))
		}
		seen[key] = struct{}{}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("bad value of %s", rulesQuote(key))
		}
		members = append(members, rulesMember{key: key, value: v})
	}
	return members, nil
}

// rulesExpander puts a client's values into rule topics.
type rulesExpander struct {
	id clientValues
}

// appendRule reads topic, the filter of rule r, and appends r with the
// client's values in it to rules (or drops r: see the file comment). name
// is the topic's field in errors.
func (ex *rulesExpander) appendRule(rules []Rule, r Rule, topic, name string) ([]Rule, error) {
	if strings.HasPrefix(topic, "eq ") {
		return nil, fmt.Errorf("%s: the \"eq \" prefix (an exact, non-wildcard match) is not supported: %s", name, rulesQuote(topic))
	}
	t, err := parseRulesTopic(topic)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if strings.IndexByte(topic, 0) >= 0 {
		return nil, fmt.Errorf("%s: NUL in topic filter %s", name, rulesQuote(topic))
	}
	if err := checkTemplate(&t); err != nil {
		var ce *codec.Error
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("%s: bad topic filter %s: %s", name, rulesQuote(topic), ce.Msg)
		}
		return nil, fmt.Errorf("%s: bad topic filter %s: %w", name, rulesQuote(topic), err)
	}
	rt := ruleTemplate{filter: t, access: r.Access, deny: r.Deny}
	if rule, ok := rt.apply(&ex.id); ok {
		rules = append(rules, rule)
	}
	return rules, nil
}

// parseRulesTopic splits topic into literal text and placeholders: the
// ${...} placeholders of placeholders.go, and %u and %c. A '%' followed
// by anything else is literal.
func parseRulesTopic(topic string) (phTemplate, error) {
	var t phTemplate
	last := 0
	for i := 0; i < len(topic); {
		var p placeholder
		next := i + 2
		switch {
		case strings.HasPrefix(topic[i:], "${"):
			end := strings.IndexByte(topic[i:], '}')
			if end < 0 {
				return phTemplate{}, fmt.Errorf("unterminated placeholder in %s", rulesQuote(topic))
			}
			ph := topic[i+2 : i+end]
			var ok bool
			if p, ok = lookupPlaceholder(ph); !ok {
				return phTemplate{}, fmt.Errorf("unknown placeholder %s (known: %s, %%u, %%c)", rulesQuote("${"+ph+"}"), knownPlaceholders())
			}
			next = i + end + 1
		case strings.HasPrefix(topic[i:], "%u"):
			p = phUsername
		case strings.HasPrefix(topic[i:], "%c"):
			p = phClientID
		default:
			i++
			continue
		}
		t.lits = append(t.lits, topic[last:i])
		t.holes = append(t.holes, p)
		i, last = next, next
	}
	t.lits = append(t.lits, topic[last:])
	return t, nil
}

// rulesQuote quotes s for an error message, cut to a readable length.
func rulesQuote(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q...", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}

// jsonKindName names the JSON type that a Go kind (reflect.Kind's
// String) decodes from, for "want a JSON ..." errors.
func jsonKindName(kind string) string {
	switch kind {
	case "bool":
		return "boolean"
	case "string":
		return "string"
	case "slice", "array":
		return "list"
	case "map", "struct":
		return "object"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "number"
	default:
		return "value of another type"
	}
}
