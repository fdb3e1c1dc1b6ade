package auth

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

var rulesTestRequest = &Request{ClientID: "dev-1", Username: "alice", Remote: "192.0.2.7:5000", CertCN: "alice-cert"}

func TestRulesJSONForms(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []Rule
	}{
		{
			name: "list",
			in: `[{"permission":"allow","action":"publish","topic":"a/#"},
			      {"permission":"deny","action":"subscribe","topic":"b/+"},
			      {"topic":"c","action":"all","permission":"allow"}]`,
			want: []Rule{
				{Filter: "a/#", Access: Write},
				{Filter: "b/+", Access: Read, Deny: true},
				{Filter: "c", Access: ReadWrite},
			},
		},
		{
			name: "map",
			in:   `{"pub":["a/#","x"],"sub":["b/+"],"all":["c"]}`,
			want: []Rule{
				{Filter: "a/#", Access: Write},
				{Filter: "x", Access: Write},
				{Filter: "b/+", Access: Read},
				{Filter: "c", Access: ReadWrite},
			},
		},
		{name: "empty list", in: ` [ ] `, want: []Rule{}},
		{name: "empty map", in: `{}`, want: []Rule{}},
		{
			name: "placeholders",
			in: `[{"permission":"allow","action":"all","topic":"u/${username}/${clientid}/#"},
			      {"permission":"allow","action":"all","topic":"old/%u/%c/x%%"},
			      {"permission":"allow","action":"all","topic":"h/${peerhost}/${cert_common_name}"},
			      {"permission":"allow","action":"all","topic":"$share/g/s/${clientid}"}]`,
			want: []Rule{
				{Filter: "u/alice/dev-1/#", Access: ReadWrite},
				{Filter: "old/alice/dev-1/x%%", Access: ReadWrite},
				{Filter: "h/192.0.2.7/alice-cert", Access: ReadWrite},
				{Filter: "$share/g/s/dev-1", Access: ReadWrite},
			},
		},
		{
			name: "map placeholders",
			in:   `{"pub":["t/%c"]}`,
			want: []Rule{{Filter: "t/dev-1", Access: Write}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseJSONRules([]byte(tt.in), "acl", rulesTestRequest, "alice")
			if err != nil {
				t.Fatalf("parseJSONRules: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// An unusable value never grants and never denies less: an allow rule
// that needs it is dropped, a deny rule is widened to cover every topic
// the value could make it name ('+' for a level, '#' from a level the
// value could split). TestPlaceholderRuleTemplate checks that the Redis
// and PostgreSQL sources agree.
func TestRulesJSONUnsafeValues(t *testing.T) {
	in := `[{"permission":"allow","action":"all","topic":"u/${username}/#"},
	        {"permission":"deny","action":"publish","topic":"u/${username}/x/${clientid}"},
	        {"permission":"allow","action":"all","topic":"c/${clientid}"}]`
	for username, deny := range map[string]string{
		"":       "u/+/x/dev-1",
		"a/b":    "u/#",
		"a+":     "u/+/x/dev-1",
		"#":      "u/#",
		"x\x00y": "u/+/x/dev-1",
		"\xff":   "u/+/x/dev-1",
	} {
		t.Run(fmt.Sprintf("%q", username), func(t *testing.T) {
			got, err := parseJSONRules([]byte(in), "acl", rulesTestRequest, username)
			if err != nil {
				t.Fatalf("parseJSONRules: %v", err)
			}
			want := []Rule{
				{Filter: deny, Access: Write, Deny: true},
				{Filter: "c/dev-1", Access: ReadWrite},
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
	// '$' is unusable only where it would start the filter.
	got, err := parseJSONRules([]byte(in), "acl", rulesTestRequest, "$SYS")
	want := []Rule{
		{Filter: "u/$SYS/#", Access: ReadWrite},
		{Filter: "u/$SYS/x/dev-1", Access: Write, Deny: true},
		{Filter: "c/dev-1", Access: ReadWrite},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("username \"$SYS\": got %+v, %v; want %+v", got, err, want)
	}
	got, err = parseJSONRules([]byte(`{"all":["${username}/#"]}`), "acl", rulesTestRequest, "$SYS")
	if err != nil || len(got) != 0 {
		t.Fatalf("allow rule starting with username \"$SYS\": got %+v, %v; want it dropped", got, err)
	}
}

func TestRulesJSONErrors(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
	}{
		{"not json", `[{`, "acl: bad JSON"},
		{"trailing", `[] []`, "acl: bad JSON"},
		{"string", `"a/b"`, "acl: want a list of rules or an object"},
		{"null", `null`, "acl: want a list of rules or an object"},
		{"entry not object", `["a/b"]`, "acl[0]: want an object"},
		{"no permission", `[{"action":"all","topic":"a"}]`, `acl[0]: no "permission"`},
		{"no action", `[{"permission":"allow","topic":"a"}]`, `acl[0]: no "action"`},
		{"no topic", `[{"permission":"allow","action":"all"}]`, `acl[0]: no "topic"`},
		{"bad permission", `[{"permission":"maybe","action":"all","topic":"a"}]`, `acl[0].permission: "maybe" is neither`},
		{"bad action", `[{"permission":"allow","action":"pub","topic":"a"}]`, `acl[0].action: "pub" is not`},
		{"topic not string", `[{"permission":"allow","action":"all","topic":7}]`, `acl[0].topic: want a string`},
		{"null topic", `[{"permission":"allow","action":"all","topic":null}]`, `acl[0].topic: want a string`},
		{"qos condition", `[{"permission":"allow","action":"all","topic":"a","qos":[1]}]`, `acl[0]: unsupported member "qos"`},
		{"retain condition", `[{"permission":"deny","action":"all","topic":"a","retain":true}]`, `acl[0]: unsupported member "retain"`},
		{"duplicate member", `[{"permission":"deny","permission":"allow","action":"all","topic":"a"}]`, `acl[0]: duplicate member "permission"`},
		{"eq prefix", `[{"permission":"allow","action":"all","topic":"eq t/#"}]`, `acl[0].topic: the "eq " prefix`},
		{"bad filter hash", `[{"permission":"allow","action":"all","topic":"ok"},{"permission":"allow","action":"all","topic":"a/#/b"}]`, `acl[1].topic: bad topic filter`},
		{"bad filter plus", `{"sub":["a/b+"]}`, `acl.sub[0]: bad topic filter`},
		{"empty filter", `{"all":[""]}`, `acl.all[0]: bad topic filter`},
		{"nul filter", `{"all":["a\u0000b"]}`, `acl.all[0]: NUL in topic filter`},
		{"unknown placeholder", `{"pub":["a/${zone}"]}`, `acl.pub[0]: unknown placeholder "${zone}"`},
		{"unterminated placeholder", `{"pub":["a/${username"]}`, `acl.pub[0]: unterminated placeholder`},
		{"unknown map key", `{"pub":["a"],"publish":["b"]}`, `acl: unknown key "publish"`},
		{"map value not list", `{"pub":"a"}`, `acl.pub: want a list of topic filters`},
		{"map null value", `{"pub":null}`, `acl.pub: want a list of topic filters`},
		{"map entry not string", `{"pub":["a",1]}`, `acl.pub[1]: want a string`},
		{"bad share", `{"sub":["$share//a"]}`, `acl.sub[0]: bad topic filter`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseJSONRules([]byte(tt.in), "acl", rulesTestRequest, "alice")
			if err == nil {
				t.Fatalf("parseJSONRules = %+v, want an error", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestRulesJSONLimits(t *testing.T) {
	rule := `{"permission":"allow","action":"all","topic":"t"}`
	list := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat(rule+",", n), ",") + "]" }
	if rules, err := parseJSONRules([]byte(list(maxJSONRules)), "acl", rulesTestRequest, "alice"); err != nil || len(rules) != maxJSONRules {
		t.Fatalf("%d rules: got %d rules, err %v", maxJSONRules, len(rules), err)
	}
	if _, err := parseJSONRules([]byte(list(maxJSONRules+1)), "acl", rulesTestRequest, "alice"); err == nil || !strings.Contains(err.Error(), "more than the 1000") {
		t.Fatalf("%d rules: err %v, want too many rules", maxJSONRules+1, err)
	}
	topics := `"t"` + strings.Repeat(`,"t"`, 600)
	if _, err := parseJSONRules([]byte(`{"pub":[`+topics+`],"sub":[`+topics+`]}`), "acl", rulesTestRequest, "alice"); err == nil || !strings.Contains(err.Error(), "more than the 1000") {
		t.Fatalf("map of 1202 rules: err %v, want too many rules", err)
	}
	big := `["` + strings.Repeat("a", maxJSONRulesBytes) + `"]`
	if _, err := parseJSONRules([]byte(big), "acl", rulesTestRequest, "alice"); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("oversize: err %v, want too long", err)
	}
}

// FuzzRulesJSON checks that parseJSONRules never panics, and that what it
// accepts is within its limits, holds only valid filters and known
// access values, and reads back the same in the list form.
func FuzzRulesJSON(f *testing.F) {
	for _, seed := range []string{
		`[{"permission":"allow","action":"publish","topic":"a/#"}]`,
		`[{"permission":"deny","action":"all","topic":"u/${username}/+"}]`,
		`{"pub":["a/#"],"sub":["b/+"],"all":["c/%c"]}`,
		`{"sub":["$share/g/t/#"]}`,
		`[]`, `{}`, `null`, `[{"permission":"allow","action":"all","topic":"x","qos":[0]}]`,
		`{"pub":["a/${clientid"]}`, `[{"permission":"allow","permission":"deny"}]`,
	} {
		f.Add([]byte(seed), "alice", "c1")
	}
	f.Fuzz(func(t *testing.T, data []byte, username, clientID string) {
		r := &Request{ClientID: clientID, Username: username, Remote: "[2001:db8::1]:1883"}
		rules, err := parseJSONRules(data, "acl", r, username)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
			return
		}
		if rules == nil || len(rules) > maxJSONRules {
			t.Fatalf("%d rules (nil %v)", len(rules), rules == nil)
		}
		type entry struct {
			Permission string `json:"permission"`
			Action     string `json:"action"`
			Topic      string `json:"topic"`
		}
		var list []entry
		for _, r := range rules {
			// A widened deny rule need only be one the matcher compiles:
			// a wildcard may take the place of a "$share/" group.
			if err := codec.ValidateTopicFilter([]byte(r.Filter)); err != nil && !(r.Deny && validFilter(r.Filter)) {
				t.Fatalf("accepted bad filter %q: %v", r.Filter, err)
			}
			e := entry{Permission: "allow", Topic: r.Filter}
			if r.Deny {
				e.Permission = "deny"
			}
			switch r.Access {
			case Read:
				e.Action = "subscribe"
			case Write:
				e.Action = "publish"
			case ReadWrite:
				e.Action = "all"
			default:
				t.Fatalf("rule %+v has access %v", r, r.Access)
			}
			list = append(list, e)
		}
		for _, r := range rules {
			if strings.ContainsAny(r.Filter, "$%") || strings.HasPrefix(r.Filter, "eq ") {
				return // the filter reads back as something else
			}
		}
		again, err := json.Marshal(list)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			again = []byte("[]")
		}
		if len(again) > maxJSONRulesBytes {
			return
		}
		back, err := parseJSONRules(again, "acl", r, username)
		if err != nil {
			t.Fatalf("accepted rules do not read back: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(back, rules) {
			t.Fatalf("read back %+v, want %+v", back, rules)
		}
	})
}
