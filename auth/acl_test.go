package auth

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/gannetmq/gannet/codec"
)

func writeACL(t testing.TB, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadACL(t testing.TB, content string) *ACLFile {
	t.Helper()
	f, err := LoadACLFile(writeACL(t, content))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func rw(filter string) Rule { return Rule{Filter: filter, Access: ReadWrite} }

func TestACLFileParse(t *testing.T) {
	tests := []struct {
		name     string
		content  string
		anon     []Rule
		users    map[string][]Rule
		patterns []Rule
	}{
		{
			name:    "empty",
			content: "",
			users:   map[string][]Rule{},
		},
		{
			name:    "comments and blanks",
			content: "# comment\n\n   \t\n  # indented comment\r\n",
			users:   map[string][]Rule{},
		},
		{
			name: "access words",
			content: "topic read r\n" +
				"topic write w\n" +
				"topic readwrite rw\n" +
				"topic deny d\n" +
				"topic plain\n",
			anon: []Rule{
				allow(Read, "r"), allow(Write, "w"), rw("rw"), deny(ReadWrite, "d"), rw("plain"),
			},
			users: map[string][]Rule{},
		},
		{
			name:    "a single word after topic is the filter",
			content: "topic read\ntopic deny\n",
			anon:    []Rule{rw("read"), rw("deny")},
			users:   map[string][]Rule{},
		},
		{
			name: "spaces",
			content: "\ttopic   read   a topic/with  spaces  \r\n" +
				"user   john smith \n" +
				"topic\twrite\tx\ty\n",
			anon:  []Rule{allow(Read, "a topic/with  spaces")},
			users: map[string][]Rule{"john smith": {allow(Write, "x\ty")}},
		},
		{
			name: "user blocks",
			content: "topic read $SYS/#\n" +
				"user roger\n" +
				"topic foo/bar\n" +
				"pattern write sensor/%u/data\n" +
				"topic deny foo/bar/secret\n" +
				"user alice\n" +
				"user bob\n" +
				"topic read b/+\n" +
				"user roger\n" +
				"topic write r/#\n",
			anon: []Rule{allow(Read, "$SYS/#")},
			users: map[string][]Rule{
				"roger": {rw("foo/bar"), deny(ReadWrite, "foo/bar/secret"), allow(Write, "r/#")},
				"bob":   {allow(Read, "b/+")},
			},
			patterns: []Rule{allow(Write, "sensor/%u/data")},
		},
		{
			name:    "byte order mark and no final newline",
			content: "\xef\xbb\xbftopic a\npattern deny %c/x",
			anon:    []Rule{rw("a")},
			users:   map[string][]Rule{},
			patterns: []Rule{
				deny(ReadWrite, "%c/x"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := parseACL("acl", []byte(tt.content))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tab.anonBlock, tt.anon) {
				t.Errorf("anonymous block %v, want %v", tab.anonBlock, tt.anon)
			}
			if !reflect.DeepEqual(tab.userBlock, tt.users) {
				t.Errorf("user blocks %v, want %v", tab.userBlock, tt.users)
			}
			if !reflect.DeepEqual(tab.patterns, tt.patterns) {
				t.Errorf("patterns %v, want %v", tab.patterns, tt.patterns)
			}
		})
	}
}

func TestACLFileErrors(t *testing.T) {
	long := strings.Repeat("a", MaxACLLineLength)
	tests := []struct {
		content string
		want    string // after "<path>:"
	}{
		{"topic a\nbogus x\n", `2: unknown keyword "bogus" (want topic, user or pattern)`},
		{"Topic a\n", `1: unknown keyword "Topic" (want topic, user or pattern)`},
		{"topic\n", `1: topic without a topic filter`},
		{"# c\n\npattern   \t \n", `3: pattern without a topic filter`},
		{"user\n", `1: user without a name`},
		{"topic reed a/b\n", `1: unknown access "reed" (want read, write, readwrite or deny before a topic filter)`},
		{"topic a b\n", `1: unknown access "a" (want read, write, readwrite or deny before a topic filter)`},
		{"topic read a/#/b\n", `1: bad topic filter: '#' not alone as the last level of "a/#/b" [MQTT-4.7.1-1]`},
		{"topic read a#\n", `1: bad topic filter: '#' not alone as the last level of "a#" [MQTT-4.7.1-1]`},
		{"user u\ntopic write a+/b\n", `2: bad topic filter: '+' not alone in its level of "a+/b" [MQTT-4.7.1-2]`},
		{"pattern read %c+\n", `1: bad topic filter: '+' not alone in its level of "%c+" [MQTT-4.7.1-2]`},
		{"topic read $share/g/a\n", `1: topic filter "$share/g/a" is a shared subscription: name the topics without "$share/<group>/"`},
		{"topic read a\xff\n", `1: not valid UTF-8 (or holds U+0000)`},
		{"topic read a\x00b\n", `1: not valid UTF-8 (or holds U+0000)`},
		{"topic read a\n" + long + "x\n", `2: line longer than 65599 bytes`},
		{"topic read " + strings.Repeat("b", 0x10000) + "\n", `1: bad topic filter: topic filter longer than 65535 bytes`},
	}
	for _, tt := range tests {
		path := writeACL(t, tt.content)
		_, err := LoadACLFile(path)
		want := "auth: cannot load ACL file: " + path + ":" + tt.want
		if err == nil || err.Error() != want {
			t.Errorf("content %.40q:\n got %v\nwant %s", tt.content, err, want)
		}
	}
}

func TestACLFileBounds(t *testing.T) {
	path := writeACL(t, "topic a\n"+strings.Repeat("#\n", MaxACLFileSize/2))
	_, err := LoadACLFile(path)
	want := "auth: cannot load ACL file: " + path + ": larger than 16777216 bytes"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	// A line of exactly the bound is fine.
	line := "topic read " + strings.Repeat("c", MaxACLLineLength-len("topic read "))
	if _, err := parseACL("acl", []byte(line)); err == nil || !strings.Contains(err.Error(), "acl:1: bad topic filter: topic filter longer than 65535 bytes") {
		t.Errorf("line at the bound: %v", err)
	}
	_, err = LoadACLFile(filepath.Join(t.TempDir(), "missing"))
	if err == nil || !strings.HasPrefix(err.Error(), "auth: cannot load ACL file: open ") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

const testACL = `# anonymous
topic read public/#
topic read $SYS/broker/uptime

user alice
topic readwrite home/alice/#
topic deny home/alice/vault
user bob
topic write bob/out

pattern read users/%u/inbox/#
pattern write devices/%c/state
pattern readwrite shared/#
pattern read %u/%c/own
pattern deny users/%u/inbox/blocked
`

func TestACLFileRules(t *testing.T) {
	f := loadACL(t, testACL)
	if f.Name() != "acl-file" {
		t.Errorf("Name() = %q", f.Name())
	}
	tests := []struct {
		username, clientID string
		shared, own        []Rule
	}{
		{
			// An anonymous client's username is empty: its %u patterns
			// grant nothing, and those that deny are widened.
			username: "", clientID: "c1",
			shared: []Rule{
				allow(Read, "public/#"), allow(Read, "$SYS/broker/uptime"), rw("shared/#"),
				deny(ReadWrite, "users/+/inbox/blocked"),
			},
			own: []Rule{allow(Write, "devices/c1/state")},
		},
		{
			username: "alice", clientID: "phone",
			shared: []Rule{
				rw("home/alice/#"), deny(ReadWrite, "home/alice/vault"), rw("shared/#"),
				allow(Read, "users/alice/inbox/#"), deny(ReadWrite, "users/alice/inbox/blocked"),
			},
			own: []Rule{allow(Write, "devices/phone/state"), allow(Read, "alice/phone/own")},
		},
		{
			// No block in the file: patterns only.
			username: "carol", clientID: "c",
			shared: []Rule{rw("shared/#"), allow(Read, "users/carol/inbox/#"), deny(ReadWrite, "users/carol/inbox/blocked")},
			own:    []Rule{allow(Write, "devices/c/state"), allow(Read, "carol/c/own")},
		},
		{
			// Substitution happens once: a client id that looks like a
			// placeholder is inserted as it is.
			username: "bob", clientID: "%u",
			shared: []Rule{
				allow(Write, "bob/out"), rw("shared/#"),
				allow(Read, "users/bob/inbox/#"), deny(ReadWrite, "users/bob/inbox/blocked"),
			},
			own: []Rule{allow(Write, "devices/%u/state"), allow(Read, "bob/%u/own")},
		},
		{
			username: "%c", clientID: "x",
			shared: []Rule{rw("shared/#"), allow(Read, "users/%c/inbox/#"), deny(ReadWrite, "users/%c/inbox/blocked")},
			own:    []Rule{allow(Write, "devices/x/state"), allow(Read, "%c/x/own")},
		},
	}
	for _, tt := range tests {
		r := &Request{ClientID: tt.clientID, Username: "ignored"}
		shared, own, err := f.SplitRules(context.Background(), r, tt.username)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(shared, tt.shared) || !reflect.DeepEqual(own, tt.own) {
			t.Errorf("user %q client %q:\nshared %v\n  want %v\n   own %v\n  want %v", tt.username, tt.clientID, shared, tt.shared, own, tt.own)
		}
		all, err := f.Rules(context.Background(), r, tt.username)
		if err != nil {
			t.Fatal(err)
		}
		if want := slices.Concat(tt.shared, tt.own); !reflect.DeepEqual(all, want) {
			t.Errorf("user %q client %q: Rules %v, want %v", tt.username, tt.clientID, all, want)
		}
	}
}

// TestACLFileSharedSlice checks that the clients of one user get the same
// slice, so that CompileShared interns one matcher per user.
func TestACLFileSharedSlice(t *testing.T) {
	f := loadACL(t, "topic read a\nuser u\ntopic b\npattern read users/%u/#\n")
	ctx := context.Background()
	for _, user := range []string{"u", ""} {
		r1, _ := f.Rules(ctx, &Request{ClientID: "one"}, user)
		r2, _ := f.Rules(ctx, &Request{ClientID: "two"}, user)
		if len(r1) == 0 || &r1[0] != &r2[0] {
			t.Errorf("user %q: clients get different slices", user)
		}
		if cap(r1) != len(r1) {
			t.Errorf("user %q: an append to the shared slice would write into it", user)
		}
		if CompileShared(r1) != CompileShared(r2) {
			t.Errorf("user %q: clients get different matchers", user)
		}
	}
	// With client-id patterns, the shared part is still shared.
	f = loadACL(t, "user u\ntopic b\npattern write dev/%c\n")
	s1, o1, _ := f.SplitRules(ctx, &Request{ClientID: "one"}, "u")
	s2, o2, _ := f.SplitRules(ctx, &Request{ClientID: "two"}, "u")
	if &s1[0] != &s2[0] || reflect.DeepEqual(o1, o2) {
		t.Errorf("SplitRules: shared %v %v, own %v %v", s1, s2, o1, o2)
	}
	m1, m2 := CompileWith(s1, o1), CompileWith(s2, o2)
	if m1.base != m2.base {
		t.Error("CompileWith of one user's clients does not share the base")
	}
	if !m1.CanPublish([]byte("dev/one")) || m1.CanPublish([]byte("dev/two")) || !m2.CanPublish([]byte("dev/two")) {
		t.Error("client-id patterns apply to the wrong client")
	}
}

// TestACLFileDangerousIdentity checks that a username or client id that
// would widen an allow pattern makes that pattern grant nothing.
func TestACLFileDangerousIdentity(t *testing.T) {
	f := loadACL(t, "pattern readwrite devices/%c/#\npattern read users/%u/#\npattern read %c/own\npattern read x/%u%c\n")
	tests := []struct {
		username, clientID string
		want               []Rule
	}{
		{"u", "c", []Rule{allow(Read, "users/u/#"), rw("devices/c/#"), allow(Read, "c/own"), allow(Read, "x/uc")}},
		{"u", "#", []Rule{allow(Read, "users/u/#")}},
		{"u", "+", []Rule{allow(Read, "users/u/#")}},
		{"u", "a/b", []Rule{allow(Read, "users/u/#")}},
		{"u", "a#", []Rule{allow(Read, "users/u/#")}},
		{"u", "", []Rule{allow(Read, "users/u/#")}},
		{"#", "c", []Rule{rw("devices/c/#"), allow(Read, "c/own")}},
		{"+", "c", []Rule{rw("devices/c/#"), allow(Read, "c/own")}},
		{"x/y", "c", []Rule{rw("devices/c/#"), allow(Read, "c/own")}},
		{"", "c", []Rule{rw("devices/c/#"), allow(Read, "c/own")}},
		// A client id must not move a pattern under '$'.
		{"u", "$SYS", []Rule{allow(Read, "users/u/#"), rw("devices/$SYS/#"), allow(Read, "x/u$SYS")}},
	}
	for _, tt := range tests {
		got, err := f.Rules(context.Background(), &Request{ClientID: tt.clientID}, tt.username)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("user %q client %q: %v, want %v", tt.username, tt.clientID, got, tt.want)
		}
		// Whatever the identity, nothing outside the client's own
		// places is readable.
		m := Compile(got)
		for _, topic := range []string{"devices/other/x", "$SYS/broker/load", "users/other/x", "other/own"} {
			if m.CanRead([]byte(topic)) {
				t.Errorf("user %q client %q can read %q", tt.username, tt.clientID, topic)
			}
		}
	}
	// Without a Request the client id is empty.
	got, _ := f.Rules(context.Background(), nil, "u")
	if want := []Rule{allow(Read, "users/u/#")}; !reflect.DeepEqual(got, want) {
		t.Errorf("nil request: %v, want %v", got, want)
	}
}

// unusableValues are usernames and client ids that cannot go into a
// pattern as they are, each with the texts it may stand for in a topic
// when a pattern holds it literally: '+' one level (empty or not), '#'
// any number of levels.
var unusableValues = []struct {
	value string
	as    []string
}{
	{"a/b", []string{"a/b"}},
	{"+", []string{"x", ""}},
	{"#", []string{"x", "x/y", ""}},
	{"", []string{""}},
	{"$x", []string{"$x"}},
}

// TestACLFileDenyPatternUnusableValue checks that a deny pattern is never
// dropped because of a username or client id: with a value that cannot go
// into the filter as it is, the pattern denies every topic that the value
// written into it literally names, and an allow pattern grants nothing.
func TestACLFileDenyPatternUnusableValue(t *testing.T) {
	const file = "pattern readwrite #\n" +
		"pattern readwrite $x/#\n" +
		"pattern deny t/%X/secret\n" +
		"pattern deny %X/secret\n" +
		"pattern deny %X/#\n"
	// The deny rules each value gets, in the order of the lines.
	want := map[string][]string{
		"a/b": {"t/#", "#", "#"},
		"+":   {"t/+/secret", "+/secret", "+/#"},
		"#":   {"t/#", "#", "#"},
		"":    {"t/+/secret", "+/secret", "+/#"},
		"$x":  {"t/$x/secret", "$x/secret", "$x/#"},
		"c":   {"t/c/secret", "c/secret", "c/#"},
	}
	denyLines := []string{"t/%X/secret", "%X/secret", "%X/#"}
	for _, ph := range []string{"%c", "%u"} {
		f := loadACL(t, strings.ReplaceAll(file, "%X", ph))
		allowAll := Compile([]Rule{rw("#"), rw("$x/#")})
		for _, v := range append(unusableValues, struct {
			value string
			as    []string
		}{"c", []string{"c"}}) {
			user, client := "u", v.value
			if ph == "%u" {
				user, client = v.value, "c"
			}
			rules, err := f.Rules(context.Background(), &Request{ClientID: client}, user)
			if err != nil {
				t.Fatal(err)
			}
			wantRules := []Rule{rw("#"), rw("$x/#")}
			for _, filter := range want[v.value] {
				wantRules = append(wantRules, deny(ReadWrite, filter))
			}
			if !reflect.DeepEqual(rules, wantRules) {
				t.Errorf("%s = %q: rules %v, want %v", ph, v.value, rules, wantRules)
			}
			m := Compile(rules)
			for _, line := range denyLines {
				for _, as := range v.as {
					topic := strings.ReplaceAll(strings.ReplaceAll(line, ph, as), "%X", as)
					topic = strings.Replace(topic, "#", "z", 1)
					if !allowAll.CanPublish([]byte(topic)) {
						t.Fatalf("test topic %q is not one the allow lines grant", topic)
					}
					if m.CanPublish([]byte(topic)) || m.CanRead([]byte(topic)) {
						t.Errorf("%s = %q: %q is allowed, which \"pattern deny %s\" names", ph, v.value, topic, line)
					}
				}
			}
			// The widening reaches no "$" topic the value did not name.
			if !m.CanRead([]byte("$x/other")) && v.value != "$x" {
				t.Errorf("%s = %q: \"$x/other\" is denied", ph, v.value)
			}
		}
	}
	// A value that can go in denies only what it names.
	m, _ := clientMatcher(t, "pattern readwrite #\npattern deny t/%c/secret\n", "u", "c")
	if !m.CanPublish([]byte("t/d/secret")) || m.CanPublish([]byte("t/c/secret")) {
		t.Error("client id \"c\": deny pattern denies another client's topic, or not its own")
	}
}

// clientMatcher loads content and returns the compiled rules of the client.
func clientMatcher(t *testing.T, content, user, client string) (*Matcher, []Rule) {
	t.Helper()
	rules, err := loadACL(t, content).Rules(context.Background(), &Request{ClientID: client}, user)
	if err != nil {
		t.Fatal(err)
	}
	return Compile(rules), rules
}

// TestACLFileAllowPatternUnusableValue checks that an allow pattern needing
// a value that cannot go into the filter as it is grants nothing, beside a
// deny pattern that the same value widens. A '$' is harmless but at the
// start of the filter.
func TestACLFileAllowPatternUnusableValue(t *testing.T) {
	const file = "pattern readwrite %X/#\n" +
		"pattern read %X/in\n" +
		"pattern readwrite own/%X/#\n" +
		"pattern write t/a%Xb\n" +
		"pattern deny t/%X/secret\n"
	for _, ph := range []string{"%c", "%u"} {
		for _, v := range unusableValues {
			user, client := "u", v.value
			if ph == "%u" {
				user, client = v.value, "c"
			}
			m, rules := clientMatcher(t, strings.ReplaceAll(file, "%X", ph), user, client)
			var want []Rule
			if v.value == "$x" {
				want = []Rule{rw("own/$x/#"), allow(Write, "t/a$xb")}
			}
			widened := map[string]string{"a/b": "t/#", "#": "t/#", "$x": "t/$x/secret"}[v.value]
			if widened == "" {
				widened = "t/+/secret"
			}
			want = append(want, deny(ReadWrite, widened))
			if !reflect.DeepEqual(rules, want) {
				t.Errorf("%s = %q: rules %v, want %v", ph, v.value, rules, want)
			}
			for _, as := range v.as {
				for _, topic := range []string{as + "/z", as + "/in", "own/" + as + "/z", "t/a" + as + "b"} {
					if v.value == "$x" && !strings.HasPrefix(topic, "$") {
						continue // granted as written: "$" is not at the start
					}
					if m.CanPublish([]byte(topic)) || m.CanRead([]byte(topic)) {
						t.Errorf("%s = %q: %q is allowed", ph, v.value, topic)
					}
				}
			}
		}
	}
}

// aclPatternRules returns the rules that an ACL file of one pattern line
// gives the client whose request is r and whose username is user: the line
// "pattern <access or deny> <filter>", with the filter's ${username} and
// ${clientid} written %u and %c, the ACL file's way. ok is false when the
// file cannot say filter: it names another value, holds a '%' or blanks
// around it, or is a shared subscription. A deny line denies reading and
// writing alike: Access is ReadWrite for it whatever access is.
func aclPatternRules(t testing.TB, filter string, access Access, deny bool, r *Request, user string) (rules []Rule, ok bool) {
	t.Helper()
	line := strings.NewReplacer("${username}", "%u", "${clientid}", "%c").Replace(filter)
	if strings.Contains(filter, "%") || strings.Contains(line, "${") || strings.HasPrefix(line, "$share/") || strings.Trim(line, blanks) != line {
		return nil, false
	}
	word := access.String()
	if deny {
		word = "deny"
	}
	rules, err := loadACL(t, "pattern "+word+" "+line+"\n").Rules(context.Background(), r, user)
	if err != nil {
		t.Fatal(err)
	}
	return rules, true
}

// TestACLFileMatcher checks the file's rules through a compiled matcher.
func TestACLFileMatcher(t *testing.T) {
	f := loadACL(t, testACL)
	rules, _ := f.Rules(context.Background(), &Request{ClientID: "phone"}, "alice")
	m := Compile(rules)
	tests := []struct {
		topic       string
		read, write bool
	}{
		{"home/alice/lights", true, true},
		{"home/alice", true, true},
		{"home/alice/vault", false, false},
		{"home/bob/lights", false, false},
		{"devices/phone/state", false, true},
		{"users/alice/inbox/1", true, false},
		{"users/alice/inbox/blocked", false, false},
		{"shared/x/y", true, true},
		{"public/x", false, false}, // the anonymous block is not alice's
		{"$SYS/broker/uptime", false, false},
	}
	for _, tt := range tests {
		if got := m.CanRead([]byte(tt.topic)); got != tt.read {
			t.Errorf("CanRead(%q) = %v, want %v", tt.topic, got, tt.read)
		}
		if got := m.CanPublish([]byte(tt.topic)); got != tt.write {
			t.Errorf("CanPublish(%q) = %v, want %v", tt.topic, got, tt.write)
		}
	}
	subs := map[string]SubAccess{
		"home/alice/#":       SubPartial,
		"home/alice/+/x":     SubAllowed,
		"home/alice/vault":   SubDenied,
		"users/alice/inbox/": SubAllowed,
		"#":                  SubDenied,
		"shared/#":           SubAllowed,
		"$SYS/#":             SubDenied,
	}
	for f, want := range subs {
		if got := m.CanSubscribe([]byte(f)); got != want {
			t.Errorf("CanSubscribe(%q) = %v, want %v", f, got, want)
		}
	}

	// An anonymous client: the anonymous block and "$SYS".
	rules, _ = f.Rules(context.Background(), &Request{ClientID: "c"}, "")
	m = Compile(rules)
	if !m.CanRead([]byte("$SYS/broker/uptime")) || m.CanRead([]byte("$SYS/broker/load")) || !m.CanRead([]byte("public/a")) {
		t.Error("anonymous rules answer wrongly")
	}
	if got := m.CanSubscribe([]byte("#")); got != SubDenied {
		t.Errorf("anonymous CanSubscribe(#) = %v", got)
	}
}

func TestACLFileReload(t *testing.T) {
	path := writeACL(t, "user u\ntopic read one\n")
	f, err := LoadACLFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rules := func() []Rule {
		r, err := f.Rules(ctx, &Request{ClientID: "c"}, "u")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	old := rules()

	// A bad file keeps the old rules.
	if err := os.WriteFile(path, []byte("user u\ntopic read two\ntopic read bad/#/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = f.Reload()
	want := "auth: cannot load ACL file: " + path + `:3: bad topic filter: '#' not alone as the last level of "bad/#/x" [MQTT-4.7.1-1]`
	if err == nil || err.Error() != want {
		t.Errorf("Reload: %v, want %s", err, want)
	}
	if got := rules(); !reflect.DeepEqual(got, old) {
		t.Errorf("after a failed reload: %v, want %v", got, old)
	}

	// A missing file keeps them too.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err == nil {
		t.Error("Reload of a missing file succeeded")
	}
	if got := rules(); !reflect.DeepEqual(got, old) {
		t.Errorf("after a failed reload: %v, want %v", got, old)
	}

	// A good file replaces them.
	if err := os.WriteFile(path, []byte("user u\ntopic write two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, want := rules(), []Rule{allow(Write, "two")}; !reflect.DeepEqual(got, want) {
		t.Errorf("after reload: %v, want %v", got, want)
	}
	if !reflect.DeepEqual(old, []Rule{allow(Read, "one")}) {
		t.Errorf("reload changed a slice handed out before: %v", old)
	}
}

// TestACLFileConcurrentReload calls Rules while another goroutine reloads
// the file between two versions: every answer is one version's, whole.
func TestACLFileConcurrentReload(t *testing.T) {
	versions := []string{
		"user u\ntopic read a/#\ntopic deny a/x\npattern write d/%c\n",
		"user u\ntopic write b\npattern read e/%u\n",
	}
	want := [][]Rule{
		{allow(Read, "a/#"), deny(ReadWrite, "a/x"), allow(Write, "d/c")},
		{allow(Write, "b"), allow(Read, "e/u")},
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "acl")
	if err := os.WriteFile(path, []byte(versions[0]), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadACLFile(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				got, err := f.Rules(context.Background(), &Request{ClientID: "c"}, "u")
				if err != nil || !reflect.DeepEqual(got, want[0]) && !reflect.DeepEqual(got, want[1]) {
					t.Errorf("Rules = %v, %v: neither version", got, err)
					return
				}
				if !Compile(got).CanRead([]byte("a/y")) && !Compile(got).CanRead([]byte("e/u")) {
					t.Error("compiled rules grant nothing")
					return
				}
			}
		})
	}
	for i := range 200 {
		tmp := filepath.Join(dir, "acl.tmp")
		if err := os.WriteFile(tmp, []byte(versions[i%2]), 0o600); err != nil {
			t.Error(err)
			break
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Error(err)
			break
		}
		if err := f.Reload(); err != nil {
			t.Error(err)
			break
		}
	}
	close(done)
	wg.Wait()
}

// formatACL writes t back in the file format.
func formatACL(t *aclTable) string {
	var b strings.Builder
	line := func(keyword string, r Rule) {
		word := r.Access.String()
		if r.Deny {
			word = "deny"
		}
		b.WriteString(keyword + " " + word + " " + r.Filter + "\n")
	}
	for _, r := range t.anonBlock {
		line("topic", r)
	}
	names := make([]string, 0, len(t.userBlock))
	for name := range t.userBlock {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		b.WriteString("user " + name + "\n")
		for _, r := range t.userBlock[name] {
			line("topic", r)
		}
	}
	for _, r := range t.patterns {
		line("pattern", r)
	}
	return b.String()
}

// FuzzACLFile parses arbitrary files: the parser never panics, and what
// parses writes back to a file that parses to the same rules, all of which
// compile. The rules of a client with any username and client id hold only
// filters the matcher compiles, and allow rules only valid filters; every
// deny line applies to the client, and a deny pattern denies every topic
// the values written into it literally would name.
func FuzzACLFile(f *testing.F) {
	f.Add([]byte(testACL), "alice", "phone")
	f.Add([]byte("topic read\ntopic a b\n"), "", "c")
	f.Add([]byte("\xef\xbb\xbf user  x y \r\n topic\tdeny\t#\n"), "x y", "c")
	f.Add([]byte("pattern read %u/%c/%x%\n# c\n"), "u", "c")
	f.Add([]byte("topic read $share/g/x\nuser\n"), "", "")
	f.Add([]byte("user u\ntopic read t/#\npattern deny t/%c/secret\npattern deny %u/#\n"), "u", "a/b")
	f.Add([]byte("pattern deny %c/x%u/#\npattern write %c/%u\n"), "+", "$SYS")
	f.Add([]byte("pattern deny t/%u%c\n"), "", "#")
	f.Fuzz(func(t *testing.T, data []byte, username, clientID string) {
		tab, err := parseACL("fuzz", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "auth: cannot load ACL file: fuzz:") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		text := formatACL(tab)
		again, err := parseACL("again", []byte(text))
		if err != nil {
			t.Fatalf("written back, the file does not parse: %v\n%s", err, text)
		}
		if !reflect.DeepEqual(tab.anonBlock, again.anonBlock) ||
			!reflect.DeepEqual(tab.userBlock, again.userBlock) ||
			!reflect.DeepEqual(tab.patterns, again.patterns) {
			t.Fatalf("round trip changed the rules:\n%+v\n%+v", tab, again)
		}
		n := len(tab.anonBlock) + len(tab.patterns)
		all := slices.Concat(tab.anonBlock, tab.patterns)
		for _, block := range tab.userBlock {
			n += len(block)
			all = append(all, block...)
		}
		if got := Compile(all).Len(); got != n {
			t.Fatalf("%d of %d rules compile", got, n)
		}

		shared, own := tab.sharedRules(username), tab.ownRules(username, clientID)
		rules := slices.Concat(shared, own)
		var denies []Rule
		for _, r := range rules {
			if !validFilter(r.Filter) {
				t.Fatalf("user %q client %q: rule %+v does not compile", username, clientID, r)
			}
			if r.Deny {
				denies = append(denies, Rule{Filter: r.Filter, Access: ReadWrite})
			} else if err := codec.ValidateTopicFilter([]byte(r.Filter)); err != nil {
				t.Fatalf("user %q client %q: allow rule %+v: %v", username, clientID, r, err)
			}
		}
		block := tab.anonBlock
		if username != "" {
			block = tab.userBlock[username]
		}
		wantDenies := 0
		for _, r := range slices.Concat(block, tab.patterns) {
			if r.Deny {
				wantDenies++
			}
		}
		if len(denies) != wantDenies {
			t.Fatalf("user %q client %q: %d deny rules, want one for each of the %d deny lines: %v", username, clientID, len(denies), wantDenies, rules)
		}
		denied := Compile(denies)
		id := clientValues{phUsername: username, phClientID: clientID}
		for _, p := range tab.patterns {
			if !p.Deny {
				continue
			}
			pt := patternTemplate(p)
			literal := pt.filter.expand(&id)
			if !validFilter(literal) || strings.IndexByte(literal, 0) >= 0 || !utf8.ValidString(literal) {
				continue // no topic could match it [MQTT-4.7.3-2], [MQTT-1.5.4-1]
			}
			for _, topic := range aclSampleTopics(literal) {
				if topic != "" && Compile([]Rule{rw(literal)}).CanPublish([]byte(topic)) && !denied.CanPublish([]byte(topic)) {
					t.Fatalf("user %q client %q: %q is not denied, which \"pattern deny %s\" names as %q (rules %v)", username, clientID, topic, p.Filter, literal, rules)
				}
			}
		}
	})
}

// aclSampleTopics returns topics that filter f matches: its '+' levels
// filled in, and a final '#' standing for no level and for one.
func aclSampleTopics(f string) []string {
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if l == "+" {
			levels[i] = "x"
		}
	}
	if last := len(levels) - 1; levels[last] == "#" {
		return []string{strings.Join(levels[:last], "/"), strings.Join(append(levels[:last], "x"), "/")}
	}
	return []string{strings.Join(levels, "/")}
}
