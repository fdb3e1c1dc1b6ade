//go:build linux

package auth

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// newTestRedisSource builds a source on srv, closed at the test's
// cleanup.
func newTestRedisSource(t testing.TB, cfg RedisConfig) *RedisSource {
	t.Helper()
	s, err := NewRedisSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// redisSeed writes hashes (key -> field -> value) and deletes them at
// the test's cleanup.
func redisSeed(t testing.TB, c *redis.Client, hashes map[string]map[string]string) {
	t.Helper()
	ctx := context.Background()
	for key, fields := range hashes {
		c.Del(ctx, key)
		if err := c.HSet(ctx, key, fields).Err(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Del(context.Background(), key) })
	}
}

func TestRedisAuthenticate(t *testing.T) {
	srv := sharedRedis(t)
	c := redisClient(t, srv)
	redisSeed(t, c, map[string]map[string]string{
		"mqtt_user:redis-alice":    {"password_hash": mustHash(t, HashSHA512PBKDF2, "alice-pw"), "is_superuser": "0"},
		"mqtt_user:redis-root":     {"password_hash": mustHash(t, HashBcrypt, "root-pw"), "is_superuser": "1"},
		"mqtt_user:redis-admin":    {"password_hash": mustHash(t, HashSHA512, "admin-pw"), "is_superuser": "true"},
		"mqtt_user:redis-plain":    {"password_hash": mustHash(t, HashSHA512PBKDF2, "plain-pw")},
		"mqtt_user:redis-nohash":   {"is_superuser": "1"},
		"mqtt_user:redis-badhash":  {"password_hash": "$7$not-a-hash-secretvalue"},
		"mqtt_user:redis-badsuper": {"password_hash": mustHash(t, HashSHA512, "x"), "is_superuser": "maybe"},
	})
	src := newTestRedisSource(t, RedisConfig{URL: srv.URL, ACLCommand: DefaultRedisACLCommand})
	ctx := context.Background()

	noPassword := backendRequest("redis-alice", "")
	noPassword.HasPassword = false
	noUsername := backendRequest("", "alice-pw")
	noUsername.HasUsername = false
	for _, tc := range []struct {
		name string
		r    *Request
		want Answer
	}{
		{"allow", backendRequest("redis-alice", "alice-pw"), Answer{Verdict: Allow}},
		{"allow without is_superuser", backendRequest("redis-plain", "plain-pw"), Answer{Verdict: Allow}},
		{"superuser 1", backendRequest("redis-root", "root-pw"), Answer{Verdict: Allow, Superuser: true}},
		{"superuser true", backendRequest("redis-admin", "admin-pw"), Answer{Verdict: Allow, Superuser: true}},
		{"wrong password", backendRequest("redis-alice", "alice-pw!"), Answer{Verdict: Deny}},
		{"wrong password of a superuser", backendRequest("redis-root", "alice-pw"), Answer{Verdict: Deny}},
		{"no password", noPassword, Answer{Verdict: Deny}},
		{"unknown user", backendRequest("redis-nobody", "alice-pw"), Answer{Verdict: Ignore}},
		{"user without a hash", backendRequest("redis-nohash", ""), Answer{Verdict: Ignore}},
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

	for _, name := range []string{"redis-badhash", "redis-badsuper"} {
		got, err := src.Authenticate(ctx, backendRequest(name, "the-password"))
		if !errors.Is(err, ErrUnavailable) || got.Verdict != Ignore {
			t.Errorf("%s: got %+v, %v; want an error wrapping ErrUnavailable", name, got, err)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "secretvalue") || strings.Contains(msg, "the-password") || !strings.Contains(msg, name) {
			t.Errorf("%s: error %q shows a hash or password, or no username", name, msg)
		}
	}
}

// Each of a client's values is one argument of the command: a username
// with spaces, CR LF or glob characters reads exactly its own key.
func TestRedisInjection(t *testing.T) {
	srv := sharedRedis(t)
	c := redisClient(t, srv)
	redisSeed(t, c, map[string]map[string]string{
		"mqtt_user:redis-inj":        {"password_hash": mustHash(t, HashSHA512, "pw-1"), "is_superuser": "1"},
		"mqtt_user:redis-inj victim": {"password_hash": mustHash(t, HashSHA512, "pw-2")},
	})
	src := newTestRedisSource(t, RedisConfig{URL: srv.URL})
	ctx := context.Background()
	for _, tc := range []struct {
		user, password string
		want           Verdict
	}{
		{"redis-inj victim", "pw-2", Allow},
		{"redis-inj victim", "pw-1", Deny},                    // not "redis-inj" with extra fields
		{"redis-inj password_hash", "pw-1", Ignore},           // not a field list
		{"redis-inj*", "pw-1", Ignore},                        // no glob
		{"redis-inj\r\nFLUSHALL\r\n", "pw-1", Ignore},         // no second command
		{"redis-inj\r\n*1\r\n$8\r\nFLUSHALL\r\n", "", Ignore}, // nor in RESP
		{"x' OR '1'='1", "pw-1", Ignore},
	} {
		got, err := src.Authenticate(ctx, backendRequest(tc.user, tc.password))
		if err != nil || got.Verdict != tc.want || got.Superuser {
			t.Errorf("user %q: got %+v, %v; want %v", tc.user, got, err, tc.want)
		}
	}
	if n, err := c.Exists(ctx, "mqtt_user:redis-inj", "mqtt_user:redis-inj victim").Result(); err != nil || n != 2 {
		t.Errorf("after the attempts, %d of 2 users remain (%v)", n, err)
	}
}

func TestRedisAuthCommandHGET(t *testing.T) {
	srv := sharedRedis(t)
	c := redisClient(t, srv)
	redisSeed(t, c, map[string]map[string]string{
		"creds:redis-dev-7": {"pbkdf2": mustHash(t, HashSHA512PBKDF2, "dev-pw")},
	})
	src := newTestRedisSource(t, RedisConfig{URL: srv.URL, AuthCommand: "hget creds:${clientid} pbkdf2"})
	ctx := context.Background()
	r := backendRequest("anyone", "dev-pw")
	r.ClientID = "redis-dev-7"
	if got, err := src.Authenticate(ctx, r); err != nil || got.Verdict != Allow || got.Superuser {
		t.Errorf("by client id: got %+v, %v; want allow", got, err)
	}
	r.ClientID = "redis-dev-8"
	if got, err := src.Authenticate(ctx, r); err != nil || got.Verdict != Ignore {
		t.Errorf("unknown client id: got %+v, %v; want ignore", got, err)
	}
}

func TestRedisRules(t *testing.T) {
	srv := sharedRedis(t)
	c := redisClient(t, srv)
	redisSeed(t, c, map[string]map[string]string{
		"mqtt_acl:redis-carol": {
			"a/b":                 "publish",
			"c/+":                 "subscribe",
			"d/#":                 "all",
			"d/secret":            "deny",
			"users/${username}/#": "ALL",
			"dev/${clientid}":     "publish",
		},
		"mqtt_acl:redis-a/b":       {"users/${username}/#": "all", "open/#": "subscribe"},
		"mqtt_acl:redis-badvalue":  {"a/b": "publish", "c": "pub"},
		"mqtt_acl:redis-badfilter": {"a/b": "publish", "a/#/c": "subscribe"},
		"mqtt_acl:redis-bad/deny":  {"a/${username}/#": "deny", "b/#": "all"},
	})
	src := newTestRedisSource(t, RedisConfig{URL: srv.URL, ACLCommand: DefaultRedisACLCommand})
	if !src.HasACL() {
		t.Fatal("HasACL = false with an ACLCommand")
	}
	ctx := context.Background()
	r := backendRequest("redis-carol", "")
	got, err := src.Rules(ctx, r, "redis-carol")
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{
		{Filter: "a/b", Access: Write},
		{Filter: "c/+", Access: Read},
		{Filter: "d/#", Access: ReadWrite},
		{Filter: "d/secret", Access: ReadWrite, Deny: true},
		{Filter: "dev/client-redis-carol", Access: Write},
		{Filter: "users/redis-carol/#", Access: ReadWrite},
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n got %+v\nwant %+v", got, want)
	}

	// The rule for a username with '/' is dropped, not widened.
	got, err = src.Rules(ctx, backendRequest("redis-a/b", ""), "redis-a/b")
	if want := []Rule{{Filter: "open/#", Access: Read}}; err != nil || !slices.Equal(got, want) {
		t.Errorf("username with '/': got %+v, %v; want %+v", got, err, want)
	}

	for _, user := range []string{"redis-nobody", ""} {
		got, err := src.Rules(ctx, backendRequest(user, ""), user)
		if err != nil || got == nil || len(got) != 0 {
			t.Errorf("user %q without rules: got %#v, %v; want an empty slice", user, got, err)
		}
	}

	// A deny rule for a username with '/' is widened to cover the
	// levels the username could fill: never an error, never dropped.
	got, err = src.Rules(ctx, backendRequest("redis-bad/deny", ""), "redis-bad/deny")
	if want := []Rule{{Filter: "a/#", Access: ReadWrite, Deny: true}, {Filter: "b/#", Access: ReadWrite}}; err != nil || !slices.Equal(got, want) {
		t.Errorf("deny rule for a username with '/': got %+v, %v; want %+v", got, err, want)
	}

	for user, wantErr := range map[string]string{
		"redis-badvalue":  `field "c": value "pub" is not publish, subscribe, all or deny`,
		"redis-badfilter": `topic "a/#/c"`,
	} {
		got, err := src.Rules(ctx, backendRequest(user, ""), user)
		if !errors.Is(err, ErrUnavailable) || got != nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: got %+v, %v; want an error wrapping ErrUnavailable with %q", user, got, err, wantErr)
		}
	}

	noACL := newTestRedisSource(t, RedisConfig{URL: srv.URL})
	if noACL.HasACL() {
		t.Error("HasACL = true without an ACLCommand")
	}
	if _, err := noACL.Rules(ctx, r, "redis-carol"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Rules without an ACLCommand: %v, want an error wrapping ErrUnavailable", err)
	}
}

func TestRedisConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg     RedisConfig
		wantErr string
	}{
		{RedisConfig{}, "URL is empty"},
		{RedisConfig{URL: "http://127.0.0.1:6379"}, "invalid URL scheme"},
		{RedisConfig{URL: "redis://u:hunter2@127.0.0.1:bad/0"}, "cannot parse URL"},
		{RedisConfig{URL: "redis://u:hunter2@127.0.0.1:6379/x"}, "invalid database number"},
		{RedisConfig{URL: "redis://127.0.0.1", PoolSize: -1}, "must not be negative"},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "GET mqtt_user:${username}"}, "AuthCommand: \"GET mqtt_user:${username}\": want"},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "DEL mqtt_user:${username} x"}, `AuthCommand: command "DEL": want HMGET or HGET`},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HMGET mqtt_user:${user} password_hash"}, "AuthCommand: key \"mqtt_user:${user}\": column 11: unknown placeholder ${user}"},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HMGET mqtt_user password_hash"}, "has no placeholder"},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HMGET u:${username} is_superuser"}, "does not read password_hash"},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HMGET u:${username} password_hash salt"}, `field "salt"`},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HMGET u:${username} password_hash password_hash"}, `field "password_hash"`},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HGET u:${username} a b"}, "HGET takes one field"},
		{RedisConfig{URL: "redis://127.0.0.1", AuthCommand: "HGET u:${username} ${username}"}, "placeholders may appear in the key only"},
		{RedisConfig{URL: "redis://127.0.0.1", ACLCommand: "HGETALL mqtt_acl"}, "ACLCommand: key \"mqtt_acl\" has no placeholder"},
		{RedisConfig{URL: "redis://127.0.0.1", ACLCommand: "KEYS mqtt_acl:*"}, "ACLCommand: \"KEYS mqtt_acl:*\": want \"HGETALL <key>\""},
		{RedisConfig{URL: "redis://127.0.0.1", ACLCommand: "HGETALL a:${username} extra"}, "want \"HGETALL <key>\""},
	} {
		s, err := NewRedisSource(tc.cfg)
		if err == nil {
			s.Close()
			t.Errorf("%+v: no error, want %q", tc.cfg, tc.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "auth: redis: ") {
			t.Errorf("%+v: error %q, want one with %q", tc.cfg, err, tc.wantErr)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%+v: error %q shows the password", tc.cfg, err)
		}
	}
}

