package auth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Queries of PostgresConfig's defaults.
const (
	// DefaultPostgresAuthQuery reads a user from the table mqtt_user.
	DefaultPostgresAuthQuery = "SELECT password_hash, is_superuser FROM mqtt_user WHERE username = ${username} LIMIT 1"
	// DefaultPostgresACLQuery reads a user's rules from the table
	// mqtt_acl.
	DefaultPostgresACLQuery = "SELECT permission, action, topic FROM mqtt_acl WHERE username = ${username}"
)

// PostgresConfig configures a PostgresSource.
//
// Both queries name the client's values with placeholders (${username},
// ${clientid}, ${peerhost}, ${cert_common_name}), each sent as a bind
// parameter, never as SQL text; or with positional parameters written
// directly: $1 is the username, $2 the client id, $3 the peer host, $4 the
// certificate's CN. See parseSQL for the rules. Columns are found by
// name (rename with AS).
type PostgresConfig struct {
	// URL locates the database, as pgx reads it:
	// postgres://user:password@host:port/db?sslmode=verify-full&connect_timeout=5,
	// or "host=... user=..." keywords.
	URL string
	// AuthQuery returns at most one row for the client, with a column
	// password_hash (text, in one of CheckPassword's formats) and
	// optionally is_superuser (boolean, integer, or text "1"/"true").
	// No row: the user is unknown; a NULL hash: the user may not log in
	// with a password. Empty means DefaultPostgresAuthQuery.
	AuthQuery string
	// ACLQuery returns the client's rules, one a row, with the text
	// columns permission ("allow" or "deny"), action ("publish",
	// "subscribe" or "all") and topic (a topic filter, whose
	// placeholders are filled in for each client as placeholders.go
	// says: Rule templates). Empty means no ACL: then the source must not
	// be used as an ACLSource (see Rules).
	ACLQuery string
	// MaxConns bounds the pool's connections; 0 means pgx's default
	// (the larger of 4 and the number of CPUs) or the URL's
	// pool_max_conns.
	MaxConns int
}

// PostgresSource authenticates clients, and gives their ACL rules, from
// a PostgreSQL database (EMQX's tables by default: see PostgresConfig).
//
// It connects lazily, through a pool that reconnects by itself: building
// it succeeds while the database is down, so that the broker starts and
// refuses clients as unavailable (0x88) until the database is reachable,
// then serves them without a restart. A call that cannot be answered
// (database down, the context's deadline, a query error, a malformed row)
// returns an error wrapping ErrUnavailable.
//
// Since the database may be down at start, the queries meet it at the
// first call: a query it rejects (a missing table or column) makes every
// call fail as unavailable, with the database's error in the message.
//
// Methods are safe for concurrent use. Authenticate and Rules block on
// the network: call them off the event loops, with a deadline in ctx.
type PostgresSource struct {
	pool *pgxpool.Pool
	auth sqlQuery
	acl  *sqlQuery // nil without ACL
}

// NewPostgresSource checks cfg and builds the source, without connecting
// (see PostgresSource). ctx bounds the building only.
func NewPostgresSource(ctx context.Context, cfg PostgresConfig) (*PostgresSource, error) {
	pcfg, err := parsePostgresURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.MaxConns < 0 {
		return nil, errors.New("auth: postgres: MaxConns must not be negative")
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = int32(min(cfg.MaxConns, 1<<20))
	}
	s := &PostgresSource{}
	q := cfg.AuthQuery
	if q == "" {
		q = DefaultPostgresAuthQuery
	}
	if s.auth, err = parseSQL(q); err != nil {
		return nil, fmt.Errorf("auth: postgres: AuthQuery: %w", err)
	}
	if cfg.ACLQuery != "" {
		acl, err := parseSQL(cfg.ACLQuery)
		if err != nil {
			return nil, fmt.Errorf("auth: postgres: ACLQuery: %w", err)
		}
		s.acl = &acl
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("auth: postgres: cannot make the connection pool: %w", err)
	}
	return s, nil
}

// parsePostgresURL parses a connection string. Its errors never include
// the password.
func parsePostgresURL(s string) (*pgxpool.Config, error) {
	if s == "" {
		return nil, errors.New("auth: postgres: URL is empty (want postgres://user:password@host:port/db)")
	}
	var password string
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			var uerr *url.Error
			if errors.As(err, &uerr) {
				err = uerr.Err
			}
			return nil, fmt.Errorf("auth: postgres: cannot parse URL: %w", err)
		}
		password, _ = u.User.Password()
	}
	cfg, err := pgxpool.ParseConfig(s)
	if err != nil {
		// pgx redacts passwords as best it can; remove a URL's too.
		msg := err.Error()
		if password != "" {
			msg = strings.ReplaceAll(msg, password, "xxxxx")
			msg = strings.ReplaceAll(msg, url.PathEscape(password), "xxxxx")
			msg = strings.ReplaceAll(msg, url.QueryEscape(password), "xxxxx")
		}
		return nil, fmt.Errorf("auth: postgres: cannot parse URL: %s", msg)
	}
	return cfg, nil
}

