package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gannetmq/gannet/codec"
)

// The ACL file, in Mosquitto's acl_file format:
//
//	# A line whose first non-blank character is '#' is a comment.
//	# Blank lines are ignored, and so is whitespace around a line.
//	topic read $SYS/#          (before any user line: anonymous clients)
//	user roger
//	topic foo/bar              (roger's block: access defaults to readwrite)
//	topic deny foo/bar/secret
//	topic write my topic/with spaces
//	pattern write sensor/%u/data
//	pattern readwrite devices/%c/#
//
// Lines:
//
//	topic [read|write|readwrite|deny] <filter>
//	    A rule for the current block: the anonymous block (clients without a
//	    username) before the first user line, the named user's block after
//	    one. deny denies both read and write, and wins over every allow rule.
//	    With an access word, the filter is the rest of the line and may hold
//	    spaces. Without one, the filter is a single word and the access is
//	    readwrite; as in Mosquitto, a single word after topic is always the
//	    filter, so "topic read" grants readwrite on the topic "read".
//	user <username>
//	    Starts the block of the rules of that user (the rest of the line,
//	    spaces included). Blocks of one user are merged.
//	pattern [read|write|readwrite|deny] <filter>
//	    A rule for every client, wherever it stands in the file, with each
//	    "%u" replaced by the client's username and each "%c" by its client
//	    id. Substitution happens once: a value that looks like "%u" is
//	    inserted as it is, and "${...}" is literal text.
//
// Every filter must be a valid MQTT topic filter (not a shared subscription);
// a line that breaks a rule of the format is an error naming the file and
// the line.
//
// A value cannot go into a pattern as it is when it is empty, holds '/',
// '+', '#' or NUL, is not valid UTF-8, or would make the filter start with
// '$': a client id "#" would turn "devices/%c/#" into "devices/#/#" and
// reach every device, a client id "$SYS" would turn "%c/#" into "$SYS/#".
// An anonymous client's username is empty. Mosquitto refuses all access to
// a client whose username or client id holds '+' or '#', and leaves the
// "%u" patterns out for anonymous clients. Here such a pattern is filled
// in as the rules of the Redis, PostgreSQL and JSON sources are
// (placeholders.go, Rule templates), so that the client keeps its other
// rules, a deny line is never lost, and every source agrees:
//
//   - an allow pattern (read, write, readwrite) that needs such a value
//     grants nothing to the client;
//   - a deny pattern is never dropped: it is widened to cover every topic
//     the value could make it name. The level holding the value becomes
//     '+'; when the value holds '/' or '#' that level becomes '#' and the
//     filter ends there; and when the value makes the filter start with
//     '$', the first level keeps its text as written, because no wildcard
//     there would match a '$' topic [MQTT-4.7.2-1]. "pattern deny
//     t/%c/secret" denies "t/#" to client id "a/b" (and so "t/a/b/secret")
//     and "t/+/secret" to client id "" or "+"; "pattern deny %c/#" denies
//     "$SYS/#" to client id "$SYS". Deny patterns with "%u" thus apply to
//     anonymous clients too, widened.

// Bounds of an ACL file.
const (
	// MaxACLFileSize bounds the size of an ACL file, in bytes.
	MaxACLFileSize = 16 << 20
	// MaxACLLineLength bounds the length of one line, in bytes: room for
	// a keyword, an access word and the longest topic filter.
	MaxACLLineLength = 0xffff + 64
)

// ACLFile is an ACLSource that reads its rules from a file in Mosquitto's
// acl_file format (described above), and a Reloader. Rules, SplitRules and
// Reload may be called from any goroutine, concurrently; a reload replaces
// the rules atomically, so a call sees either the old file or the new one.
type ACLFile struct {
	path     string
	reloadMu sync.Mutex // serialises Reload
	table    atomic.Pointer[aclTable]
}

// aclTable is one parsed ACL file. It is never changed after parseACL
// returns.
type aclTable struct {
	// What the file says, for reading it back (tests, diagnostics).
	anonBlock []Rule            // topic lines before the first user line
	userBlock map[string][]Rule // topic lines after "user <name>"
	patterns  []Rule            // pattern lines, placeholders unreplaced

	// What Rules serves.
	plain []Rule            // patterns without placeholders
	upats []ruleTemplate    // patterns with %u and without %c
	cpats []ruleTemplate    // patterns with %c
	anon  []Rule            // anonBlock, then plain, then upats for ""
	users map[string][]Rule // userBlock, then plain, then upats for that user
}

