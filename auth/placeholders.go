package auth

// Placeholders, and the pieces the Redis and PostgreSQL sources share.
//
// A backend's key pattern, query or stored ACL topic filter names a
// client's values with placeholders (the names EMQX uses):
//
//	${username}          the username (for ACLs: the one authentication
//	                     settled on, see Answer.Username)
//	${clientid}          the client identifier
//	${peerhost}          the client's IP address, without the port
//	${cert_common_name}  the verified client certificate's subject CN
//
// A placeholder stands for the value itself: it is never parsed again.
// For PostgreSQL it becomes a bind parameter ($1, $2, ...), so the SQL text
// sent to the server never holds a client's bytes; for Redis the value
// is copied into one command argument, which Redis reads as an exact,
// length-prefixed string (no argument splitting, no escaping to get
// wrong, and glob characters mean nothing to HMGET, HGET or HGETALL). An
// unknown placeholder, or a "${" without its "}", is an error when the
// source is built.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gannetmq/gannet/codec"
)

// placeholder names one of a client's values.
type placeholder uint8

// Placeholders. The order is that of the positional PostgreSQL parameters
// ($1 is the username, $2 the client id, ...): do not reorder.
const (
	phUsername placeholder = iota + 1
	phClientID
	phPeerhost
	phCertCN
	phCount = phCertCN
)

var placeholderNames = [...]string{
	phUsername: "username",
	phClientID: "clientid",
	phPeerhost: "peerhost",
	phCertCN:   "cert_common_name",
}

func (p placeholder) String() string { return "${" + placeholderNames[p] + "}" }

// lookupPlaceholder returns the placeholder called name (without "${"
// and "}").
func lookupPlaceholder(name string) (placeholder, bool) {
	for p := phUsername; p <= phCount; p++ {
		if placeholderNames[p] == name {
			return p, true
		}
	}
	return 0, false
}

