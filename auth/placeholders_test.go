package auth

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gannetmq/gannet/codec"
)

func testClientValues() clientValues {
	r := &Request{ClientID: "dev-1", Remote: "[2001:db8::1]:51234", CertCN: "cn.example"}
	return newClientValues(r, "alice")
}

func TestPlaceholderTemplate(t *testing.T) {
	id := testClientValues()
	for _, tc := range []struct {
		in, want string
	}{
		{"mqtt_user:${username}", "mqtt_user:alice"},
		{"${clientid}/${username}/${clientid}", "dev-1/alice/dev-1"},
		{"host:${peerhost} cn:${cert_common_name}", "host:2001:db8::1 cn:cn.example"},
		{"no placeholders", "no placeholders"},
		{"$SYS/$x/${username}$", "$SYS/$x/alice$"},
		{"", ""},
	} {
		tmpl, err := parseTemplate(tc.in)
		if err != nil {
			t.Errorf("parseTemplate(%q): %v", tc.in, err)
			continue
		}
		if got := tmpl.expand(&id); got != tc.want {
			t.Errorf("parseTemplate(%q).expand = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, wantErr string }{
		{"k:${user}", "column 3: unknown placeholder ${user}"},
		{"k:${username", "column 3: \"${\" without a closing \"}\""},
		{"${}", "unknown placeholder ${}"},
		{"${USERNAME}", "unknown placeholder ${USERNAME}"},
	} {
		_, err := parseTemplate(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("parseTemplate(%q) = %v, want an error with %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestPlaceholderPeerHost(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:1883":  "192.0.2.1",
		"[2001:db8::1]:1": "2001:db8::1",
		"unix-socket":     "unix-socket",
		"":                "",
	} {
		if got := peerHost(in); got != want {
			t.Errorf("peerHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPlaceholderSQL(t *testing.T) {
	for _, tc := range []struct {
		in, text string
		params   []placeholder
	}{
		{DefaultPostgresAuthQuery, strings.Replace(DefaultPostgresAuthQuery, "${username}", "$1", 1), []placeholder{phUsername}},
		{"SELECT 1 WHERE a = ${clientid} AND b = ${username} OR c = ${clientid}",
			"SELECT 1 WHERE a = $1 AND b = $2 OR c = $1", []placeholder{phClientID, phUsername}},
		// Positional parameters: $1 username, $2 client id, $3 peer host.
		{"SELECT h FROM u WHERE name = $1 AND cid = $2 AND ip = $3::inet",
			"SELECT h FROM u WHERE name = $1 AND cid = $2 AND ip = $3::inet", []placeholder{phUsername, phClientID, phPeerhost}},
		{"SELECT h FROM u WHERE name = $1;", "SELECT h FROM u WHERE name = $1;", []placeholder{phUsername}},
		// Quoted text, comments and identifiers are left alone.
		{"SELECT '$2', \"$3\", $$ $4 $$, $q$ ${x} $q$, a$3 FROM t WHERE u = $1 -- $4\n/* $4 /* ${y} */ */",
			"SELECT '$2', \"$3\", $$ $4 $$, $q$ ${x} $q$, a$3 FROM t WHERE u = $1 -- $4\n/* $4 /* ${y} */ */", []placeholder{phUsername}},
		{"SELECT E'\\'$2' FROM t WHERE u = ${username}", "SELECT E'\\'$2' FROM t WHERE u = $1", []placeholder{phUsername}},
		{"SELECT 'it''s ${x}' WHERE u = ${username} ; -- done", "SELECT 'it''s ${x}' WHERE u = $1 ; -- done", []placeholder{phUsername}},
		// A parameter stays a token of its own.
		{"SELECT x${username}, ${clientid}9", "SELECT x $1, $2 9", []placeholder{phUsername, phClientID}},
		{"SELECT 1", "SELECT 1", nil},
	} {
		q, err := parseSQL(tc.in)
		if err != nil {
			t.Errorf("parseSQL(%q): %v", tc.in, err)
			continue
		}
		if q.text != tc.text || !slices.Equal(q.params, tc.params) {
			t.Errorf("parseSQL(%q) = %q %v, want %q %v", tc.in, q.text, q.params, tc.text, tc.params)
		}
	}
}

func TestPlaceholderSQLErrors(t *testing.T) {
	for _, tc := range []struct{ in, wantErr string }{
		{"", "empty query"},
		{" -- nothing\n", "empty query"},
		{"SELECT 1 WHERE u = ${user}", "column 20: unknown placeholder ${user}"},
		{"SELECT 1\nWHERE u = ${usernme}", "line 2, column 11: unknown placeholder"},
		{"SELECT 1 WHERE u = ${username", "without a closing"},
		{"SELECT 1 WHERE u = ${username} AND c = $2", "positional parameter after a placeholder"},
		{"SELECT 1 WHERE u = $1 AND c = ${clientid}", "placeholder after a positional parameter"},
		{"SELECT 1 WHERE u = $5", "parameter $5 does not exist"},
		{"SELECT 1 WHERE u = $0", "parameter $0 does not exist"},
		{"SELECT 1 WHERE c = $2", "uses $2 but not $1"},
		{"SELECT 1 WHERE u = '${username}'", "placeholder ${username} inside quotes"},
		{"SELECT 1 WHERE u = $$${clientid}$$", "placeholder ${clientid} inside quotes"},
		{"SELECT 1 WHERE u = 'abc", "column 20: string literal without its closing '"},
		{"SELECT \"abc", "quoted identifier without its closing"},
		{"SELECT 1 /* /* */", "comment without its closing"},
		{"SELECT $t$ x", "dollar-quoted string without its closing $t$"},
		{"SELECT 1; DROP TABLE x", "more than one statement"},
		{"SELECT 1;;", "more than one statement"},
	} {
		_, err := parseSQL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("parseSQL(%q) = %v, want an error with %q", tc.in, err, tc.wantErr)
		}
	}
}

// TestPlaceholderRuleTemplate checks how a client's values go into a
// stored filter, and that a JSON ACL (an HTTP answer, a JWT claim) puts
// them in the same way: an unusable value drops an allow rule and widens
// a deny rule to cover every topic the value could make it name.
func TestPlaceholderRuleTemplate(t *testing.T) {
	const dropped = "(dropped)"
	for _, tc := range []struct {
		filter, user, client string
		deny                 bool
		want                 string
	}{
		{filter: "users/${username}/#", user: "alice", want: "users/alice/#"},
		{filter: "devices/${clientid}/+", user: "alice", want: "devices/dev-1/+"},
		{filter: "$SYS/broker/#", user: "alice", want: "$SYS/broker/#"},
		{filter: "a/${username}-${clientid}/b", user: "alice", want: "a/alice-dev-1/b"},
		// '$' elsewhere than at the start of the filter is harmless.
		{filter: "u/${username}", user: "$x", want: "u/$x"},
		{filter: "u/${username}", user: "$x", deny: true, want: "u/$x"},
		// Values that would change the filter's shape drop an allow rule...
		{filter: "users/${username}/#", user: "a/b", want: dropped},
		{filter: "users/${username}/#", user: "+", want: dropped},
		{filter: "users/${username}", user: "#", want: dropped},
		{filter: "users/${username}", user: "", want: dropped},
		{filter: "users/${username}", user: "a\x00b", want: dropped},
		{filter: "users/${username}", user: "\xff", want: dropped},
		{filter: "${username}/#", user: "$SYS", want: dropped},
		{filter: "c/${clientid}", user: "alice", client: "a/b", want: dropped},
		// ...and widen a deny rule, never narrow or drop it: a value
		// that could span levels ends the filter with '#' there...
		{filter: "users/${username}/#", user: "a/b", deny: true, want: "users/#"},
		{filter: "t/${username}/secret", user: "a/b", deny: true, want: "t/#"},
		{filter: "t/${username}/secret", user: "#", deny: true, want: "t/#"},
		{filter: "t/x${clientid}y/secret", user: "alice", client: "a/b", deny: true, want: "t/#"},
		{filter: "${clientid}/secret", user: "alice", client: "a/b", deny: true, want: "#"},
		// ...one that fills one level makes it '+'...
		{filter: "t/${username}/secret", user: "a+", deny: true, want: "t/+/secret"},
		{filter: "t/${username}/secret", user: "+", deny: true, want: "t/+/secret"},
		{filter: "t/${username}/secret", user: "", deny: true, want: "t/+/secret"},
		{filter: "t/${username}/secret", user: "a\x00b", deny: true, want: "t/+/secret"},
		{filter: "u/${username}/x/${clientid}", user: "", deny: true, want: "u/+/x/dev-1"},
		{filter: "u/${username}/x/${clientid}", user: "", client: "a/b", deny: true, want: "u/+/x/#"},
		// ...and a '$' it puts at the start of the filter stays: no
		// wildcard there would match a '$' topic.
		{filter: "${username}/#", user: "$SYS", deny: true, want: "$SYS/#"},
		{filter: "${username}/secret", user: "$SYS", deny: true, want: "$SYS/secret"},
		{filter: "${username}/secret", user: "$SYS/broker", deny: true, want: "$SYS/#"},
		{filter: "${username}/secret", user: "$a+b", deny: true, want: "+/secret"},
		{filter: "${username}x/secret", user: "", deny: true, want: "+/secret"},
	} {
		user, client := tc.user, tc.client
		if client == "" {
			client = "dev-1"
		}
		r := &Request{ClientID: client, Remote: "192.0.2.1:1"}
		want := Rule{Filter: tc.want, Access: Write, Deny: tc.deny}

		rt, err := backendTemplate(tc.filter, Write, tc.deny)
		if err != nil {
			t.Fatalf("backendTemplate(%q): %v", tc.filter, err)
		}
		id := newClientValues(r, user)
		got, ok := rt.apply(&id)
		if tc.want == dropped {
			if ok {
				t.Errorf("%q for user %q, client %q: got %+v, want it dropped", tc.filter, user, client, got)
			}
		} else if !ok || got != want {
			t.Errorf("%q for user %q, client %q: got %+v (ok %v), want %+v", tc.filter, user, client, got, ok, want)
		}

		permission := "allow"
		if tc.deny {
			permission = "deny"
		}
		doc, _ := json.Marshal([]map[string]string{{"permission": permission, "action": "publish", "topic": tc.filter}})
		rules, err := parseJSONRules(doc, "acl", r, user)
		if err != nil {
			t.Fatalf("parseJSONRules(%s): %v", doc, err)
		}
		if tc.want == dropped && len(rules) != 0 || tc.want != dropped && !slices.Equal(rules, []Rule{want}) {
			t.Errorf("JSON %s for user %q, client %q: got %+v, want %q", doc, user, client, rules, tc.want)
		}

		// The ACL file's pattern lines agree (a deny line denies reading
		// and writing alike).
		if rules, ok := aclPatternRules(t, tc.filter, Write, tc.deny, r, user); ok {
			if tc.deny {
				want.Access = ReadWrite
			}
			if tc.want == dropped && len(rules) != 0 || tc.want != dropped && !slices.Equal(rules, []Rule{want}) {
				t.Errorf("ACL file pattern %q for user %q, client %q: got %+v, want %q", tc.filter, user, client, rules, tc.want)
			}
		}
	}
}

// TestPlaceholderTemplateErrors checks that a stored filter that no
// values could make valid is an error, whoever the client is.
func TestPlaceholderTemplateErrors(t *testing.T) {
	for _, tc := range []struct{ filter, wantErr string }{
		{"a/#/b", "MQTT-4.7.1-1"},
		{"a/${clientid}#", "MQTT-4.7.1-1"},
		{"a/+${username}", "MQTT-4.7.1-2"},
		{"", "empty topic filter"},
		{"u/${nobody}", "unknown placeholder"},
		{"u/${username", "without a closing"},
	} {
		if _, err := backendTemplate(tc.filter, Write, true); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("backendTemplate(%q) = %v, want an error with %q", tc.filter, err, tc.wantErr)
		}
	}
}

func TestPlaceholderBackendError(t *testing.T) {
	cause := errors.New("connection refused")
	err := backendUnavailable(cause, "auth: redis: cannot read user %q", "bob")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, cause) {
		t.Errorf("%v does not wrap both ErrUnavailable and its cause", err)
	}
	if want := `auth: redis: cannot read user "bob": connection refused`; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if err := backendUnavailable(nil, "x"); !errors.Is(err, ErrUnavailable) || err.Error() != "x" {
		t.Errorf("error without a cause = %q", err)
	}
}

func TestPlaceholderSuperuser(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want bool
		err  bool
	}{
		{nil, false, false}, {"1", true, false}, {"true", true, false}, {"TRUE", true, false},
		{"0", false, false}, {"false", false, false}, {"", false, false},
		{true, true, false}, {int64(1), true, false}, {int32(0), false, false},
		{"yes", false, true}, {1.5, false, true},
	} {
		got, err := backendSuperuser(tc.v)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("backendSuperuser(%#v) = %v, %v; want %v, error %v", tc.v, got, err, tc.want, tc.err)
		}
	}
}

// FuzzPlaceholderTemplate checks that parsing never panics and that a
// template expanded with each placeholder's own text gives its input
// back.
func FuzzPlaceholderTemplate(f *testing.F) {
	for _, s := range []string{"mqtt_user:${username}", "${clientid}${peerhost}", "$", "${", "${}", "}${cert_common_name}$", "a${x}"} {
		f.Add(s)
	}
	var self clientValues
	for p := phUsername; p <= phCount; p++ {
		self[p] = p.String()
	}
	f.Fuzz(func(t *testing.T, s string) {
		tmpl, err := parseTemplate(s)
		if err != nil {
			if !strings.Contains(s, "${") {
				t.Fatalf("parseTemplate(%q) without \"${\": %v", s, err)
			}
			return
		}
		if len(tmpl.lits) != len(tmpl.holes)+1 {
			t.Fatalf("parseTemplate(%q): %d literals for %d holes", s, len(tmpl.lits), len(tmpl.holes))
		}
		if got := tmpl.expand(&self); got != s {
			t.Fatalf("parseTemplate(%q) expands to %q", s, got)
		}
	})
}

// FuzzPlaceholderSQL checks that parsing never panics; that a query
// without "${" comes back unchanged; and that the text made from
// placeholders parses again as positional parameters $1..$n, bound to the
// same values in the same order.
func FuzzPlaceholderSQL(f *testing.F) {
	for _, s := range []string{
		DefaultPostgresAuthQuery, DefaultPostgresACLQuery,
		"SELECT '$2', \"$3\", $$ $4 $$, $q$ ${x} $q$, a$3 FROM t WHERE u = $1 -- $4\n/* $4 /* ${y} */ */",
		"SELECT E'\\'' || x${username}${clientid}9 ; -- end",
		"SELECT $2, $1, $3, $4", "SELECT 'a''b' FROM \"t\"\"\" WHERE c = ${peerhost}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := parseSQL(s)
		if err != nil {
			return
		}
		if !strings.Contains(s, "${") && q.text != s {
			t.Fatalf("parseSQL(%q) changed a query without placeholders into %q", s, q.text)
		}
		if q.text == s {
			return
		}
		again, err := parseSQL(q.text)
		if err != nil {
			t.Fatalf("parseSQL(%q) = %q, which does not parse: %v", s, q.text, err)
		}
		if again.text != q.text || len(again.params) != len(q.params) {
			t.Fatalf("parseSQL(%q) = %q %v, parsed again as %q %v", s, q.text, q.params, again.text, again.params)
		}
		for i, p := range again.params {
			if p != placeholder(i+1) {
				t.Fatalf("parseSQL(%q) = %q: parameter $%d parsed again as %v", s, q.text, i+1, p)
			}
		}
	})
}

// FuzzPlaceholderRuleTemplate checks what a client's values do to a
// stored filter. An allow rule made for any values has a valid filter
// with the '/', '+' and '#' of the stored filter only, and is a $-topic
// filter only when the stored one is. A deny rule is never dropped, has
// a filter the matcher compiles, and matches every topic that the filter
// with the values put in as they are matches.
func FuzzPlaceholderRuleTemplate(f *testing.F) {
	for _, s := range [][2]string{
		{"users/${username}/#", "alice"}, {"${username}/#", "$SYS"}, {"a/${clientid}/+", "a/b"},
		{"${username}", "+"}, {"x${username}y/${username}", "#"}, {"$share/g/${username}", "u"},
		{"${username}/secret", "$SYS/x"}, {"t/${clientid}/x/${username}", ""},
	} {
		f.Add(s[0], s[1], false)
		f.Add(s[0], s[1], true)
	}
	count := func(s string) [3]int {
		return [3]int{strings.Count(s, "/"), strings.Count(s, "+"), strings.Count(s, "#")}
	}
	f.Fuzz(func(t *testing.T, filter, username string, deny bool) {
		rt, err := backendTemplate(filter, ReadWrite, deny)
		if err != nil {
			return
		}
		r := &Request{ClientID: username + "-c", Remote: "192.0.2.1:1", CertCN: username}
		id := newClientValues(r, username)
		rule, ok := rt.apply(&id)
		if !ok {
			if deny {
				t.Fatalf("deny rule %q for %q dropped", filter, username)
			}
			return
		}
		if rule.Deny != deny || rule.Access != ReadWrite {
			t.Fatalf("rule %q for %q = %+v", filter, username, rule)
		}
		if !validFilter(rule.Filter) {
			t.Fatalf("rule %q for %q = %q, which the matcher does not compile", filter, username, rule.Filter)
		}
		if !deny {
			if err := codec.ValidateTopicFilter([]byte(rule.Filter)); err != nil {
				t.Fatalf("rule %q for %q = invalid filter %q: %v", filter, username, rule.Filter, err)
			}
			if got, want := count(rule.Filter), count(strings.Join(rt.filter.lits, "")); got != want {
				t.Fatalf("rule %q for %q = %q: '/', '+', '#' counts %v, stored filter's %v", filter, username, rule.Filter, got, want)
			}
			if strings.HasPrefix(rule.Filter, "$") && !strings.HasPrefix(filter, "$") {
				t.Fatalf("rule %q for %q = %q: a $-topic filter", filter, username, rule.Filter)
			}
			return
		}
		// The filter with the values as they are, where it is one, and
		// topics it matches: '+' levels filled, '#' standing for no
		// level and for one.
		literal := rt.filter.expand(&id)
		if !validFilter(literal) || strings.IndexByte(literal, 0) >= 0 || !utf8.ValidString(literal) {
			return // no topic could match it [MQTT-4.7.3-2], [MQTT-1.5.4-1]
		}
		widened := Compile([]Rule{{Filter: rule.Filter, Access: ReadWrite}})
		exact := Compile([]Rule{{Filter: literal, Access: ReadWrite}})
		levels := strings.Split(literal, "/")
		for i, l := range levels {
			if l == "+" {
				levels[i] = "x"
			}
		}
		topics := []string{strings.Join(levels, "/")}
		if levels[len(levels)-1] == "#" {
			topics = []string{strings.Join(levels[:len(levels)-1], "/"), strings.Join(append(levels[:len(levels)-1], "x"), "/")}
		}
		for _, topic := range topics {
			if topic != "" && exact.CanPublish([]byte(topic)) && !widened.CanPublish([]byte(topic)) {
				t.Fatalf("deny rule %q for %q = %q, which does not deny %q, a topic of %q", filter, username, rule.Filter, topic, literal)
			}
		}
	})
}