// Name returns "postgres".
func (s *PostgresSource) Name() string { return "postgres" }

// HasACL reports whether the source was given an ACLQuery: only then may
// it serve as an ACLSource.
func (s *PostgresSource) HasACL() bool { return s.acl != nil }

// AuthKeyedBy returns the fields Authenticate reads: the username, the
// password (checked here against the stored hash) and the fields of
// AuthQuery's placeholders.
func (s *PostgresSource) AuthKeyedBy() Fields {
	return FieldUsername | FieldPassword | s.auth.fields()
}

// RulesKeyedBy returns the fields Rules reads besides the effective
// username: those of every placeholder but ${username}, since a stored
// topic filter may name any of them (see backendRulesFields), whatever
// ACLQuery reads.
func (s *PostgresSource) RulesKeyedBy() Fields {
	f := backendRulesFields
	if s.acl != nil {
		f |= s.acl.fields() &^ FieldUsername
	}
	return f
}

// templatesKeyedBy returns the fields ruleTemplates reads besides the
// effective username: those of ACLQuery's parameters alone. With the
// default query, the rules of every client of a user are one answer.
func (s *PostgresSource) templatesKeyedBy() Fields {
	if s.acl == nil {
		return 0
	}
	return s.acl.fields() &^ FieldUsername
}

// Close closes the pool, waiting for connections in use to come back;
// calls made after it fail. Safe to call more than once.
func (s *PostgresSource) Close() { s.pool.Close() }

// Authenticate runs AuthQuery for the client and checks its password. A
// client without a username, or for whom the query returns no row, is
// Ignored; a wrong or missing password, or a NULL hash, is Denied. More
// than one row, a missing password_hash column, or an unreadable hash or
// is_superuser value is an error wrapping ErrUnavailable, as is a
// database that does not answer before ctx ends.
//
// Safe for concurrent use; blocks on the network.
func (s *PostgresSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	if !r.HasUsername || r.Username == "" {
		return Answer{Verdict: Ignore}, nil
	}
	id := newClientValues(r, r.Username)
	var (
		found       bool
		hash, super any
	)
	err := s.query(ctx, &s.auth, &id, func(rows pgx.Rows) error {
		found = false
		fds := rows.FieldDescriptions()
		hashCol, superCol := pgColumn(fds, "password_hash"), pgColumn(fds, "is_superuser")
		if hashCol < 0 {
			return backendUnavailable(nil, "AuthQuery returns no password_hash column (it returns %s)", pgColumnNames(fds))
		}
		dest := make([]any, len(fds))
		dest[hashCol] = &hash
		if superCol >= 0 {
			dest[superCol] = &super
		}
		for rows.Next() {
			if found {
				return backendUnavailable(nil, "AuthQuery returns more than one row")
			}
			if err := rows.Scan(dest...); err != nil {
				return backendUnavailable(err, "cannot read the row")
			}
			found = true
		}
		return rows.Err()
	})
	if err != nil {
		return Answer{}, backendUnavailable(err, "auth: postgres: cannot read user %q", r.Username)
	}
	if !found {
		return Answer{Verdict: Ignore}, nil
	}
	if hash == nil {
		return Answer{Verdict: Deny}, nil
	}
	var encoded string
	switch h := hash.(type) {
	case string:
		encoded = h
	case []byte:
		encoded = string(h)
	default:
		return Answer{}, backendUnavailable(nil, "auth: postgres: user %q: password_hash is a %T, not text", r.Username, hash)
	}
	superuser, err := backendSuperuser(super)
	if err != nil {
		return Answer{}, backendUnavailable(err, "auth: postgres: user %q", r.Username)
	}
	match, err := CheckPassword(encoded, r.Password)
	if err != nil {
		return Answer{}, backendUnavailable(err, "auth: postgres: user %q: cannot check password", r.Username)
	}
	if !match || !r.HasPassword {
		return Answer{Verdict: Deny}, nil
	}
	return Answer{Verdict: Allow, Superuser: superuser}, nil
}

// Rules runs ACLQuery for the client and returns its rules, in the
// order of the rows, with the client's values put into their filters (see
// ruleTemplates and placeholders.go). A client without a username, when
// the query needs one, gets no rules (so everything is denied), without a
// query. A row with a NULL or unknown permission or action, or a topic
// that is not a valid topic filter, is an error wrapping ErrUnavailable
// naming the row (counted from 1): never a partial ACL.
//
// Without an ACLQuery, Rules returns an error: see HasACL.
//
// Safe for concurrent use; blocks on the network.
func (s *PostgresSource) Rules(ctx context.Context, r *Request, username string) ([]Rule, error) {
	ts, err := s.ruleTemplates(ctx, r, username)
	if err != nil {
		return nil, err
	}
	return applyTemplates(make([]Rule, 0, len(ts)), ts, r, username), nil
}

