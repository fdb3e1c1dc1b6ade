package auth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis commands of RedisConfig's defaults.
const (
	// DefaultRedisAuthCommand reads a user's hash from the hash
	// mqtt_user:<username>.
	DefaultRedisAuthCommand = "HMGET mqtt_user:${username} password_hash is_superuser"
	// DefaultRedisACLCommand reads a user's rules from the hash
	// mqtt_acl:<username>.
	DefaultRedisACLCommand = "HGETALL mqtt_acl:${username}"
)

// RedisConfig configures a RedisSource.
type RedisConfig struct {
	// URL locates the server: redis://[user:password@]host:port/db, or
	// rediss:// for TLS, with go-redis's query options
	// (?dial_timeout=2s&pool_size=20...).
	URL string
	// AuthCommand reads a user's password hash, as a command line of
	// space-separated words; placeholders (see placeholders.go) may
	// appear in the key only. Two forms:
	//
	//	HMGET <key> password_hash [is_superuser]
	//	HGET <key> <field>            the field holds the hash
	//
	// The hash is in one of CheckPassword's formats; is_superuser is
	// "1" or "true" for a superuser, "0", "false" or absent otherwise.
	// Empty means DefaultRedisAuthCommand.
	//
	// The key is read exactly as built: glob characters and spaces in a
	// client's values mean nothing to HMGET and HGET. A key built from
	// two placeholders is ambiguous when the values can hold what
	// separates them (user "a:b" with client "c" and user "a" with
	// client "b:c" both read u:a:b:c from u:${username}:${clientid}):
	// prefer one placeholder per key.
	AuthCommand string
	// ACLCommand reads a user's ACL rules: "HGETALL <key>", a hash whose
	// fields are topic filters and whose values say what the filter
	// grants:
	//
	//	publish     may publish to the filter's topics
	//	subscribe   may subscribe to the filter (and receive from it)
	//	all         both
	//	deny        neither, whatever other fields grant
	//
	// (EMQX's layout, plus "deny"). A filter may hold placeholders,
	// filled in for each client as placeholders.go says (Rule
	// templates). Empty means no ACL: then the source must not be used
	// as an ACLSource (see Rules).
	ACLCommand string
	// PoolSize bounds the connections kept to the server; 0 means
	// go-redis's default (10 per CPU) or the URL's pool_size.
	PoolSize int
	// DialTimeout bounds one connection attempt; 0 means go-redis's
	// default (5s) or the URL's dial_timeout. A call's context bounds it
	// too.
	DialTimeout time.Duration
}

// RedisSource authenticates clients, and gives their ACL rules, from
// hashes in Redis (EMQX's layout by default: see RedisConfig).
//
// It keeps a pool of connections and reconnects by itself after the
// server comes back. A call that cannot be answered (server down, the
// context's deadline, a malformed stored value) returns an error wrapping
// ErrUnavailable.
//
// Methods are safe for concurrent use. Authenticate and Rules block on
// the network: call them off the event loops, with a deadline in ctx.
type RedisSource struct {
	client *redis.Client
	auth   redisAuth
	acl    *phTemplate // key of the ACL hash; nil without ACL
}

// redisAuth is the parsed AuthCommand.
type redisAuth struct {
	key    phTemplate
	hmget  bool     // HMGET, else HGET
	fields []string // HMGET's fields, or HGET's one field
	hash   int      // index of password_hash in fields
	super  int      // index of is_superuser in fields, -1 if absent
}

// NewRedisSource checks cfg and builds the source. It does not connect:
// the server may be down at start, and calls fail with ErrUnavailable
// until it is up.
func NewRedisSource(cfg RedisConfig) (*RedisSource, error) {
	opts, err := parseRedisURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.PoolSize < 0 || cfg.DialTimeout < 0 {
		return nil, errors.New("auth: redis: PoolSize and DialTimeout must not be negative")
	}
	if cfg.PoolSize > 0 {
		opts.PoolSize = cfg.PoolSize
	}
	if cfg.DialTimeout > 0 {
		opts.DialTimeout = cfg.DialTimeout
	}
	// Deadlines come from the caller's context (the chain sets one per
	// call); go-redis ignores them unless told.
	opts.ContextTimeoutEnabled = true
	// One dial attempt per call: the chain decides about retries and
	// backs off a failing backend. One retry of a command, so that a
	// connection broken while the server restarted costs no failure.
	opts.DialerRetries = 1
	if opts.MaxRetries == 0 {
		opts.MaxRetries = 1
	}

	s := &RedisSource{}
	cmd := cfg.AuthCommand
	if cmd == "" {
		cmd = DefaultRedisAuthCommand
	}
	if s.auth, err = parseRedisAuthCommand(cmd); err != nil {
		return nil, fmt.Errorf("auth: redis: AuthCommand: %w", err)
	}
	if cfg.ACLCommand != "" {
		key, err := parseRedisACLCommand(cfg.ACLCommand)
		if err != nil {
			return nil, fmt.Errorf("auth: redis: ACLCommand: %w", err)
		}
		s.acl = &key
	}
	s.client = redis.NewClient(opts)
	return s, nil
}

