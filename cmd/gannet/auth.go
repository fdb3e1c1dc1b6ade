package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/gannetmq/gannet/auth"
)

// authFlags are the authentication and authorization settings. The
// sources are asked in the order their flags appear on the command line.
type authFlags struct {
	order []string // source names, in command-line order

	passwordFile string
	aclFile      string
	anonymous    bool

	httpURL     string
	httpTimeout time.Duration

	jwtKey      string
	jwtFrom     string
	jwtIssuer   string
	jwtAudience string

	redisURL        string
	redisAuthCmd    string
	redisACLCmd     string
	postgresURL     string
	postgresQuery   string
	postgresACL     string
	postgresMaxConn int

	certField string

	cacheTTL        time.Duration
	cacheSize       int
	timeout         time.Duration
	maxInflight     int
	breakerFailures int
	breakerCooldown time.Duration
}

// sourceFlag is a string flag that also records when it was set, so that
// the chain follows the command line's order.
type sourceFlag struct {
	name  string
	dst   *string
	order *[]string
}

func (f *sourceFlag) String() string {
	if f.dst == nil {
		return ""
	}
	return *f.dst
}

func (f *sourceFlag) Set(v string) error {
	*f.dst = v
	for _, n := range *f.order {
		if n == f.name {
			return nil
		}
	}
	*f.order = append(*f.order, f.name)
	return nil
}

func (a *authFlags) register(fs *flag.FlagSet) {
	src := func(flagName, source string, dst *string, usage string) {
		fs.Var(&sourceFlag{name: source, dst: dst, order: &a.order}, flagName, usage)
	}
	src("password-file", "password-file", &a.passwordFile,
		"authenticate clients against a password `file` in Mosquitto's format (user:hash lines; hashes from mosquitto_passwd or `gannet passwd`: $7$, $6$, bcrypt, argon2id); reloaded on SIGHUP")
	fs.StringVar(&a.aclFile, "acl-file", "", "authorize publishes and subscriptions by an ACL `file` in Mosquitto's acl_file format (topic, user and pattern lines, %u and %c); whatever no rule allows is denied; reloaded on SIGHUP")
	fs.BoolVar(&a.anonymous, "allow-anonymous", false, "let clients without a username or password in when an authentication source is configured and none of them decides (with no source configured, everyone is let in)")
	src("auth-http-url", "http", &a.httpURL,
		"authenticate clients by POSTing their credentials as JSON to this `URL`; it answers {\"result\":\"allow|deny|ignore\",\"is_superuser\":bool,\"acl\":[...]}")
	fs.DurationVar(&a.httpTimeout, "auth-http-timeout", 5*time.Second, "timeout of one request to --auth-http-url")
	src("auth-jwt-key", "jwt", &a.jwtKey,
		"authenticate clients whose password (or username, by --auth-jwt-from) is a JWT signed with the key in this `file`: an HMAC secret, a PEM public key or certificate (RSA, ECDSA, Ed25519) or a JWKS; reloaded when it changes")
	fs.StringVar(&a.jwtFrom, "auth-jwt-from", "password", "where clients put their JWT: password or username")
	fs.StringVar(&a.jwtIssuer, "auth-jwt-issuer", "", "required iss claim of JWTs; empty: not checked")
	fs.StringVar(&a.jwtAudience, "auth-jwt-audience", "", "required aud claim of JWTs; empty: not checked")
	src("auth-redis-url", "redis", &a.redisURL,
		"authenticate clients against Redis at this `URL` (redis://[user:password@]host:port/db)")
	fs.StringVar(&a.redisAuthCmd, "auth-redis-auth-command", auth.DefaultRedisAuthCommand, "Redis command that reads a user's password hash and superuser flag; ${username}, ${clientid}, ${peerhost} are substituted")
	fs.StringVar(&a.redisACLCmd, "auth-redis-acl-command", auth.DefaultRedisACLCommand, "Redis command (HGETALL key) that reads a user's ACL: fields are topic filters, values publish, subscribe, all or deny; empty: no ACL from Redis")
	src("auth-postgres-url", "postgres", &a.postgresURL,
		"authenticate clients against PostgreSQL at this `URL` (postgres://user:password@host:port/db)")
	fs.StringVar(&a.postgresQuery, "auth-postgres-query", auth.DefaultPostgresAuthQuery, "SQL returning password_hash and is_superuser for a client; ${username}, ${clientid}, ${peerhost} become bind parameters")
	fs.StringVar(&a.postgresACL, "auth-postgres-acl-query", auth.DefaultPostgresACLQuery, "SQL returning the client's rules as rows of permission (allow|deny), action (publish|subscribe|all) and topic; empty: no ACL from PostgreSQL")
	fs.IntVar(&a.postgresMaxConn, "auth-postgres-max-conns", 0, "connections in the PostgreSQL pool; 0: pgx's default")
	src("auth-cert", "cert", &a.certField,
		"let in clients with a verified TLS client certificate, its `field` (cn or san) as the username")
	fs.DurationVar(&a.cacheTTL, "auth-cache-ttl", time.Minute, "how long backend answers (allow, deny, ACL rules) are kept, and how often connected clients' ACLs are recomputed from the backends; 0: no cache")
	fs.IntVar(&a.cacheSize, "auth-cache-size", auth.DefaultCacheSize, "most answers kept in the authentication cache")
	fs.DurationVar(&a.timeout, "auth-timeout", auth.DefaultTimeout, "how long a backend (HTTP, Redis, PostgreSQL) may take to answer before the client is refused with 0x88")
	fs.IntVar(&a.maxInflight, "auth-max-inflight", auth.DefaultMaxInflight, "concurrent calls to one backend at most; others wait up to --auth-timeout")
	fs.IntVar(&a.breakerFailures, "auth-breaker-failures", auth.DefaultBreakerFailures, "consecutive failures after which a backend counts as down and is not called for --auth-breaker-cooldown; negative: never")
	fs.DurationVar(&a.breakerCooldown, "auth-breaker-cooldown", auth.DefaultBreakerCooldown, "how long a backend counted as down is left alone before one trial call")
}

