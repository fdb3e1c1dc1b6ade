//go:build linux

package auth

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// pgTables are EMQX's tables, as the default queries read them.
var pgTables = []string{
	`CREATE TABLE mqtt_user (username text PRIMARY KEY, password_hash text, is_superuser boolean NOT NULL DEFAULT false)`,
	`CREATE TABLE mqtt_acl (id serial PRIMARY KEY, username text NOT NULL, permission text, action text, topic text)`,
}

// pgOrderedACLQuery is the default ACL query with the rows in a fixed
// order.
const pgOrderedACLQuery = "SELECT permission, action, topic FROM mqtt_acl WHERE username = ${username} ORDER BY id"

func pgAddUser(t testing.TB, url, name, hash string, superuser bool) {
	t.Helper()
	var h any = hash
	if hash == "" {
		h = nil
	}
	pgExec(t, url, "INSERT INTO mqtt_user (username, password_hash, is_superuser) VALUES ($1, $2, $3)", name, h, superuser)
}

func pgAddRule(t testing.TB, url, name string, permission, action, topic any) {
	t.Helper()
	pgExec(t, url, "INSERT INTO mqtt_acl (username, permission, action, topic) VALUES ($1, $2, $3, $4)", name, permission, action, topic)
}

// newTestPostgresSource builds a source, closed at the test's cleanup.
func newTestPostgresSource(t testing.TB, cfg PostgresConfig) *PostgresSource {
	t.Helper()
	s, err := NewPostgresSource(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestPostgresAuthenticate(t *testing.T) {
	url := pgSchema(t, sharedPostgres(t), pgTables...)
	pgAddUser(t, url, "alice", mustHash(t, HashSHA512PBKDF2, "alice-pw"), false)
	pgAddUser(t, url, "root", mustHash(t, HashBcrypt, "root-pw"), true)
	pgAddUser(t, url, "sha512", mustHash(t, HashSHA512, "sha512-pw"), false)
	pgAddUser(t, url, "nohash", "", false)
	pgAddUser(t, url, "badhash", "$7$101$c2VjcmV0dmFsdWU$bm90LWEtaGFzaA", false)
	src := newTestPostgresSource(t, PostgresConfig{URL: url})
	ctx := context.Background()

	noPassword := backendRequest("alice", "")
	noPassword.HasPassword = false
	noUsername := backendRequest("", "alice-pw")
	noUsername.HasUsername = false
	for _, tc := range []struct {
		name string
		r    *Request
		want Answer
	}{
		{"allow", backendRequest("alice", "alice-pw"), Answer{Verdict: Allow}},
		{"allow $6$", backendRequest("sha512", "sha512-pw"), Answer{Verdict: Allow}},
		{"superuser", backendRequest("root", "root-pw"), Answer{Verdict: Allow, Superuser: true}},
		{"wrong password", backendRequest("alice", "root-pw"), Answer{Verdict: Deny}},
		{"no password", noPassword, Answer{Verdict: Deny}},
		{"NULL hash", backendRequest("nohash", ""), Answer{Verdict: Deny}},
		{"unknown user", backendRequest("nobody", "alice-pw"), Answer{Verdict: Ignore}},
		{"no username", noUsername, Answer{Verdict: Ignore}},
	} {
		got, err := src.Authenticate(ctx, tc.r)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got.Verdict != tc.want.Verdict || got.Superuser != tc.want.Superuser || got.HasRules {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}

	got, err := src.Authenticate(ctx, backendRequest("badhash", "the-password"))
	if !errors.Is(err, ErrUnavailable) || got.Verdict != Ignore {
		t.Errorf("malformed hash: got %+v, %v; want an error wrapping ErrUnavailable", got, err)
	} else if msg := err.Error(); strings.Contains(msg, "c2VjcmV0dmFsdWU") || strings.Contains(msg, "the-password") || !strings.Contains(msg, `"badhash"`) {
		t.Errorf("error %q shows a hash or the password, or no username", msg)
	}
}

// Other column types and queries: columns are found by name, a superuser
// flag may be a number or text, a hash bytea; placeholders and positional
// parameters both bind values.
func TestPostgresAuthQueries(t *testing.T) {
	url := pgSchema(t, sharedPostgres(t),
		`CREATE TABLE accounts (name text, client text, secret bytea, admin int, flag text)`)
	pgExec(t, url, "INSERT INTO accounts VALUES ($1, $2, $3, $4, $5)", "bob", "client-bob", []byte(mustHash(t, HashSHA512, "bob-pw")), 1, "true")
	pgExec(t, url, "INSERT INTO accounts VALUES ($1, $2, $3, $4, $5)", "twin", "c", []byte(mustHash(t, HashSHA512, "a")), 0, "0")
	pgExec(t, url, "INSERT INTO accounts VALUES ($1, $2, $3, $4, $5)", "twin", "c", []byte(mustHash(t, HashSHA512, "b")), 0, "0")
	pgExec(t, url, "INSERT INTO accounts VALUES ($1, $2, $3, $4, $5)", "oddflag", "c", []byte(mustHash(t, HashSHA512, "x")), 0, "maybe")
	ctx := context.Background()
	for _, tc := range []struct {
		name, query, user, password string
		want                        Answer
		wantErr                     string
	}{
		{name: "integer superuser", user: "bob", password: "bob-pw", want: Answer{Verdict: Allow, Superuser: true},
			query: "SELECT admin AS is_superuser, secret AS password_hash FROM accounts WHERE name = ${username}"},
		{name: "text superuser", user: "bob", password: "bob-pw", want: Answer{Verdict: Allow, Superuser: true},
			query: "SELECT flag AS is_superuser, encode(secret, 'escape') AS password_hash FROM accounts WHERE name = ${username}"},
		{name: "no superuser column", user: "bob", password: "bob-pw", want: Answer{Verdict: Allow},
			query: "SELECT secret AS password_hash FROM accounts WHERE name = ${username}"},
		{name: "client id and peer host", user: "bob", password: "bob-pw", want: Answer{Verdict: Allow},
			query: "SELECT secret AS password_hash FROM accounts\nWHERE name = ${username} AND client = ${clientid} AND ${peerhost}::inet <<= '192.0.2.0/24'"},
		{name: "peer host outside", user: "bob", password: "bob-pw", want: Answer{Verdict: Ignore},
			query: "SELECT secret AS password_hash FROM accounts WHERE name = ${username} AND ${peerhost}::inet <<= '198.51.100.0/24'"},
		{name: "positional", user: "bob", password: "bob-pw", want: Answer{Verdict: Allow},
			query: "SELECT secret AS password_hash FROM accounts WHERE name = $1 AND client = $2 AND $3 <> ''"},
		{name: "positional, wrong client", user: "bob", password: "bob-pw", want: Answer{Verdict: Ignore},
			query: "SELECT secret AS password_hash FROM accounts WHERE name = $1 AND client = $1"},
		{name: "two rows", user: "twin", password: "a", wantErr: "more than one row",
			query: "SELECT secret AS password_hash FROM accounts WHERE name = ${username}"},
		{name: "no hash column", user: "bob", password: "bob-pw", wantErr: "no password_hash column (it returns h, is_superuser)",
			query: "SELECT secret AS h, admin AS is_superuser FROM accounts WHERE name = ${username}"},
		{name: "bad superuser", user: "oddflag", password: "x", wantErr: `is_superuser "maybe"`,
			query: "SELECT flag AS is_superuser, secret AS password_hash FROM accounts WHERE name = ${username}"},
		{name: "superuser of another type", user: "bob", password: "bob-pw", wantErr: "is_superuser is a",
			query: "SELECT 1.5::float8 AS is_superuser, secret AS password_hash FROM accounts WHERE name = ${username}"},
		{name: "query error", user: "bob", password: "bob-pw", wantErr: "does not exist",
			query: "SELECT password_hash FROM no_such_table WHERE name = ${username}"},
	} {
		src := newTestPostgresSource(t, PostgresConfig{URL: url, AuthQuery: tc.query})
		got, err := src.Authenticate(ctx, backendRequest(tc.user, tc.password))
		if tc.wantErr != "" {
			if !errors.Is(err, ErrUnavailable) || got.Verdict != Ignore || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: got %+v, %v; want an error wrapping ErrUnavailable with %q", tc.name, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.Verdict != tc.want.Verdict || got.Superuser != tc.want.Superuser {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

// A client's values are bind parameters: quotes and SQL in a username
// match nothing but that exact username.
func TestPostgresInjection(t *testing.T) {
	url := pgSchema(t, sharedPostgres(t), pgTables...)
	pgAddUser(t, url, "victim", mustHash(t, HashSHA512, "pw-1"), true)
	pgAddUser(t, url, "a b", mustHash(t, HashSHA512, "pw-2"), false)
	pgAddRule(t, url, "victim", "allow", "all", "#")
	src := newTestPostgresSource(t, PostgresConfig{URL: url, ACLQuery: DefaultPostgresACLQuery})
	ctx := context.Background()
	for _, tc := range []struct {
		user, password string
		want           Verdict
	}{
		{"x' OR '1'='1", "pw-1", Ignore},
		{"victim' --", "pw-1", Ignore},
		{"'; DROP TABLE mqtt_user; --", "pw-1", Ignore},
		{"${username}", "pw-1", Ignore},
		{"$1", "pw-1", Ignore},
		{"a b", "pw-1", Deny},
		{"a b", "pw-2", Allow},
		{"a", "pw-2", Ignore},
	} {
		got, err := src.Authenticate(ctx, backendRequest(tc.user, tc.password))
		if err != nil || got.Verdict != tc.want || got.Superuser {
			t.Errorf("user %q: got %+v, %v; want %v", tc.user, got, err, tc.want)
		}
		rules, err := src.Rules(ctx, backendRequest(tc.user, tc.password), tc.user)
		if err != nil || len(rules) != 0 {
			t.Errorf("user %q: rules %+v, %v; want none", tc.user, rules, err)
		}
	}
	// The quoted name is a user like any other.
	pgAddUser(t, url, "x' OR '1'='1", mustHash(t, HashSHA512, "pw-3"), false)
	if got, err := src.Authenticate(ctx, backendRequest("x' OR '1'='1", "pw-3")); err != nil || got.Verdict != Allow || got.Superuser {
		t.Errorf("user with quotes: got %+v, %v; want allow", got, err)
	}
	if got, err := src.Authenticate(ctx, backendRequest("victim", "pw-1")); err != nil || got.Verdict != Allow || !got.Superuser {
		t.Errorf("victim after the attempts: got %+v, %v; want allow as superuser", got, err)
	}
}

func TestPostgresRules(t *testing.T) {
	url := pgSchema(t, sharedPostgres(t), pgTables...)
	for _, row := range [][3]string{
		{"allow", "publish", "a/b"},
		{"allow", "subscribe", "c/+"},
		{"deny", "all", "d/secret"},
		{"ALLOW", "All", "users/${username}/#"},
		{"allow", "publish", "dev/${clientid}"},
		{"allow", "subscribe", "$share/g/jobs/#"},
	} {
		pgAddRule(t, url, "carol", row[0], row[1], row[2])
	}
	pgAddRule(t, url, "a/b", "allow", "all", "users/${username}/#")
	pgAddRule(t, url, "a/b", "allow", "subscribe", "open/#")
	pgAddRule(t, url, "bad-action", "allow", "publish", "a")
	pgAddRule(t, url, "bad-action", "allow", "read", "b")
	pgAddRule(t, url, "bad-permission", "permit", "publish", "a")
	pgAddRule(t, url, "bad-topic", "allow", "publish", "a/#/b")
	pgAddRule(t, url, "null-topic", "allow", "publish", nil)
	pgAddRule(t, url, "bad/deny", "deny", "all", "private/${username}/#")

	src := newTestPostgresSource(t, PostgresConfig{URL: url, ACLQuery: pgOrderedACLQuery})
	if !src.HasACL() {
		t.Fatal("HasACL = false with an ACLQuery")
	}
	ctx := context.Background()
	got, err := src.Rules(ctx, backendRequest("carol", ""), "carol")
	want := []Rule{
		{Filter: "a/b", Access: Write},
		{Filter: "c/+", Access: Read},
		{Filter: "d/secret", Access: ReadWrite, Deny: true},
		{Filter: "users/carol/#", Access: ReadWrite},
		{Filter: "dev/client-carol", Access: Write},
		{Filter: "$share/g/jobs/#", Access: Read},
	}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("rules:\n got %+v, %v\nwant %+v", got, err, want)
	}

	got, err = src.Rules(ctx, backendRequest("a/b", ""), "a/b")
	if want := []Rule{{Filter: "open/#", Access: Read}}; err != nil || !slices.Equal(got, want) {
		t.Errorf("username with '/': got %+v, %v; want %+v", got, err, want)
	}

	// A deny rule for a username with '/' is widened to cover the
	// levels the username could fill: never an error, never dropped.
	got, err = src.Rules(ctx, backendRequest("bad/deny", ""), "bad/deny")
	if want := []Rule{{Filter: "private/#", Access: ReadWrite, Deny: true}}; err != nil || !slices.Equal(got, want) {
		t.Errorf("deny rule for a username with '/': got %+v, %v; want %+v", got, err, want)
	}

	for _, user := range []string{"nobody", ""} {
		got, err := src.Rules(ctx, backendRequest(user, ""), user)
		if err != nil || got == nil || len(got) != 0 {
			t.Errorf("user %q without rules: got %#v, %v; want an empty slice", user, got, err)
		}
	}

	for user, wantErr := range map[string]string{
		"bad-action":     `row 2: action "read" is not publish, subscribe or all`,
		"bad-permission": `row 1: permission "permit" is not allow or deny`,
		"bad-topic":      `row 1: topic "a/#/b"`,
		"null-topic":     "row 1: topic is NULL, not text",
	} {
		got, err := src.Rules(ctx, backendRequest(user, ""), user)
		if !errors.Is(err, ErrUnavailable) || got != nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: got %+v, %v; want an error wrapping ErrUnavailable with %q", user, got, err, wantErr)
		}
	}

	missing := newTestPostgresSource(t, PostgresConfig{URL: url, ACLQuery: "SELECT permission, action AS verb, topic FROM mqtt_acl WHERE username = $1"})
	if _, err := missing.Rules(ctx, backendRequest("carol", ""), "carol"); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no action column (it returns permission, verb, topic)") {
		t.Errorf("missing column: %v", err)
	}

	noACL := newTestPostgresSource(t, PostgresConfig{URL: url})
	if noACL.HasACL() {
		t.Error("HasACL = true without an ACLQuery")
	}
	if _, err := noACL.Rules(ctx, backendRequest("carol", ""), "carol"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Rules without an ACLQuery: %v, want an error wrapping ErrUnavailable", err)
	}
}

func TestPostgresConfigErrors(t *testing.T) {
	const ok = "postgres://u@127.0.0.1:1/db"
	for _, tc := range []struct {
		cfg     PostgresConfig
		wantErr string
	}{
		{PostgresConfig{}, "URL is empty"},
		{PostgresConfig{URL: "postgres://u:hunter2@127.0.0.1:bad/db"}, "cannot parse URL"},
		{PostgresConfig{URL: "postgres://u:hunter2@127.0.0.1/db?sslmode=sometimes"}, "cannot parse URL"},
		{PostgresConfig{URL: "host=127.0.0.1 password=hunter2 sslmode=sometimes"}, "cannot parse URL"},
		{PostgresConfig{URL: ok, MaxConns: -1}, "must not be negative"},
		{PostgresConfig{URL: ok, AuthQuery: "SELECT password_hash FROM u WHERE n = ${name}"}, "AuthQuery: column 39: unknown placeholder ${name}"},
		{PostgresConfig{URL: ok, AuthQuery: "SELECT password_hash FROM u WHERE n = '${username}'"}, "AuthQuery: column 40: placeholder ${username} inside quotes"},
		{PostgresConfig{URL: ok, AuthQuery: "SELECT 1; DELETE FROM u"}, "AuthQuery: column 11: more than one statement"},
		{PostgresConfig{URL: ok, ACLQuery: "SELECT * FROM acl\nWHERE u = $7"}, "ACLQuery: line 2, column 11: parameter $7 does not exist"},
	} {
		s, err := NewPostgresSource(context.Background(), tc.cfg)
		if err == nil {
			s.Close()
			t.Errorf("%+v: no error, want %q", tc.cfg, tc.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "auth: postgres: ") {
			t.Errorf("%+v: error %q, want one with %q", tc.cfg, err, tc.wantErr)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%+v: error %q shows the password", tc.cfg, err)
		}
	}
}

// A server that accepts connections but never answers: calls end at the
// context's deadline with ErrUnavailable.
func TestPostgresHungServer(t *testing.T) {
	addr := silentServer(t)
	src := newTestPostgresSource(t, PostgresConfig{URL: "postgres://u@" + addr + "/db?sslmode=disable", ACLQuery: DefaultPostgresACLQuery})
	for _, call := range []func(ctx context.Context) error{
		func(ctx context.Context) error {
			_, err := src.Authenticate(ctx, backendRequest("someone", "pw"))
			return err
		},
		func(ctx context.Context) error {
			_, err := src.Rules(ctx, backendRequest("someone", "pw"), "someone")
			return err
		},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		err := call(ctx)
		cancel()
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("call took %v past a 200ms deadline", took)
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("got %v, want an error wrapping ErrUnavailable", err)
		}
	}
}

// pgCall runs Authenticate and Rules for r under a deadline.
func pgCall(src *PostgresSource, r *Request, timeout time.Duration) (Answer, []Rule, error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	a, aerr := src.Authenticate(ctx, r)
	rules, rerr := src.Rules(ctx, r, r.Username)
	return a, rules, aerr, rerr
}

// The database stops (pg_ctl stop -m fast) and starts again: calls fail
// with ErrUnavailable meanwhile, and the same source serves again at
// once afterwards.
func TestPostgresOutage(t *testing.T) {
	srv := startPostgres(t)
	pgExec(t, srv.URL, pgTables[0])
	pgExec(t, srv.URL, pgTables[1])
	pgAddUser(t, srv.URL, "erin", mustHash(t, HashSHA512PBKDF2, "erin-pw"), false)
	pgAddRule(t, srv.URL, "erin", "allow", "all", "erin/#")
	src := newTestPostgresSource(t, PostgresConfig{URL: srv.URL, ACLQuery: DefaultPostgresACLQuery, MaxConns: 4})
	r := backendRequest("erin", "erin-pw")
	wantRules := []Rule{{Filter: "erin/#", Access: ReadWrite}}
	if a, rules, aerr, rerr := pgCall(src, r, 10*time.Second); aerr != nil || rerr != nil || a.Verdict != Allow || !slices.Equal(rules, wantRules) {
		t.Fatalf("before the outage: %+v %+v, %v, %v", a, rules, aerr, rerr)
	}

	srv.Stop(t)
	for range 2 {
		start := time.Now()
		a, rules, aerr, rerr := pgCall(src, r, 2*time.Second)
		if !errors.Is(aerr, ErrUnavailable) || !errors.Is(rerr, ErrUnavailable) || a.Verdict != Ignore || rules != nil {
			t.Fatalf("database down: got %+v %+v, %v, %v; want errors wrapping ErrUnavailable", a, rules, aerr, rerr)
		}
		if took := time.Since(start); took > 2500*time.Millisecond {
			t.Errorf("database down: the calls took %v past a 2s deadline", took)
		}
		if strings.Contains(aerr.Error(), "erin-pw") {
			t.Errorf("error %q shows the password", aerr)
		}
	}

	srv.Start(t)
	if a, rules, aerr, rerr := pgCall(src, r, 10*time.Second); aerr != nil || rerr != nil || a.Verdict != Allow || !slices.Equal(rules, wantRules) {
		t.Fatalf("after the restart: %+v %+v, %v, %v", a, rules, aerr, rerr)
	}
}

// Built while the database is down, the source starts, refuses as
// unavailable, and serves once the database is up.
func TestPostgresStartsWhileDown(t *testing.T) {
	srv := newPostgres(t)
	src := newTestPostgresSource(t, PostgresConfig{URL: srv.URL, ACLQuery: DefaultPostgresACLQuery})
	r := backendRequest("fred", "fred-pw")
	a, rules, aerr, rerr := pgCall(src, r, 2*time.Second)
	if !errors.Is(aerr, ErrUnavailable) || !errors.Is(rerr, ErrUnavailable) || a.Verdict != Ignore || rules != nil {
		t.Fatalf("database not started: got %+v %+v, %v, %v; want errors wrapping ErrUnavailable", a, rules, aerr, rerr)
	}

	srv.Start(t)
	pgExec(t, srv.URL, pgTables[0])
	pgExec(t, srv.URL, pgTables[1])
	pgAddUser(t, srv.URL, "fred", mustHash(t, HashSHA512PBKDF2, "fred-pw"), true)
	pgAddRule(t, srv.URL, "fred", "deny", "publish", "fred/ro")
	a, rules, aerr, rerr = pgCall(src, r, 10*time.Second)
	if aerr != nil || rerr != nil || a.Verdict != Allow || !a.Superuser || !slices.Equal(rules, []Rule{{Filter: "fred/ro", Access: Write, Deny: true}}) {
		t.Fatalf("database up: %+v %+v, %v, %v", a, rules, aerr, rerr)
	}
}

func BenchmarkPostgresAuthenticate(b *testing.B) {
	url := pgSchema(b, sharedPostgres(b), pgTables...)
	pgAddUser(b, url, "bench", mustHash(b, HashSHA512PBKDF2, "bench-pw"), false)
	src := newTestPostgresSource(b, PostgresConfig{URL: url})
	r := backendRequest("bench", "bench-pw")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		a, err := src.Authenticate(ctx, r)
		if err != nil || a.Verdict != Allow {
			b.Fatalf("%+v, %v", a, err)
		}
	}
}