// LoadACLFile reads the ACL file at path. The error names the path and,
// for a malformed line, its line number.
func LoadACLFile(path string) (*ACLFile, error) {
	t, err := readACLFile(path)
	if err != nil {
		return nil, err
	}
	f := &ACLFile{path: path}
	f.table.Store(t)
	return f, nil
}

// Name returns "acl-file".
func (f *ACLFile) Name() string { return "acl-file" }

// Reload reads the file again and, when it parses, makes its rules the ones
// Rules returns from now on. When it does not, the rules in use stay and the
// error names the path and line. Clients keep the rules they were given at
// CONNECT until the broker asks again.
func (f *ACLFile) Reload() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	t, err := readACLFile(f.path)
	if err != nil {
		return err
	}
	f.table.Store(t)
	return nil
}

// RulesKeyedBy returns FieldClientID: the rules depend on the effective
// username and, through "%c" patterns, on the client id. The client id is
// in the key even when the file has no "%c" pattern, because a Reload may
// add one, and an answer keyed by the username alone before it would then
// be served to other clients of the user after it. Clients of one user
// still share the compiled shared part (see SplitRules), and a call costs
// no backend round trip.
func (f *ACLFile) RulesKeyedBy() Fields { return FieldClientID }

// Rules returns the rules of the client: those SplitRules returns, shared
// first and then own, in one slice. The caller must not modify the slice:
// without client-id patterns it is the shared part itself, which other
// clients of the user get too. It never returns an error.
func (f *ACLFile) Rules(ctx context.Context, r *Request, username string) ([]Rule, error) {
	shared, own, err := f.SplitRules(ctx, r, username)
	if err != nil || len(own) == 0 {
		return shared, err
	}
	out := make([]Rule, 0, len(shared)+len(own))
	out = append(out, shared...)
	return append(out, own...), nil
}

// SplitRules returns the rules of the client (username is the name it
// authenticated as, "" for an anonymous client) in two parts: shared, the
// rules every client of that user has (the user's block, or the anonymous
// block, then the patterns without "%c" substituted for the user), and own,
// the patterns with "%c" substituted for this client. shared is the same
// slice on every call for a user that has a block in the file, and for
// anonymous clients; the caller must modify neither slice. Pass both to
// CompileWith, so that the clients of one user share one compiled trie.
// It never returns an error.
func (f *ACLFile) SplitRules(_ context.Context, r *Request, username string) (shared, own []Rule, err error) {
	t := f.table.Load()
	clientID := ""
	if r != nil {
		clientID = r.ClientID
	}
	return t.sharedRules(username), t.ownRules(username, clientID), nil
}

// sharedRules returns the part of the rules that all clients of username
// have.
func (t *aclTable) sharedRules(username string) []Rule {
	if username == "" {
		return t.anon
	}
	if rules, ok := t.users[username]; ok {
		return rules
	}
	if len(t.upats) == 0 {
		return t.plain
	}
	return t.userRules(nil, username)
}

// userRules returns block, then the plain patterns, then the %u patterns
// filled in for username, in a new slice of its own length.
func (t *aclTable) userRules(block []Rule, username string) []Rule {
	out := make([]Rule, 0, len(block)+len(t.plain)+len(t.upats))
	out = append(out, block...)
	out = append(out, t.plain...)
	id := clientValues{phUsername: username}
	for i := range t.upats {
		if r, ok := t.upats[i].apply(&id); ok {
			out = append(out, r)
		}
	}
	return slices.Clip(out)
}

// ownRules returns the %c patterns filled in for the client.
func (t *aclTable) ownRules(username, clientID string) []Rule {
	var out []Rule
	id := clientValues{phUsername: username, phClientID: clientID}
	for i := range t.cpats {
		if r, ok := t.cpats[i].apply(&id); ok {
			out = append(out, r)
		}
	}
	return out
}

// patternTemplate returns pattern line p as a rule template, filled in by
// ruleTemplate.apply as the rules of the other sources are: each "%u" a
// placeholder for the username, each "%c" one for the client id, and the
// rest (a "${username}" too) literal text.
func patternTemplate(p Rule) ruleTemplate {
	f := p.Filter
	var t phTemplate
	last := 0
	for i := 0; i+1 < len(f); i++ {
		if f[i] != '%' || f[i+1] != 'u' && f[i+1] != 'c' {
			continue
		}
		h := phUsername
		if f[i+1] == 'c' {
			h = phClientID
		}
		t.lits = append(t.lits, f[last:i])
		t.holes = append(t.holes, h)
		i++
		last = i + 1
	}
	t.lits = append(t.lits, f[last:])
	return ruleTemplate{filter: t, access: p.Access, deny: p.Deny}
}