// build makes the chain, or returns nil when no source and no ACL is
// configured. It does not contact backends: a database that is down at
// start refuses clients (0x88) until it comes back.
func (a *authFlags) build(log *slog.Logger) (*auth.Chain, []interface{ Close() }, error) {
	if len(a.order) == 0 && a.aclFile == "" {
		return nil, nil, nil
	}
	var (
		sources []auth.Source
		acls    []auth.ACLSource
		closers []interface{ Close() }
	)
	fail := func(err error) (*auth.Chain, []interface{ Close() }, error) {
		for _, c := range closers {
			c.Close()
		}
		return nil, nil, err
	}
	for _, name := range a.order {
		switch name {
		case "password-file":
			pf, err := auth.LoadPasswordFile(a.passwordFile)
			if err != nil {
				return fail(err)
			}
			sources = append(sources, pf)
		case "http":
			h, err := auth.NewHTTPSource(auth.HTTPConfig{URL: a.httpURL, Timeout: a.httpTimeout})
			if err != nil {
				return fail(err)
			}
			closers = append(closers, h)
			sources = append(sources, h)
		case "jwt":
			j, err := auth.NewJWTSource(auth.JWTConfig{KeyFile: a.jwtKey, From: a.jwtFrom, Issuer: a.jwtIssuer,
				Audience: a.jwtAudience, Logger: log})
			if err != nil {
				return fail(err)
			}
			closers = append(closers, j)
			sources = append(sources, j)
		case "redis":
			r, err := auth.NewRedisSource(auth.RedisConfig{URL: a.redisURL, AuthCommand: a.redisAuthCmd, ACLCommand: a.redisACLCmd})
			if err != nil {
				return fail(err)
			}
			closers = append(closers, r)
			sources = append(sources, r)
			if r.HasACL() {
				acls = append(acls, r)
			}
		case "postgres":
			p, err := auth.NewPostgresSource(context.Background(), auth.PostgresConfig{URL: a.postgresURL,
				AuthQuery: a.postgresQuery, ACLQuery: a.postgresACL, MaxConns: a.postgresMaxConn})
			if err != nil {
				return fail(err)
			}
			closers = append(closers, p)
			sources = append(sources, p)
			if p.HasACL() {
				acls = append(acls, p)
			}
		case "cert":
			c, err := auth.NewCertSource(a.certField)
			if err != nil {
				return fail(err)
			}
			sources = append(sources, c)
		}
	}
	if a.aclFile != "" {
		af, err := auth.LoadACLFile(a.aclFile)
		if err != nil {
			return fail(err)
		}
		acls = append(acls, af)
	}
	ch, err := auth.NewChain(auth.ChainConfig{
		Sources: sources, ACLs: acls, AllowAnonymous: a.anonymous || len(sources) == 0,
		CacheTTL: a.cacheTTL, CacheSize: a.cacheSize, Timeout: a.timeout, MaxInflight: a.maxInflight,
		BreakerFailures: a.breakerFailures, BreakerCooldown: a.breakerCooldown, Logger: log,
	})
	if err != nil {
		return fail(err)
	}
	return ch, closers, nil
}

// validate checks the settings that need no file or backend.
func (a *authFlags) validate() error {
	if a.jwtFrom != "password" && a.jwtFrom != "username" {
		return fmt.Errorf("--auth-jwt-from must be password or username, got %q", a.jwtFrom)
	}
	if a.certField != "" && a.certField != "cn" && a.certField != "san" {
		return fmt.Errorf("--auth-cert must be cn or san, got %q", a.certField)
	}
	if a.cacheTTL < 0 || a.timeout < 0 || a.httpTimeout < 0 || a.breakerCooldown < 0 {
		return errors.New("auth durations must not be negative")
	}
	if a.cacheSize < 0 || a.maxInflight < 0 || a.postgresMaxConn < 0 {
		return errors.New("--auth-cache-size, --auth-max-inflight and --auth-postgres-max-conns must not be negative")
	}
	return nil
}
