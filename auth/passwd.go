package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"
)

// Limits of a password file.
const (
	// MaxPasswordFileSize bounds the size of a password file.
	MaxPasswordFileSize = 64 << 20
	// MaxPasswordFileLine bounds the length of one line, terminator
	// excluded.
	MaxPasswordFileLine = 64 << 10
)

// ErrUserNotFound is returned by DeleteUser when the user is not in the
// file.
var ErrUserNotFound = errors.New("auth: user not in password file")

// PasswordFile is the authentication source backed by a password file in
// Mosquitto's format: one "user:hash" per line, the hash in any format
// CheckPassword reads (mosquitto_passwd writes $7$ or $6$). Blank lines
// and lines whose first character is '#' are ignored; blanks around the
// user and the hash are trimmed, as Mosquitto does.
//
// The file is read whole or not at all: a line without a colon, an empty
// user name, a user name that is not UTF-8 or holds a control character,
// a user named twice, a hash in an unknown or malformed format, a line
// longer than MaxPasswordFileLine or a file larger than
// MaxPasswordFileSize makes LoadPasswordFile fail, with an error naming
// path:line and the reason (never the hash). Mosquitto skips such lines
// instead; here a typo cannot silently lock a user out, or leave in force
// an entry its author meant to change. At Reload the old contents stay in
// force and the error is returned.
//
// Authenticate answers Ignore for a client without a user name or with one
// the file does not hold (another source may know it), Allow for a held
// user with the right password, Deny for a held user with a wrong or no
// password.
//
// Hashes are parsed once, at load. Authenticate and Reload are safe for
// concurrent use; Authenticate never waits for a Reload.
type PasswordFile struct {
	path     string
	users    atomic.Pointer[map[string]*passwordHash]
	reloadMu sync.Mutex // serialises Reload, so the newest read wins
}

var (
	_ Source    = (*PasswordFile)(nil)
	_ Reloader  = (*PasswordFile)(nil)
	_ AuthKeyer = (*PasswordFile)(nil)
)

// LoadPasswordFile reads and parses the password file at path.
func LoadPasswordFile(path string) (*PasswordFile, error) {
	users, err := readPasswordFile(path)
	if err != nil {
		return nil, err
	}
	f := &PasswordFile{path: path}
	f.users.Store(&users)
	return f, nil
}

// Name returns "password-file".
func (f *PasswordFile) Name() string { return "password-file" }

// AuthKeyedBy returns the fields Authenticate reads: the username and
// the password.
func (f *PasswordFile) AuthKeyedBy() Fields { return FieldUsername | FieldPassword }

// Path returns the path the file was loaded from.
func (f *PasswordFile) Path() string { return f.path }

// Len returns the number of users in force.
func (f *PasswordFile) Len() int { return len(*f.users.Load()) }

// Reload reads the file again and puts its contents in force; when the
// file cannot be read or does not parse, the old contents stay in force and
// the error is returned. Safe for concurrent use with Authenticate and
// with itself.
func (f *PasswordFile) Reload() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	users, err := readPasswordFile(f.path)
	if err != nil {
		return err
	}
	f.users.Store(&users)
	return nil
}

// Authenticate checks r's password against the file (see PasswordFile).
// It returns an error only when ctx is already done. It runs the hash
// check (CPU work, up to the bounds of CheckPassword) on the calling
// goroutine: call it off the event loops.
func (f *PasswordFile) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	if err := ctx.Err(); err != nil {
		return Answer{}, fmt.Errorf("auth: password-file: cannot authenticate: %w", err)
	}
	if !r.HasUsername {
		return Answer{Verdict: Ignore}, nil
	}
	h := (*f.users.Load())[r.Username]
	if h == nil {
		return Answer{Verdict: Ignore}, nil
	}
	if !r.HasPassword || !h.check(r.Password) {
		return Answer{Verdict: Deny}, nil
	}
	return Answer{Verdict: Allow}, nil
}

// passwdError is an error about one line of a password file. It never
// holds the line's hash.
type passwdError struct {
	path   string
	line   int
	reason string
	err    error // wrapped: ErrUnknownHash, ErrMalformedHash, or nil
}

func (e *passwdError) Error() string {
	return fmt.Sprintf("auth: cannot load password file: %s:%d: %s", e.path, e.line, e.reason)
}

func (e *passwdError) Unwrap() error { return e.err }