// parseRedisURL parses a redis:// URL. Its errors never include the URL,
// which may hold a password.
func parseRedisURL(s string) (*redis.Options, error) {
	if s == "" {
		return nil, errors.New("auth: redis: URL is empty (want redis://[user:password@]host:port/db)")
	}
	if _, err := url.Parse(s); err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("auth: redis: cannot parse URL: %w", err)
	}
	opts, err := redis.ParseURL(s)
	if err != nil {
		return nil, fmt.Errorf("auth: redis: cannot parse URL: %w", err)
	}
	return opts, nil
}

// parseRedisAuthCommand parses RedisConfig.AuthCommand.
func parseRedisAuthCommand(cmd string) (redisAuth, error) {
	words := strings.Fields(cmd)
	if len(words) < 3 {
		return redisAuth{}, fmt.Errorf("%q: want \"HMGET <key> password_hash [is_superuser]\" or \"HGET <key> <field>\"", cmd)
	}
	a := redisAuth{hash: -1, super: -1, fields: words[2:]}
	var err error
	if a.key, err = parseRedisKey(words[1]); err != nil {
		return redisAuth{}, err
	}
	for _, f := range a.fields {
		if strings.Contains(f, "${") {
			return redisAuth{}, fmt.Errorf("field %q: placeholders may appear in the key only", f)
		}
	}
	switch strings.ToUpper(words[0]) {
	case "HGET":
		if len(a.fields) != 1 {
			return redisAuth{}, fmt.Errorf("HGET takes one field, the password hash's; %d given", len(a.fields))
		}
		a.hash = 0
	case "HMGET":
		a.hmget = true
		for i, f := range a.fields {
			switch {
			case f == "password_hash" && a.hash < 0:
				a.hash = i
			case f == "is_superuser" && a.super < 0:
				a.super = i
			default:
				return redisAuth{}, fmt.Errorf("HMGET field %q: want password_hash and optionally is_superuser, each once (hashes carry their own salt)", f)
			}
		}
		if a.hash < 0 {
			return redisAuth{}, errors.New("HMGET does not read password_hash")
		}
	default:
		return redisAuth{}, fmt.Errorf("command %q: want HMGET or HGET", words[0])
	}
	return a, nil
}

// parseRedisACLCommand parses RedisConfig.ACLCommand and returns its key.
func parseRedisACLCommand(cmd string) (phTemplate, error) {
	words := strings.Fields(cmd)
	if len(words) != 2 || !strings.EqualFold(words[0], "HGETALL") {
		return phTemplate{}, fmt.Errorf("%q: want \"HGETALL <key>\"", cmd)
	}
	return parseRedisKey(words[1])
}

// parseRedisKey parses a key pattern, which must hold a placeholder (else
// every client would read the same key).
func parseRedisKey(key string) (phTemplate, error) {
	t, err := parseTemplate(key)
	if err != nil {
		return phTemplate{}, fmt.Errorf("key %q: %w", key, err)
	}
	if len(t.holes) == 0 {
		return phTemplate{}, fmt.Errorf("key %q has no placeholder: every client would read the same key", key)
	}
	return t, nil
}

// Name returns "redis".
func (s *RedisSource) Name() string { return "redis" }

// HasACL reports whether the source was given an ACLCommand: only then
// may it serve as an ACLSource.
func (s *RedisSource) HasACL() bool { return s.acl != nil }

// AuthKeyedBy returns the fields Authenticate reads: the username, the
// password (checked here against the stored hash) and the fields of the
// placeholders in AuthCommand's key.
func (s *RedisSource) AuthKeyedBy() Fields {
	return FieldUsername | FieldPassword | s.auth.key.fields()
}

// RulesKeyedBy returns the fields Rules reads besides the effective
// username: those of every placeholder but ${username}, since a stored
// topic filter may name any of them (see backendRulesFields), whatever
// ACLCommand's key reads.
func (s *RedisSource) RulesKeyedBy() Fields {
	f := backendRulesFields
	if s.acl != nil {
		f |= s.acl.fields() &^ FieldUsername
	}
	return f
}

// templatesKeyedBy returns the fields ruleTemplates reads besides the
// effective username: those of ACLCommand's key alone. With the default
// command, the rules of every client of a user are one answer.
func (s *RedisSource) templatesKeyedBy() Fields {
	if s.acl == nil {
		return 0
	}
	return s.acl.fields() &^ FieldUsername
}