// A server that accepts connections but never answers: calls end at the
// context's deadline with ErrUnavailable.
func TestRedisHungServer(t *testing.T) {
	addr := silentServer(t)
	src := newTestRedisSource(t, RedisConfig{URL: "redis://" + addr + "/0", ACLCommand: DefaultRedisACLCommand})
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

// The server crashes, hangs and comes back: calls fail promptly with
// ErrUnavailable meanwhile, and the same source serves again afterwards.
func TestRedisOutage(t *testing.T) {
	srv := startRedis(t)
	c := redisClient(t, srv)
	seed := func() {
		t.Helper()
		redisSeed(t, c, map[string]map[string]string{
			"mqtt_user:dora": {"password_hash": mustHash(t, HashSHA512PBKDF2, "dora-pw")},
			"mqtt_acl:dora":  {"dora/#": "all"},
		})
	}
	seed()
	src := newTestRedisSource(t, RedisConfig{URL: srv.URL, ACLCommand: DefaultRedisACLCommand, PoolSize: 4})
	r := backendRequest("dora", "dora-pw")
	try := func(timeout time.Duration) (Answer, time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		a, err := src.Authenticate(ctx, r)
		return a, time.Since(start), err
	}
	if a, _, err := try(5 * time.Second); err != nil || a.Verdict != Allow {
		t.Fatalf("before the outage: %+v, %v", a, err)
	}

	srv.Kill(t)
	for range 3 { // the pooled connection, then fresh dials
		a, took, err := try(2 * time.Second)
		if !errors.Is(err, ErrUnavailable) || a.Verdict != Ignore {
			t.Fatalf("server down: got %+v, %v; want an error wrapping ErrUnavailable", a, err)
		}
		if took > 2500*time.Millisecond {
			t.Errorf("server down: the call took %v past a 2s deadline", took)
		}
		if strings.Contains(err.Error(), "dora-pw") {
			t.Errorf("error %q shows the password", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if _, err := src.Rules(ctx, r, "dora"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Rules with the server down: %v, want an error wrapping ErrUnavailable", err)
	}
	cancel()

	srv.Start(t)
	seed() // no persistence: the restarted server is empty
	// go-redis re-dials in the background once a second after failed
	// dials; wait for it, with a deadline.
	deadline := time.Now().Add(15 * time.Second)
	for {
		a, _, err := try(time.Second)
		if err == nil && a.Verdict == Allow {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s after the restart: %+v, %v", a, err)
		}
		time.Sleep(50 * time.Millisecond) // polling an external server: no signal to wait on
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rules, err := src.Rules(ctx, r, "dora"); err != nil || !slices.Equal(rules, []Rule{{Filter: "dora/#", Access: ReadWrite}}) {
		t.Errorf("Rules after the restart: %+v, %v", rules, err)
	}

	// A hung server: the call ends at its deadline.
	srv.Pause(t)
	a, took, err := try(300 * time.Millisecond)
	if !errors.Is(err, ErrUnavailable) || a.Verdict != Ignore || took > 2*time.Second {
		t.Errorf("server hung: got %+v, %v after %v; want an error wrapping ErrUnavailable within the deadline", a, err, took)
	}
	srv.Resume(t)
	deadline = time.Now().Add(15 * time.Second)
	for {
		a, _, err := try(time.Second)
		if err == nil && a.Verdict == Allow {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s after the server resumed: %+v, %v", a, err)
		}
		time.Sleep(50 * time.Millisecond) // polling an external server: no signal to wait on
	}
}

func BenchmarkRedisAuthenticate(b *testing.B) {
	srv := sharedRedis(b)
	c := redisClient(b, srv)
	redisSeed(b, c, map[string]map[string]string{
		"mqtt_user:redis-bench": {"password_hash": mustHash(b, HashSHA512PBKDF2, "bench-pw"), "is_superuser": "0"},
	})
	src := newTestRedisSource(b, RedisConfig{URL: srv.URL})
	r := backendRequest("redis-bench", "bench-pw")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		a, err := src.Authenticate(ctx, r)
		if err != nil || a.Verdict != Allow {
			b.Fatalf("%+v, %v", a, err)
		}
	}
}

// FuzzRedisCommand checks that the command parsers never panic, and that
// what they accept reads a key with a placeholder and literal fields.
func FuzzRedisCommand(f *testing.F) {
	for _, s := range []string{DefaultRedisAuthCommand, DefaultRedisACLCommand, "HGET k:${clientid} h", "HMGET a b c", "hmget ${username} is_superuser password_hash", "HGETALL ${"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		if a, err := parseRedisAuthCommand(cmd); err == nil {
			if len(a.key.holes) == 0 || a.hash < 0 || a.hash >= len(a.fields) || a.super >= len(a.fields) || a.super == a.hash {
				t.Fatalf("parseRedisAuthCommand(%q) = %+v", cmd, a)
			}
			if !a.hmget && len(a.fields) != 1 {
				t.Fatalf("parseRedisAuthCommand(%q): HGET with %d fields", cmd, len(a.fields))
			}
			for _, field := range a.fields {
				if strings.Contains(field, "${") || field == "" {
					t.Fatalf("parseRedisAuthCommand(%q): field %q", cmd, field)
				}
			}
		}
		if key, err := parseRedisACLCommand(cmd); err == nil && len(key.holes) == 0 {
			t.Fatalf("parseRedisACLCommand(%q): key without a placeholder", cmd)
		}
	})
}
