// Package auth decides who may connect, publish and subscribe.
//
// Authentication is a chain of sources (password file, HTTP, JWT, Redis,
// PostgreSQL, client certificate) tried in order; each answers Allow, Deny
// or Ignore ("not mine"), and the first Allow or Deny decides. A source that
// cannot answer (backend down, timeout) returns an error, and the chain
// reports the client as unavailable: it is refused with 0x88 (Server
// unavailable), never let in and never told "not authorized".
//
// Authorization is a list of Rules per client, gathered once at CONNECT
// from the ACL sources (ACL file, HTTP answer, JWT claim, Redis,
// PostgreSQL) and compiled into a Matcher whose checks allocate nothing and
// call nothing: the broker asks it on every PUBLISH and SUBSCRIBE.
//
// Nothing in this package runs on an event loop: callers (the broker) hand
// a Request to the chain from their own goroutine and get the Decision
// back through a callback. Every backend call has a deadline.
package auth

import (
	"context"
	"errors"
)

// Request is what a client presents at CONNECT.
type Request struct {
	ClientID    string
	Username    string
	Password    []byte
	HasUsername bool
	HasPassword bool
	// Remote is the client's address ("ip:port"), after the PROXY
	// protocol where it is used.
	Remote string
	// Protocol is the MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
	Protocol byte
	// Listener names the listener the client came through ("mqtt",
	// "tls", "ws", "wss").
	Listener string
	// CertCN and CertSANs are the verified client certificate's subject
	// common name and subject alternative names (DNS names, e-mail
	// addresses, URIs); empty without a verified certificate.
	CertCN   string
	CertSANs []string
}

// Verdict is a source's answer to a Request.
type Verdict uint8

// Verdicts.
const (
	// Ignore passes the client to the next source: the source does not
	// know this client.
	Ignore Verdict = iota
	// Allow lets the client in; later sources are not asked.
	Allow
	// Deny refuses the client (bad credentials); later sources are not
	// asked.
	Deny
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	default:
		return "ignore"
	}
}

// Answer is one source's answer to an authentication request.
type Answer struct {
	Verdict Verdict
	// Superuser bypasses every ACL (but never publishes to $SYS/).
	Superuser bool
	// Username replaces the Request's username for everything after
	// authentication (ACL substitution, client id ownership) when not
	// empty: a JWT's subject, a certificate's CN.
	Username string
	// Rules, when HasRules is set, are this client's ACL as the source
	// sees it (an HTTP answer's rules, a JWT's ACL claim). They take the
	// place of the ACL sources' rules for this client.
	Rules    []Rule
	HasRules bool
}

// Source is one link of the authentication chain.
//
// Authenticate must honour ctx's deadline and be safe for concurrent use.
// It returns an error only when it cannot answer (backend unreachable,
// timeout, malformed backend answer); a wrong password is Deny, an unknown
// user is Ignore (or Deny for sources that own every user, such as a
// password file: see each source).
type Source interface {
	Name() string
	Authenticate(ctx context.Context, r *Request) (Answer, error)
}

// ACLSource gives a client's ACL rules after it authenticated.
//
// Rules returns the rules that apply to this client (placeholders such as
// %u and %c already substituted), or an error when the backend cannot
// answer. A client for which the source has no rules gets an empty slice:
// with an ACL source configured, whatever no rule allows is denied.
type ACLSource interface {
	Name() string
	Rules(ctx context.Context, r *Request, username string) ([]Rule, error)
}

// Reloader is a source whose state comes from a file and can be read
// again (SIGHUP). Reload keeps the old state and returns the error when
// the new file does not parse.
type Reloader interface {
	Reload() error
}

// Access says what a rule grants or denies.
type Access uint8

// Access bits.
const (
	Read      Access = 1 << iota // receive messages: SUBSCRIBE, and deliveries
	Write                        // PUBLISH
	ReadWrite = Read | Write
)

func (a Access) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	case ReadWrite:
		return "readwrite"
	default:
		return "none"
	}
}

// Rule is one ACL entry for one client: a topic filter (MQTT wildcards
// allowed, placeholders already substituted), the access it concerns, and
// whether it allows or denies that access. Deny rules win over allow rules.
type Rule struct {
	Filter string
	Access Access
	Deny   bool
}

// Errors.
var (
	// ErrUnavailable wraps every error a backend returns: the client is
	// refused with 0x88 (Server unavailable).
	ErrUnavailable = errors.New("auth: backend unavailable")
)

// The pieces of this package, by file (each with its tests and fuzz
// targets beside it):
//
//	auth.go      these shared types
//	hash.go      password hashes: CheckPassword, HashPassword
//	passwd.go    the password file (Mosquitto's format): PasswordFile
//	acl.go       the ACL file (Mosquitto's acl_file format): ACLFile
//	matcher.go   compiled per-client rules: Compile, Matcher
//	chain.go     the chain: sources in order, merging of identical
//	             questions, limits, the ACL stage: Chain
//	cache.go     the answer cache (TTL, bounded, CLOCK eviction)
//	keys.go      what an answer is keyed by: Fields, AuthKeyer, RulesKeyer
//	breaker.go   the per-backend circuit breaker
//	metrics.go   the chain's metrics
//	http.go      the HTTP source: HTTPSource
//	jwt.go       the JWT source: JWTSource
//	rulesjson.go ACL rules as JSON (HTTP answers, JWT claims)
//	redis.go     the Redis source: RedisSource
//	postgres.go  the PostgreSQL source: PostgresSource
//	placeholders.go  ${username}-style placeholders in backend queries,
//	             and rule templates: a client's values in stored filters
//	cert.go      the client certificate source: CertSource