// Close closes the connections; calls made after it fail. Safe to call
// more than once.
func (s *RedisSource) Close() {
	// The only errors are "already closed" and failures to close
	// sockets that are being dropped anyway.
	_ = s.client.Close()
}

// Authenticate reads the client's user with AuthCommand and checks its
// password. A client without a username, or whose user is not there
// (nil hash), is Ignored; a wrong or missing password is Denied. An
// unreadable stored hash or is_superuser value is an error wrapping
// ErrUnavailable, as is a server that does not answer before ctx ends.
//
// Safe for concurrent use; blocks on the network.
func (s *RedisSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	if !r.HasUsername || r.Username == "" {
		return Answer{Verdict: Ignore}, nil
	}
	id := newClientValues(r, r.Username)
	key := s.auth.key.expand(&id)
	var hash, super any
	if s.auth.hmget {
		vals, err := s.client.HMGet(ctx, key, s.auth.fields...).Result()
		if err != nil {
			return Answer{}, backendUnavailable(err, "auth: redis: cannot read user %q", r.Username)
		}
		if len(vals) != len(s.auth.fields) {
			return Answer{}, backendUnavailable(nil, "auth: redis: HMGET for user %q answered %d values for %d fields", r.Username, len(vals), len(s.auth.fields))
		}
		hash = vals[s.auth.hash]
		if s.auth.super >= 0 {
			super = vals[s.auth.super]
		}
	} else {
		v, err := s.client.HGet(ctx, key, s.auth.fields[0]).Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return Answer{}, backendUnavailable(err, "auth: redis: cannot read user %q", r.Username)
		default:
			hash = v
		}
	}
	if hash == nil {
		return Answer{Verdict: Ignore}, nil
	}
	encoded, ok := hash.(string)
	if !ok {
		return Answer{}, backendUnavailable(nil, "auth: redis: user %q: password_hash is a %T, not a string", r.Username, hash)
	}
	superuser, err := backendSuperuser(super)
	if err != nil {
		return Answer{}, backendUnavailable(err, "auth: redis: user %q", r.Username)
	}
	match, err := CheckPassword(encoded, r.Password)
	if err != nil {
		return Answer{}, backendUnavailable(err, "auth: redis: user %q: cannot check password", r.Username)
	}
	if !match || !r.HasPassword {
		return Answer{Verdict: Deny}, nil
	}
	return Answer{Verdict: Allow, Superuser: superuser}, nil
}

// Rules reads the client's ACL hash with ACLCommand and returns its
// rules, sorted by filter, with the client's values put into their
// filters (see ruleTemplates and placeholders.go). A client without a
// username, when the key needs one, and a missing hash both give no rules
// (so everything is denied). A value other than publish, subscribe, all
// or deny, or a field that is not a valid topic filter, is an error
// wrapping ErrUnavailable naming the key and field: never a partial ACL.
//
// Without an ACLCommand, Rules returns an error: see HasACL.
//
// Safe for concurrent use; blocks on the network.
func (s *RedisSource) Rules(ctx context.Context, r *Request, username string) ([]Rule, error) {
	ts, err := s.ruleTemplates(ctx, r, username)
	if err != nil {
		return nil, err
	}
	return applyTemplates(make([]Rule, 0, len(ts)), ts, r, username), nil
}

// ruleTemplates reads the client's ACL hash as Rules does, and returns
// its rules as stored, sorted by filter: placeholders in the filters are
// left for the chain to fill in for each client, so that one answer
// serves every client whose request reads the same key.
func (s *RedisSource) ruleTemplates(ctx context.Context, r *Request, username string) ([]ruleTemplate, error) {
	if s.acl == nil {
		return nil, backendUnavailable(nil, "auth: redis: no ACLCommand configured, yet asked for rules")
	}
	id := newClientValues(r, username)
	if username == "" && s.acl.has(phUsername) {
		return []ruleTemplate{}, nil
	}
	key := s.acl.expand(&id)
	m, err := s.client.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, backendUnavailable(err, "auth: redis: cannot read ACL of user %q", username)
	}
	filters := make([]string, 0, len(m))
	for f := range m {
		filters = append(filters, f)
	}
	slices.Sort(filters)
	ts := make([]ruleTemplate, 0, len(filters))
	for _, f := range filters {
		v := m[f]
		access, deny := ReadWrite, true
		if !strings.EqualFold(v, "deny") {
			var ok bool
			if access, ok = backendAction(v); !ok {
				return nil, backendUnavailable(nil, "auth: redis: key %q field %q: value %q is not publish, subscribe, all or deny", key, f, clipValue(v, 32))
			}
			deny = false
		}
		t, err := backendTemplate(f, access, deny)
		if err != nil {
			return nil, backendUnavailable(err, "auth: redis: key %q", key)
		}
		ts = append(ts, t)
	}
	return ts, nil
}