// knownPlaceholders lists the placeholders for error messages.
func knownPlaceholders() string {
	var b strings.Builder
	for p := phUsername; p <= phCount; p++ {
		if p > phUsername {
			b.WriteString(", ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// clientValues holds the values placeholders stand for, for one client.
type clientValues [phCount + 1]string

// newClientValues collects r's values; username is the name authentication
// settled on (r.Username for authentication itself).
func newClientValues(r *Request, username string) clientValues {
	var id clientValues
	id[phUsername] = username
	id[phClientID] = r.ClientID
	id[phPeerhost] = peerHost(r.Remote)
	id[phCertCN] = r.CertCN
	return id
}

// peerHost returns the host part of an "ip:port" address (IPv6 without
// its brackets), or remote itself when it has no port.
func peerHost(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// position describes byte offset off of s for an error message: "column
// C" for one line, "line L, column C" for several (both counted from 1).
func textPosition(s string, off int) string {
	line, start := 1, 0
	for i := 0; i < off && i < len(s); i++ {
		if s[i] == '\n' {
			line++
			start = i + 1
		}
	}
	col := strconv.Itoa(off - start + 1)
	if strings.IndexByte(s, '\n') < 0 {
		return "column " + col
	}
	return "line " + strconv.Itoa(line) + ", column " + col
}

// readPlaceholder reads the placeholder whose "${" starts at s[i]. It
// returns the placeholder and the offset just past its "}".
func readPlaceholder(s string, i int) (placeholder, int, error) {
	end := strings.IndexByte(s[i:], '}')
	if end < 0 {
		return 0, 0, fmt.Errorf("%s: \"${\" without a closing \"}\"", textPosition(s, i))
	}
	name := s[i+2 : i+end]
	p, ok := lookupPlaceholder(name)
	if !ok {
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		return 0, 0, fmt.Errorf("%s: unknown placeholder ${%s} (known: %s)", textPosition(s, i), name, knownPlaceholders())
	}
	return p, i + end + 1, nil
}

// phTemplate is text with placeholders: a Redis key pattern, or an ACL
// topic filter stored in a backend. Immutable after parseTemplate; safe
// for concurrent use.
type phTemplate struct {
	lits  []string      // len(holes)+1 literal pieces, around the holes
	holes []placeholder // holes[i] goes between lits[i] and lits[i+1]
}

// parseTemplate splits s into literal text and placeholders. A "$" not
// followed by "{" is literal.
func parseTemplate(s string) (phTemplate, error) {
	var t phTemplate
	last := 0
	for i := 0; i < len(s); {
		j := strings.Index(s[i:], "${")
		if j < 0 {
			break
		}
		i += j
		p, next, err := readPlaceholder(s, i)
		if err != nil {
			return phTemplate{}, err
		}
		t.lits = append(t.lits, s[last:i])
		t.holes = append(t.holes, p)
		i, last = next, next
	}
	t.lits = append(t.lits, s[last:])
	return t, nil
}

// has reports whether t uses p.
func (t *phTemplate) has(p placeholder) bool {
	for _, h := range t.holes {
		if h == p {
			return true
		}
	}
	return false
}

// expand returns t with id's values in place of its placeholders.
func (t *phTemplate) expand(id *clientValues) string {
	if len(t.holes) == 0 {
		return t.lits[0]
	}
	n := 0
	for _, l := range t.lits {
		n += len(l)
	}
	for _, h := range t.holes {
		n += len(id[h])
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(t.lits[0])
	for i, h := range t.holes {
		b.WriteString(id[h])
		b.WriteString(t.lits[i+1])
	}
	return b.String()
}

// sqlQuery is a PostgreSQL statement whose parameters are a client's
// values. Immutable after parseSQL; safe for concurrent use.
type sqlQuery struct {
	text   string        // the statement, with $1..$n where the placeholders were
	params []placeholder // params[i] is the value bound to $(i+1)
}

// parseSQL prepares a configured query. The query names a client's
// values either with placeholders (${username}, ...), each turned into a
// bind parameter numbered in order of first appearance, or with
// positional parameters written directly: $1 is the username, $2 the
// client id, $3 the peer host, $4 the certificate's CN; a query uses one
// style or the other, and positional parameters leave no gap (PostgreSQL
// cannot type a parameter that no expression uses).
//
// The query is read with PostgreSQL's lexical rules, so that "$1" or
// "${username}" inside a string literal, a quoted identifier, a
// dollar-quoted string or a comment is left alone; a known placeholder
// inside quotes is an error, because it would be compared as the
// literal text "${username}". A query holds one statement.
func parseSQL(query string) (sqlQuery, error) {
	var (
		q        sqlQuery
		b        strings.Builder
		last     int
		named    bool
		posUsed  [phCount + 1]bool
		maxPos   int
		numbered [phCount + 1]int // placeholder -> its bind number, 0 if none yet
		ended    = -1             // offset of a ";" ending the statement
		seen     bool             // a token other than ";" was read
	)
	n := len(query)
	for i := 0; i < n; {
		c := query[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '-' && i+1 < n && query[i+1] == '-':
			end := strings.IndexByte(query[i:], '\n')
			if end < 0 {
				end = n - i
			}
			i += end
			continue
		case c == '/' && i+1 < n && query[i+1] == '*':
			end, err := sqlSkipComment(query, i)
			if err != nil {
				return sqlQuery{}, err
			}
			i = end
			continue
		}
		if ended >= 0 {
			return sqlQuery{}, fmt.Errorf("%s: more than one statement (a query holds one)", textPosition(query, i))
		}
		if c != ';' {
			seen = true
		}
		switch {
		case c == ';':
			ended = i
			i++
		case c == '\'':
			end, err := sqlSkipQuoted(query, i, false)
			if err != nil {
				return sqlQuery{}, err
			}
			i = end
		case c == '"':
			end, err := sqlSkipQuoted(query, i, false)
			if err != nil {
				return sqlQuery{}, err
			}
			i = end
		case sqlIdentStart(c):
			j := i + 1
			for j < n && sqlIdentCont(query[j]) && !strings.HasPrefix(query[j:], "${") {
				j++
			}
			if j == i+1 && (c == 'E' || c == 'e') && j < n && query[j] == '\'' {
				end, err := sqlSkipQuoted(query, j, true)
				if err != nil {
					return sqlQuery{}, err
				}
				j = end
			}
			i = j
		case c >= '0' && c <= '9':
			for i < n && (sqlIdentCont(query[i]) || query[i] == '.') && query[i] != '$' {
				i++
			}
		case c == '$' && i+1 < n && query[i+1] == '{':
			if maxPos > 0 {
				return sqlQuery{}, fmt.Errorf("%s: placeholder after a positional parameter: use ${...} placeholders or $1..$%d, not both", textPosition(query, i), phCount)
			}
			p, next, err := readPlaceholder(query, i)
			if err != nil {
				return sqlQuery{}, err
			}
			named = true
			if numbered[p] == 0 {
				q.params = append(q.params, p)
				numbered[p] = len(q.params)
			}
			b.WriteString(query[last:i])
			// Keep the parameter a token of its own: "x$1" is an
			// identifier, "$12" another parameter.
			if out := b.String(); out != "" && sqlIdentCont(out[len(out)-1]) {
				b.WriteByte(' ')
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(numbered[p]))
			if next < n && sqlIdentCont(query[next]) {
				b.WriteByte(' ')
			}
			i, last = next, next
		case c == '$' && i+1 < n && query[i+1] >= '0' && query[i+1] <= '9':
			if named {
				return sqlQuery{}, fmt.Errorf("%s: positional parameter after a placeholder: use ${...} placeholders or $1..$%d, not both", textPosition(query, i), phCount)
			}
			j := i + 1
			for j < n && query[j] >= '0' && query[j] <= '9' {
				j++
			}
			num, err := strconv.Atoi(query[i+1 : j])
			if err != nil || num < 1 || num > int(phCount) {
				return sqlQuery{}, fmt.Errorf("%s: parameter %s does not exist: $1 is %s, $2 %s, $3 %s, $4 %s",
					textPosition(query, i), query[i:j], phUsername, phClientID, phPeerhost, phCertCN)
			}
			posUsed[num] = true
			maxPos = max(maxPos, num)
			i = j
		case c == '$':
			end, ok, err := sqlSkipDollarQuoted(query, i)
			if err != nil {
				return sqlQuery{}, err
			}
			if !ok {
				end = i + 1
			}
			i = end
		default:
			i++
		}
	}
	if !seen {
		return sqlQuery{}, errors.New("empty query")
	}
	if named {
		b.WriteString(query[last:])
		q.text = b.String()
		return q, nil
	}
	for num := 1; num <= maxPos; num++ {
		if !posUsed[num] {
			return sqlQuery{}, fmt.Errorf("the query uses $%d but not $%d: PostgreSQL cannot infer the type of a parameter no expression uses", maxPos, num)
		}
		q.params = append(q.params, placeholder(num))
	}
	q.text = query
	return q, nil
}

// args returns the values to bind to q's parameters for id.
func (q *sqlQuery) args(id *clientValues) []any {
	args := make([]any, len(q.params))
	for i, p := range q.params {
		args[i] = id[p]
	}
	return args
}

// has reports whether q binds p.
func (q *sqlQuery) has(p placeholder) bool {
	for _, h := range q.params {
		if h == p {
			return true
		}
	}
	return false
}

func sqlIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func sqlIdentCont(c byte) bool {
	return sqlIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

// sqlSkipQuoted skips the string literal or quoted identifier whose opening
// quote is query[i] and returns the offset past its closing quote. A
// doubled quote stands for itself; with backslashes set (an E'...'
// string) a backslash escapes the next byte.
func sqlSkipQuoted(query string, i int, backslashes bool) (int, error) {
	quote := query[i]
	for j := i + 1; j < len(query); j++ {
		switch query[j] {
		case '\\':
			if backslashes {
				j++
			}
		case quote:
			if j+1 < len(query) && query[j+1] == quote {
				j++
				continue
			}
			if err := sqlPlaceholderInQuotes(query, i, j); err != nil {
				return 0, err
			}
			return j + 1, nil
		}
	}
	what := "string literal"
	if quote == '"' {
		what = "quoted identifier"
	}
	return 0, fmt.Errorf("%s: %s without its closing %c", textPosition(query, i), what, quote)
}

// sqlSkipComment skips the (possibly nested) /* comment */ starting at
// query[i].
func sqlSkipComment(query string, i int) (int, error) {
	depth := 0
	for j := i; j+1 < len(query); j++ {
		switch {
		case query[j] == '/' && query[j+1] == '*':
			depth++
			j++
		case query[j] == '*' && query[j+1] == '/':
			depth--
			j++
			if depth == 0 {
				return j + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("%s: \"/*\" comment without its closing \"*/\"", textPosition(query, i))
}

// sqlSkipDollarQuoted skips the dollar-quoted string ($$...$$ or
// $tag$...$tag$) starting at query[i]. ok is false when query[i] starts
// no dollar quote.
func sqlSkipDollarQuoted(query string, i int) (end int, ok bool, err error) {
	j := i + 1
	if j < len(query) && query[j] != '$' {
		if !sqlIdentStart(query[j]) {
			return 0, false, nil
		}
		for j < len(query) && sqlIdentCont(query[j]) && query[j] != '$' {
			j++
		}
	}
	if j >= len(query) || query[j] != '$' {
		return 0, false, nil
	}
	tag := query[i : j+1]
	closing := strings.Index(query[j+1:], tag)
	if closing < 0 {
		return 0, false, fmt.Errorf("%s: dollar-quoted string without its closing %s", textPosition(query, i), tag)
	}
	closing += j + 1
	if err := sqlPlaceholderInQuotes(query, j, closing); err != nil {
		return 0, false, err
	}
	return closing + len(tag), true, nil
}

// sqlPlaceholderInQuotes returns an error when query[from:to], the inside of
// a quoted string, holds a known placeholder.
func sqlPlaceholderInQuotes(query string, from, to int) error {
	body := query[from:to]
	for k := 0; ; {
		j := strings.Index(body[k:], "${")
		if j < 0 {
			return nil
		}
		k += j
		if end := strings.IndexByte(body[k:], '}'); end > 0 {
			if p, ok := lookupPlaceholder(body[k+2 : k+end]); ok {
				return fmt.Errorf("%s: placeholder %s inside quotes: write it without quotes, its value is sent as a bind parameter", textPosition(query, from+k), p)
			}
		}
		k += 2
	}
}

// backendError is the error of a source that cannot answer: errors.Is
// matches both ErrUnavailable and the cause.
type backendError struct {
	msg   string
	cause error
}

// backendUnavailable returns an error wrapping ErrUnavailable and cause (which
// may be nil), reading "<msg>: <cause>". msg and cause must not hold a
// password, a hash or a token.
func backendUnavailable(cause error, format string, args ...any) error {
	return &backendError{msg: fmt.Sprintf(format, args...), cause: cause}
}

func (e *backendError) Error() string {
	if e.cause == nil {
		return e.msg
	}
	return e.msg + ": " + e.cause.Error()
}

func (e *backendError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrUnavailable}
	}
	return []error{ErrUnavailable, e.cause}
}

// ctxEnded reports whether err comes from ctx ending.
func ctxEnded(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// backendAction reads an ACL action as the Redis and PostgreSQL sources
// store it: "publish", "subscribe" or "all" (any case).
func backendAction(s string) (Access, bool) {
	switch {
	case strings.EqualFold(s, "publish"):
		return Write, true
	case strings.EqualFold(s, "subscribe"):
		return Read, true
	case strings.EqualFold(s, "all"):
		return ReadWrite, true
	}
	return 0, false
}

// fields returns the fields t's placeholders stand for.
func (t *phTemplate) fields() Fields {
	var f Fields
	for _, h := range t.holes {
		f |= placeholderField(h)
	}
	return f
}

// fields returns the fields q's parameters stand for.
func (q *sqlQuery) fields() Fields {
	var f Fields
	for _, p := range q.params {
		f |= placeholderField(p)
	}
	return f
}

// backendRulesFields are the fields the rules of the Redis and PostgreSQL
// sources depend on, besides the effective username, once Rules has put
// the client's values into them: whatever the query reads, a stored topic
// filter may name ${clientid}, ${peerhost} or ${cert_common_name}. The
// chain does not key by them: it asks for the rules as stored
// (ruleTemplates) and puts each client's values in itself.
const backendRulesFields = FieldClientID | FieldRemote | FieldCert

// Rule templates.
//
// A topic filter stored in a backend, or written in a JSON ACL, may name
// a client's values with placeholders. A value goes into the filter as it
// is when it is usable: not empty, no '/', '+', '#' or NUL, valid UTF-8,
// and no '$' at the very start of the filter. Any other value would
// change the filter's shape: user "a/+" would turn "u/${username}/#" into
// a filter reaching other users' topics, client "$SYS" would turn
// "${clientid}/#" into "$SYS/#". So a rule that needs an unusable value
// is changed so that it never grants more and never denies less than
// any reading of it:
//
//   - an allow rule is dropped: it grants nothing to that client;
//   - a deny rule is widened, level by level, to cover every topic the
//     value could make it name: a level holding an unusable value
//     becomes '+' (any one level); when the value holds '/' or '#' (it
//     could span levels) that level becomes '#' and the filter ends
//     there; and the filter's first level, when the value makes it start
//     with '$', keeps its text up to the first '/' (no wildcard in the
//     first level matches a '$' topic [MQTT-4.7.2-1]), followed by '#'
//     when the value went on past that '/'.
//
// A deny rule is never dropped and never an error: the client keeps its
// other rules, and a value the client chose (its client id) never makes
// the backend's answer fail, which would refuse the client as
// unavailable and count against the backend's circuit breaker.
//
// For example, with "deny t/${clientid}/secret": client id "a/b" gives
// "t/#" (the literal "t/a/b/secret" is one of the topics it denies),
// "a+" and "" give "t/+/secret", and for "deny ${clientid}/#" the client
// id "$SYS" gives "$SYS/#".

// ruleTemplate is one ACL rule before a client's values are put into its
// topic filter: an entry stored in a backend, or a rule of a JSON ACL.
// Immutable once made; safe for concurrent use.
type ruleTemplate struct {
	filter phTemplate
	access Access
	deny   bool
}

// probeValues stand for usable values when a template's filter is
// checked: a filter that is valid with them is valid with any usable
// value short enough.
var probeValues = clientValues{phUsername: "x", phClientID: "x", phPeerhost: "x", phCertCN: "x"}

// checkTemplate checks that t, a topic filter with placeholders, is a
// valid topic filter whatever usable values fill it in. The error is
// codec's, about t with "x" in place of each placeholder.
func checkTemplate(t *phTemplate) error {
	return codec.ValidateTopicFilter([]byte(t.expand(&probeValues)))
}

// perClient reports whether rt names a value other than the username:
// one that the clients of one user do not share.
func (rt *ruleTemplate) perClient() bool {
	for _, h := range rt.filter.holes {
		if h != phUsername {
			return true
		}
	}
	return false
}

// usableValue reports whether v may go into a topic filter as it is (see
// above); atStart says that it would start the filter.
func usableValue(v string, atStart bool) bool {
	return v != "" && !strings.ContainsAny(v, "/+#\x00") && utf8.ValidString(v) && !(atStart && v[0] == '$')
}

// apply returns rt's rule for the client whose values are id. ok is false
// when the rule does not apply to the client: an allow rule that needs an
// unusable value. A deny rule always applies, widened where it needs an
// unusable value (see above).
func (rt *ruleTemplate) apply(id *clientValues) (r Rule, ok bool) {
	t := &rt.filter
	r = Rule{Access: rt.access, Deny: rt.deny}
	if len(t.holes) == 0 {
		r.Filter = t.lits[0]
		return r, true
	}
	usable := true
	for i, h := range t.holes {
		if !usableValue(id[h], i == 0 && t.lits[0] == "") {
			usable = false
			break
		}
	}
	if usable {
		// Usable values keep a checked template valid, unless they make
		// it too long.
		if f := t.expand(id); codec.ValidateTopicFilter([]byte(f)) == nil {
			r.Filter = f
			return r, true
		}
	}
	if !rt.deny {
		return Rule{}, false
	}
	r.Filter = rt.widen(id)
	return r, true
}

// widen returns the filter of deny rule rt for a client that has an
// unusable value for it (see above). The result is one the matcher
// compiles (validFilter): it is never checked as a subscription, whose
// "$share/" group could not be a wildcard.
func (rt *ruleTemplate) widen(id *clientValues) string {
	t := &rt.filter
	var (
		levels []string
		cur    strings.Builder // the level being built, values as they are
		bad    bool            // cur holds an unusable value
		ended  bool            // the filter ends with the last level
	)
	endLevel := func() {
		e := cur.String()
		cur.Reset()
		wasBad := bad
		bad = false
		if !wasBad {
			levels = append(levels, e)
			return
		}
		if len(levels) == 0 && strings.HasPrefix(e, "$") {
			head, _, more := strings.Cut(e, "/")
			if !strings.ContainsAny(head, "+#\x00") && utf8.ValidString(head) {
				levels = append(levels, head)
				if more {
					levels, ended = append(levels, "#"), true
				}
				return
			}
		}
		if strings.ContainsAny(e, "/#") {
			levels, ended = append(levels, "#"), true
			return
		}
		levels = append(levels, "+")
	}
	for i, lit := range t.lits {
		for {
			j := strings.IndexByte(lit, '/')
			if j < 0 {
				break
			}
			cur.WriteString(lit[:j])
			lit = lit[j+1:]
			if endLevel(); ended {
				return widenedFilter(t, levels)
			}
		}
		cur.WriteString(lit)
		if i < len(t.holes) {
			v := id[t.holes[i]]
			if !usableValue(v, i == 0 && t.lits[0] == "") {
				bad = true
			}
			cur.WriteString(v)
		}
	}
	endLevel()
	return widenedFilter(t, levels)
}

// widenedFilter joins the levels widen made. Should usable values have
// made them too long, it returns the template's levels before its first
// placeholder followed by '#', which covers them.
func widenedFilter(t *phTemplate, levels []string) string {
	if f := strings.Join(levels, "/"); validFilter(f) {
		return f
	}
	if i := strings.LastIndexByte(t.lits[0], '/'); i >= 0 {
		return t.lits[0][:i+1] + "#"
	}
	return "#"
}

// splitTemplates applies the templates that name no value but the
// username to user's clients, and returns those rules (shared) with the
// templates left to apply to each client (perClient).
func splitTemplates(ts []ruleTemplate, user string) (shared []Rule, perClient []ruleTemplate) {
	id := clientValues{phUsername: user}
	shared = make([]Rule, 0, len(ts))
	for i := range ts {
		if ts[i].perClient() {
			perClient = append(perClient, ts[i])
			continue
		}
		if r, ok := ts[i].apply(&id); ok {
			shared = append(shared, r)
		}
	}
	return shared, perClient
}

// applyTemplates appends to dst the rules of ts for the client whose
// request is r and whose effective username is user.
func applyTemplates(dst []Rule, ts []ruleTemplate, r *Request, user string) []Rule {
	if len(ts) == 0 {
		return dst
	}
	id := newClientValues(r, user)
	for i := range ts {
		if rule, ok := ts[i].apply(&id); ok {
			dst = append(dst, rule)
		}
	}
	return dst
}

// backendTemplate makes the template of one ACL entry stored in a
// backend: its topic filter (with placeholders), the access it concerns
// and whether it denies. An unknown placeholder, or a filter that is not
// valid whatever values fill it in, is an error naming the filter.
func backendTemplate(filter string, access Access, deny bool) (ruleTemplate, error) {
	t, err := parseTemplate(filter)
	if err != nil {
		return ruleTemplate{}, fmt.Errorf("topic %q: %w", filter, err)
	}
	if err := checkTemplate(&t); err != nil {
		return ruleTemplate{}, fmt.Errorf("topic %q: %w", filter, err)
	}
	return ruleTemplate{filter: t, access: access, deny: deny}, nil
}

// backendSuperuser reads a stored is_superuser value: nil (absent), a
// string or a number from Redis, a bool or number or string from
// PostgreSQL.
func backendSuperuser(v any) (bool, error) {
	switch v := v.(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case int64:
		return v != 0, nil
	case int32:
		return v != 0, nil
	case int16:
		return v != 0, nil
	case string:
		switch strings.ToLower(v) {
		case "1", "true", "t":
			return true, nil
		case "0", "false", "f", "":
			return false, nil
		}
		return false, fmt.Errorf("is_superuser %q is neither 1/true nor 0/false", clipValue(v, 16))
	}
	return false, fmt.Errorf("is_superuser is a %T, not a bool, number or string", v)
}

// clipValue shortens s to n bytes for an error message.
func clipValue(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