// ruleTemplates runs ACLQuery as Rules does, and returns the client's
// rules as stored, in the order of the rows: placeholders in the topics
// are left for the chain to fill in for each client, so that one answer
// serves every client for whom the query reads the same parameters.
func (s *PostgresSource) ruleTemplates(ctx context.Context, r *Request, username string) ([]ruleTemplate, error) {
	if s.acl == nil {
		return nil, backendUnavailable(nil, "auth: postgres: no ACLQuery configured, yet asked for rules")
	}
	id := newClientValues(r, username)
	if username == "" && s.acl.has(phUsername) {
		return []ruleTemplate{}, nil
	}
	var ts []ruleTemplate
	err := s.query(ctx, s.acl, &id, func(rows pgx.Rows) error {
		ts = []ruleTemplate{}
		fds := rows.FieldDescriptions()
		cols := [3]int{pgColumn(fds, "permission"), pgColumn(fds, "action"), pgColumn(fds, "topic")}
		for i, c := range cols {
			if c < 0 {
				return backendUnavailable(nil, "ACLQuery returns no %s column (it returns %s)", [...]string{"permission", "action", "topic"}[i], pgColumnNames(fds))
			}
		}
		var vals [3]any
		dest := make([]any, len(fds))
		for i, c := range cols {
			dest[c] = &vals[i]
		}
		for row := 1; rows.Next(); row++ {
			vals = [3]any{}
			if err := rows.Scan(dest...); err != nil {
				return backendUnavailable(err, "row %d", row)
			}
			var text [3]string
			for i, v := range vals {
				str, ok := v.(string)
				if !ok {
					return backendUnavailable(nil, "row %d: %s is %s, not text", row, [...]string{"permission", "action", "topic"}[i], pgDescribe(v))
				}
				text[i] = str
			}
			var deny bool
			switch {
			case strings.EqualFold(text[0], "allow"):
			case strings.EqualFold(text[0], "deny"):
				deny = true
			default:
				return backendUnavailable(nil, "row %d: permission %q is not allow or deny", row, clipValue(text[0], 32))
			}
			access, ok := backendAction(text[1])
			if !ok {
				return backendUnavailable(nil, "row %d: action %q is not publish, subscribe or all", row, clipValue(text[1], 32))
			}
			t, err := backendTemplate(text[2], access, deny)
			if err != nil {
				return backendUnavailable(err, "row %d", row)
			}
			ts = append(ts, t)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, backendUnavailable(err, "auth: postgres: cannot read ACL of user %q", username)
	}
	return ts, nil
}

// query runs q for id and hands the rows to read, once more when the
// first attempt failed on a connection that the database had closed
// (after a restart, a pooled connection may be found dead only when
// used). read must start afresh on each call.
func (s *PostgresSource) query(ctx context.Context, q *sqlQuery, id *clientValues, read func(pgx.Rows) error) error {
	args := q.args(id)
	for attempt := 0; ; attempt++ {
		err := s.queryOnce(ctx, q, args, read)
		if err == nil || attempt > 0 || !connectionLost(ctx, err) {
			return err
		}
	}
}

func (s *PostgresSource) queryOnce(ctx context.Context, q *sqlQuery, args []any, read func(pgx.Rows) error) error {
	rows, err := s.pool.Query(ctx, q.text, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if err := read(rows); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// connectionLost reports whether err says that a pooled connection was
// dead, so that the query may be tried on another one.
func connectionLost(ctx context.Context, err error) bool {
	if ctx.Err() != nil || ctxEnded(err) {
		return false
	}
	var be *backendError
	var ce *pgconn.ConnectError
	if errors.As(err, &be) || errors.As(err, &ce) {
		return false // our own verdict on the answer; or no server to connect to
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01/57P02: the server
		// shut down or crashed and terminated the session.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02"
	}
	return true // an I/O error on the connection
}

// column returns the index of the column called name, or -1.
func pgColumn(fds []pgconn.FieldDescription, name string) int {
	for i, fd := range fds {
		if fd.Name == name {
			return i
		}
	}
	return -1
}

func pgColumnNames(fds []pgconn.FieldDescription) string {
	if len(fds) == 0 {
		return "no columns"
	}
	names := make([]string, len(fds))
	for i, fd := range fds {
		names[i] = fd.Name
	}
	return strings.Join(names, ", ")
}

func pgDescribe(v any) string {
	if v == nil {
		return "NULL"
	}
	return fmt.Sprintf("a %T", v)
}
