package auth

import (
	"errors"
	"slices"
	"strings"
	"testing"

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

func TestPlaceholderBackendRule(t *testing.T) {
	r := &Request{ClientID: "dev-1"}
	for _, tc := range []struct {
		user, filter string
		deny         bool
		want         Rule
		ok           bool
		wantErr      string
	}{
		{user: "alice", filter: "users/${username}/#", want: Rule{Filter: "users/alice/#", Access: Write}, ok: true},
		{user: "alice", filter: "devices/${clientid}/+", want: Rule{Filter: "devices/dev-1/+", Access: Write}, ok: true},
		{user: "alice", filter: "$SYS/broker/#", want: Rule{Filter: "$SYS/broker/#", Access: Write}, ok: true},
		// Values that would change the filter's shape drop an allow rule...
		{user: "a/b", filter: "users/${username}/#"},
		{user: "+", filter: "users/${username}/#"},
		{user: "#", filter: "users/${username}"},
		{user: "", filter: "users/${username}"},
		{user: "$SYS", filter: "${username}/#"},
		// ...and make a deny rule an error, never a dropped deny.
		{user: "a/b", filter: "users/${username}/#", deny: true, wantErr: "cannot be applied"},
		{user: "$SYS", filter: "${username}/#", deny: true, wantErr: "cannot be applied"},
		// '$' elsewhere is harmless.
		{user: "$x", filter: "u/${username}", want: Rule{Filter: "u/$x", Access: Write}, ok: true},
		{user: "alice", filter: "a/#/b", wantErr: "MQTT-4.7.1-1"},
		{user: "alice", filter: "", wantErr: "empty topic filter"},
		{user: "alice", filter: "u/${nobody}", wantErr: "unknown placeholder"},
	} {
		id := newClientValues(r, tc.user)
		got, ok, err := backendRule(tc.filter, Write, tc.deny, &id)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("backendRule(%q) for %q = %v, want an error with %q", tc.filter, tc.user, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("backendRule(%q) for %q: %v", tc.filter, tc.user, err)
			continue
		}
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("backendRule(%q) for %q = %+v %v, want %+v %v", tc.filter, tc.user, got, ok, tc.want, tc.ok)
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

// FuzzPlaceholderBackendRule checks that a client's values never change
// a stored filter's shape: a rule made for any username has a valid
// filter with the '/', '+' and '#' of the stored filter only, and is a
// $-topic filter only when the stored one is.
func FuzzPlaceholderBackendRule(f *testing.F) {
	for _, s := range [][2]string{
		{"users/${username}/#", "alice"}, {"${username}/#", "$SYS"}, {"a/${clientid}/+", "a/b"},
		{"${username}", "+"}, {"x${username}y/${username}", "#"}, {"$share/g/${username}", "u"},
	} {
		f.Add(s[0], s[1], false)
		f.Add(s[0], s[1], true)
	}
	count := func(s string) [3]int {
		return [3]int{strings.Count(s, "/"), strings.Count(s, "+"), strings.Count(s, "#")}
	}
	f.Fuzz(func(t *testing.T, filter, username string, deny bool) {
		r := &Request{ClientID: username + "-c", Remote: "192.0.2.1:1", CertCN: username}
		id := newClientValues(r, username)
		rule, ok, err := backendRule(filter, ReadWrite, deny, &id)
		if err != nil || !ok {
			if ok {
				t.Fatalf("backendRule(%q, %q): ok with error %v", filter, username, err)
			}
			return
		}
		if rule.Deny != deny || rule.Access != ReadWrite {
			t.Fatalf("backendRule(%q, %q) = %+v", filter, username, rule)
		}
		if err := codec.ValidateTopicFilter([]byte(rule.Filter)); err != nil {
			t.Fatalf("backendRule(%q, %q) = invalid filter %q: %v", filter, username, rule.Filter, err)
		}
		tmpl, err := parseTemplate(filter)
		if err != nil {
			t.Fatalf("backendRule accepted %q, parseTemplate did not: %v", filter, err)
		}
		if got, want := count(rule.Filter), count(strings.Join(tmpl.lits, "")); got != want {
			t.Fatalf("backendRule(%q, %q) = %q: '/', '+', '#' counts %v, stored filter's %v", filter, username, rule.Filter, got, want)
		}
		if strings.HasPrefix(rule.Filter, "$") && !strings.HasPrefix(filter, "$") {
			t.Fatalf("backendRule(%q, %q) = %q: a $-topic filter", filter, username, rule.Filter)
		}
	})
}