// readFileBounded reads path whole, refusing anything but a regular file
// of at most MaxPasswordFileSize bytes.
func readFileBounded(path string) ([]byte, os.FileMode, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("auth: cannot load password file: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("auth: cannot load password file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("auth: cannot load password file: %s: not a regular file", path)
	}
	if st.Size() > MaxPasswordFileSize {
		return nil, 0, fmt.Errorf("auth: cannot load password file: %s: larger than %d bytes", path, MaxPasswordFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(fh, MaxPasswordFileSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("auth: cannot load password file: %s: %w", path, err)
	}
	if len(data) > MaxPasswordFileSize {
		return nil, 0, fmt.Errorf("auth: cannot load password file: %s: larger than %d bytes", path, MaxPasswordFileSize)
	}
	return data, st.Mode().Perm(), nil
}

func readPasswordFile(path string) (map[string]*passwordHash, error) {
	data, _, err := readFileBounded(path)
	if err != nil {
		return nil, err
	}
	return parsePasswordFile(path, data)
}

// parsePasswordFile parses a whole file; name is used in errors.
func parsePasswordFile(name string, data []byte) (map[string]*passwordHash, error) {
	users := make(map[string]*passwordHash)
	first := make(map[string]int) // line of each user, for the error about a second
	err := forEachLine(name, data, func(n int, raw []byte, user, encoded string) error {
		if user == "" {
			return nil
		}
		if l, dup := first[user]; dup {
			return &passwdError{path: name, line: n, reason: fmt.Sprintf("user already named on line %d", l)}
		}
		first[user] = n
		h, err := parseHash(encoded)
		if err != nil {
			return &passwdError{path: name, line: n, reason: strings.TrimPrefix(err.Error(), "auth: "), err: err}
		}
		users[user] = h
		return nil
	})
	if err != nil {
		return nil, err
	}
	return users, nil
}

// byteOrderMark is what some editors write at the start of a UTF-8 file.
var byteOrderMark = []byte("\uFEFF")

// forEachLine calls fn for each line of a password file with its 1-based
// number, its raw bytes (terminator included) and, for an entry, its user
// and encoded hash; for a blank or comment line user is "". It stops at
// the first error, its own about a malformed line or fn's.
func forEachLine(name string, data []byte, fn func(n int, raw []byte, user, encoded string) error) error {
	for n := 1; len(data) > 0; n++ {
		end := bytes.IndexByte(data, '\n') + 1
		if end == 0 {
			end = len(data)
		}
		raw := data[:end]
		data = data[end:]
		line := bytes.TrimSuffix(bytes.TrimSuffix(raw, []byte("\n")), []byte("\r"))
		if len(line) > MaxPasswordFileLine {
			return &passwdError{path: name, line: n, reason: fmt.Sprintf("line longer than %d bytes", MaxPasswordFileLine)}
		}
		if n == 1 {
			line = bytes.TrimPrefix(line, byteOrderMark)
		}
		if len(line) == 0 || line[0] == '#' || len(bytes.Trim(line, " \t")) == 0 {
			if err := fn(n, raw, "", ""); err != nil {
				return err
			}
			continue
		}
		u, h, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return &passwdError{path: name, line: n, reason: "no colon between user and hash"}
		}
		user := string(bytes.Trim(u, " \t"))
		if err := checkUserName(user); err != nil {
			return &passwdError{path: name, line: n, reason: err.Error()}
		}
		encoded := string(bytes.Trim(h, " \t"))
		if encoded == "" {
			return &passwdError{path: name, line: n, reason: "empty hash"}
		}
		if err := fn(n, raw, user, encoded); err != nil {
			return err
		}
	}
	return nil
}

// checkUserName returns why user cannot be in a password file, or nil.
// The reason does not repeat the name.
func checkUserName(user string) error {
	switch {
	case user == "":
		return errors.New("empty user name")
	case len(user) > 65535:
		return errors.New("user name longer than 65535 bytes")
	case !utf8.ValidString(user):
		return errors.New("user name is not UTF-8")
	case strings.ContainsRune(user, ':'):
		return errors.New("user name holds a colon")
	case user[0] == '#':
		return errors.New("user name starts with #")
	case strings.Trim(user, " \t") != user:
		return errors.New("user name starts or ends with a blank")
	case strings.ContainsFunc(user, unicode.IsControl):
		return errors.New("user name holds a control character")
	}
	return nil
}

// Editing a password file.
//
// SetPassword, CreatePasswordFile and DeleteUser change one user and keep
// every other line (comments, blank lines, order, line endings) as it was.
// They refuse a file that LoadPasswordFile would refuse, with the same
// error. They write a new file beside the old one, fsync it and rename it
// over the old one, so a reader sees the old file or the new one, never a
// part; the new file keeps the old one's permission bits (0600 when there
// was none) and the rename follows a symbolic link to its target. Two
// editors working on one file at the same time may lose one's change.

// SetPassword sets user's hash in the password file at path, replacing the
// user's line where it is or appending one. encoded must be a hash
// CheckPassword reads (from HashPassword). The file must exist: the error
// then wraps fs.ErrNotExist.
func SetPassword(path, user, encoded string) error {
	if err := checkEntry(user, encoded); err != nil {
		return err
	}
	target, data, mode, err := readForEdit(path)
	if err != nil {
		return err
	}
	var out []byte
	found := false
	err = forEachLine(path, data, func(n int, raw []byte, u, e string) error {
		if u != user || found {
			out = append(out, raw...)
			return nil
		}
		found = true
		if n == 1 && bytes.HasPrefix(raw, byteOrderMark) {
			out = append(out, byteOrderMark...)
		}
		out = appendEntry(out, user, encoded, lineEnding(raw))
		return nil
	})
	if err != nil {
		return err
	}
	if !found {
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		out = appendEntry(out, user, encoded, "\n")
	}
	return writeFileAtomic(target, out, mode)
}

// CreatePasswordFile writes a password file at path that holds user alone,
// replacing any file there (whose permission bits it keeps).
func CreatePasswordFile(path, user, encoded string) error {
	if err := checkEntry(user, encoded); err != nil {
		return err
	}
	target, mode, err := editTarget(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return writeFileAtomic(target, appendEntry(nil, user, encoded, "\n"), mode)
}

// DeleteUser removes user's line from the password file at path. The error
// wraps ErrUserNotFound when the file does not hold user, fs.ErrNotExist
// when there is no file.
func DeleteUser(path, user string) error {
	target, data, mode, err := readForEdit(path)
	if err != nil {
		return err
	}
	var out []byte
	found := false
	err = forEachLine(path, data, func(n int, raw []byte, u, e string) error {
		if u == user && u != "" {
			found = true
			return nil
		}
		out = append(out, raw...)
		return nil
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("auth: cannot delete user from %s: %w", path, ErrUserNotFound)
	}
	return writeFileAtomic(target, out, mode)
}

func checkEntry(user, encoded string) error {
	if err := checkUserName(user); err != nil {
		return fmt.Errorf("auth: cannot set password: %w", err)
	}
	if _, err := parseHash(encoded); err != nil {
		return fmt.Errorf("auth: cannot set password: %w", err)
	}
	return nil
}

func appendEntry(dst []byte, user, encoded, eol string) []byte {
	dst = append(dst, user...)
	dst = append(dst, ':')
	dst = append(dst, encoded...)
	return append(dst, eol...)
}

// lineEnding returns raw's terminator: "\r\n", or "\n" (also for a last
// line without one, which gains it).
func lineEnding(raw []byte) string {
	if bytes.HasSuffix(raw, []byte("\r\n")) {
		return "\r\n"
	}
	return "\n"
}

// editTarget resolves symbolic links in path and returns the file to
// replace with the permission bits of the existing file, or 0600 and an
// error wrapping fs.ErrNotExist when there is none.
func editTarget(path string) (string, os.FileMode, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return path, 0o600, fmt.Errorf("auth: cannot edit password file: %w", err)
	}
	st, err := os.Stat(target)
	if err != nil {
		return target, 0o600, fmt.Errorf("auth: cannot edit password file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return target, 0, fmt.Errorf("auth: cannot edit password file: %s: not a regular file", path)
	}
	return target, st.Mode().Perm(), nil
}

// readForEdit resolves path and reads the file there, and checks that it
// parses.
func readForEdit(path string) (string, []byte, os.FileMode, error) {
	target, _, err := editTarget(path)
	if err != nil {
		return "", nil, 0, err
	}
	data, mode, err := readFileBounded(target)
	if err != nil {
		return "", nil, 0, err
	}
	if _, err := parsePasswordFile(path, data); err != nil {
		return "", nil, 0, err
	}
	return target, data, mode, nil
}

// writeFileAtomic replaces path with data: a temporary file in the same
// directory, written, set to mode, fsynced and renamed over path, then
// the directory fsynced.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if len(data) > MaxPasswordFileSize {
		return fmt.Errorf("auth: cannot write password file %s: larger than %d bytes", path, MaxPasswordFileSize)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("auth: cannot write password file: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("auth: cannot write password file: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("auth: cannot write password file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("auth: cannot write password file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(tmp.Name())
		done = true
		return fmt.Errorf("auth: cannot write password file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		done = true
		return fmt.Errorf("auth: cannot write password file: %w", err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		// The rename is durable once the directory is; some file
		// systems refuse to sync a directory, and the file is in
		// place either way.
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