func readACLFile(path string) (*aclTable, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: cannot load ACL file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxACLFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("auth: cannot load ACL file: %w", err)
	}
	if len(data) > MaxACLFileSize {
		return nil, fmt.Errorf("auth: cannot load ACL file: %s: larger than %d bytes", path, MaxACLFileSize)
	}
	return parseACL(path, data)
}

// parseACL parses the contents of an ACL file; name is its path, for
// errors.
func parseACL(name string, data []byte) (*aclTable, error) {
	t := &aclTable{userBlock: map[string][]Rule{}}
	data = trimBOM(data)
	user, inUser := "", false
	for lineNo := 1; len(data) > 0; lineNo++ {
		var raw []byte
		if i := indexNewline(data); i >= 0 {
			raw, data = data[:i], data[i+1:]
		} else {
			raw, data = data, nil
		}
		fail := func(format string, args ...any) error {
			return fmt.Errorf("auth: cannot load ACL file: %s:%d: %s", name, lineNo, fmt.Sprintf(format, args...))
		}
		if len(raw) > MaxACLLineLength {
			return nil, fail("line longer than %d bytes", MaxACLLineLength)
		}
		if !codec.ValidUTF8(raw) {
			return nil, fail("not valid UTF-8 (or holds U+0000)")
		}
		line := strings.Trim(string(raw), blanks)
		if line == "" || line[0] == '#' {
			continue
		}
		keyword, rest := cutWord(line)
		switch keyword {
		case "user":
			if rest == "" {
				return nil, fail("user without a name")
			}
			user, inUser = rest, true
		case "topic", "pattern":
			if rest == "" {
				return nil, fail("%s without a topic filter", keyword)
			}
			rule := Rule{Access: ReadWrite}
			word, filter := cutWord(rest)
			if filter == "" {
				filter = word
			} else {
				switch word {
				case "read":
					rule.Access = Read
				case "write":
					rule.Access = Write
				case "readwrite":
				case "deny":
					rule.Deny = true
				default:
					return nil, fail("unknown access %s (want read, write, readwrite or deny before a topic filter)", quoteField(word))
				}
			}
			if msg := filterProblem(filter); msg != "" {
				return nil, fail("%s", msg)
			}
			rule.Filter = filter
			switch {
			case keyword == "pattern":
				t.patterns = append(t.patterns, rule)
			case inUser:
				t.userBlock[user] = append(t.userBlock[user], rule)
			default:
				t.anonBlock = append(t.anonBlock, rule)
			}
		default:
			return nil, fail("unknown keyword %s (want topic, user or pattern)", quoteField(keyword))
		}
	}
	t.prepare()
	return t, nil
}

// prepare computes what Rules serves from what the file says.
func (t *aclTable) prepare() {
	for _, p := range t.patterns {
		rt := patternTemplate(p)
		switch {
		case rt.filter.has(phClientID):
			t.cpats = append(t.cpats, rt)
		case rt.filter.has(phUsername):
			t.upats = append(t.upats, rt)
		default:
			t.plain = append(t.plain, p)
		}
	}
	t.plain = slices.Clip(t.plain)
	// An anonymous client's username is empty: its %u patterns grant
	// nothing, and those that deny are widened.
	t.anon = t.userRules(t.anonBlock, "")
	t.users = make(map[string][]Rule, len(t.userBlock))
	for name, block := range t.userBlock {
		t.users[name] = t.userRules(block, name)
	}
}

// blanks are the characters trimmed around lines and words.
const blanks = " \t\r\v\f"

// cutWord splits s, which does not start with a blank, at its first blank:
// the word before, and the rest with its leading blanks removed.
func cutWord(s string) (word, rest string) {
	i := strings.IndexAny(s, " \t\v\f\r")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], blanks)
}

func indexNewline(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

func trimBOM(b []byte) []byte {
	if len(b) >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf {
		return b[3:]
	}
	return b
}

// filterProblem returns why f cannot be a rule's filter, or "".
func filterProblem(f string) string {
	if strings.HasPrefix(f, "$share/") {
		return "topic filter " + quoteField(f) + " is a shared subscription: name the topics without \"$share/<group>/\""
	}
	if err := codec.ValidateTopicFilter([]byte(f)); err != nil {
		var ce *codec.Error
		if errors.As(err, &ce) {
			msg := "bad topic filter: " + ce.Msg
			if ce.Rule != "" {
				msg += " [" + ce.Rule + "]"
			}
			return msg
		}
		return "bad topic filter " + quoteField(f)
	}
	if !validFilter(f) {
		// codec and the matcher disagree on what a filter is.
		return "bad topic filter " + quoteField(f)
	}
	return ""
}

// quoteField quotes a word of the file for an error, cut to 64 bytes.
func quoteField(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
