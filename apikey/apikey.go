// Package apikey holds the keys that open the broker's admin HTTP API
// (/api/v1/): a file of named keys, each with a role, that the broker
// checks on every API request and `gannet apikey` edits.
//
// # The file
//
// One key a line:
//
//	name:role:sha256$SALT$DIGEST
//
// name is what logs call the key (1 to 128 bytes of letters, digits and
// . _ @ -), role is read (GET requests) or write (every request), SALT is
// 16 random bytes and DIGEST is SHA-256(SALT || key), both in unpadded
// base64url. Blank lines and lines starting with '#' are ignored. The key
// itself is never stored: `gannet apikey add` prints it once.
//
// # Why SHA-256 and not bcrypt
//
// A key is 32 random bytes (256 bits), made by Generate; nobody picks it.
// A slow hash such as bcrypt or PBKDF2 protects passwords, which are few
// enough to guess, from being guessed offline from a stolen file; a
// 256-bit random key cannot be guessed at any speed, so slowness buys
// nothing there. It would cost much: the broker checks the key on every
// request, and at bcrypt's 50-100 ms a request, anyone who reaches the
// port could keep a core busy with wrong keys. SHA-256 takes well under
// a microsecond. The salt, different for every key, makes two files that
// hold the same key look unrelated and rules out precomputed tables.
// Digests are compared in constant time (crypto/subtle), and every entry
// is hashed and compared on each check, so the time a check takes does
// not depend on which key, or how much of one, matched.
package apikey

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Role is what a key may do.
type Role string

// Roles.
const (
	// Read allows the API's GET requests (and /metrics with
	// --metrics-auth).
	Read Role = "read"
	// Write allows every request, reads included.
	Write Role = "write"
)

// ParseRole reads a role as the file and the command line spell it.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case Read, Write:
		return r, nil
	}
	return "", fmt.Errorf("apikey: role must be read or write, got %q", s)
}

// Allows reports whether a key of role r may do what need asks.
func (r Role) Allows(need Role) bool { return r == Write || r == need }

// Limits and formats.
const (
	// MaxFileSize bounds a key file.
	MaxFileSize = 1 << 20
	// MaxKeyLen bounds what Check hashes: longer is never a key.
	MaxKeyLen = 256
	// KeyPrefix starts every key Generate makes, so that secret
	// scanners and people can tell a Gannet key when they see one.
	KeyPrefix = "gnt_"

	saltLen = 16
	scheme  = "sha256"
)

// ErrNotFound is returned by Delete when the file has no key of that
// name.
var ErrNotFound = errors.New("apikey: no key of that name")

// entry is one key of a file.
type entry struct {
	name   string
	role   Role
	salt   []byte
	digest [sha256.Size]byte
}

// File is a loaded key file. Check and Reload are safe for concurrent
// use; Check never waits for a Reload.
type File struct {
	path     string
	keys     atomic.Pointer[[]entry]
	reloadMu sync.Mutex // serialises Reload, so that the newest read wins
}

// Load reads and parses the key file at path. The file is read whole or
// not at all: a malformed line, an unknown role or a name used twice is
// an error naming path:line (never the digest).
func Load(path string) (*File, error) {
	keys, err := readFile(path)
	if err != nil {
		return nil, err
	}
	f := &File{path: path}
	f.keys.Store(&keys)
	return f, nil
}

// Path returns the path the file was loaded from.
func (f *File) Path() string { return f.path }

// Len returns the number of keys in force.
func (f *File) Len() int { return len(*f.keys.Load()) }

// Reload reads the file again and puts its keys in force; when it cannot
// be read or does not parse, the old keys stay in force and the error is
// returned.
func (f *File) Reload() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	keys, err := readFile(f.path)
	if err != nil {
		return err
	}
	f.keys.Store(&keys)
	return nil
}

// Check returns the name and role of key, or ok false when no entry of
// the file holds it. It hashes key once per entry (see the package
// comment for why that is cheap and constant in time).
func (f *File) Check(key string) (name string, role Role, ok bool) {
	if key == "" || len(key) > MaxKeyLen {
		return "", "", false
	}
	found := -1
	keys := *f.keys.Load()
	h := sha256.New()
	var sum [sha256.Size]byte
	for i := range keys {
		e := &keys[i]
		h.Reset()
		h.Write(e.salt)
		_, _ = io.WriteString(h, key)
		h.Sum(sum[:0])
		if subtle.ConstantTimeCompare(sum[:], e.digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", "", false
	}
	return keys[found].name, keys[found].role, true
}

// Generate makes a new key: KeyPrefix and 32 random bytes in unpadded
// base64url.
func Generate() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("apikey: cannot make a key: %w", err)
	}
	return KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// hash returns the file's form of key, with a new salt.
func hash(key string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("apikey: cannot make a salt: %w", err)
	}
	h := sha256.New()
	h.Write(salt)
	_, _ = io.WriteString(h, key)
	enc := base64.RawURLEncoding
	return scheme + "$" + enc.EncodeToString(salt) + "$" + enc.EncodeToString(h.Sum(nil)), nil
}

// parseHash reads the third field of a line.
func parseHash(s string) (salt []byte, digest [sha256.Size]byte, err error) {
	parts := strings.Split(s, "$")
	if len(parts) != 3 || parts[0] != scheme {
		return nil, digest, errors.New("hash is not sha256$SALT$DIGEST")
	}
	enc := base64.RawURLEncoding
	salt, err = enc.DecodeString(parts[1])
	if err != nil || len(salt) < 8 {
		return nil, digest, errors.New("hash has a malformed salt")
	}
	d, err := enc.DecodeString(parts[2])
	if err != nil || len(d) != sha256.Size {
		return nil, digest, errors.New("hash has a malformed digest")
	}
	copy(digest[:], d)
	return salt, digest, nil
}

// CheckName returns why name cannot name a key, or nil.
func CheckName(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("apikey: a key name is 1 to 128 bytes, got %d", len(name))
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._@-", r)) {
			return fmt.Errorf("apikey: a key name holds letters, digits and . _ @ - only, got %q", name)
		}
	}
	return nil
}

// fileError is an error about one line of a key file; it never holds the
// line's hash.
type fileError struct {
	path   string
	line   int
	reason string
}

func (e *fileError) Error() string {
	return fmt.Sprintf("apikey: cannot load key file: %s:%d: %s", e.path, e.line, e.reason)
}

// line is one line of a key file: raw is the line as it is (terminator
// included), name empty for a blank line or a comment.
type line struct {
	raw    []byte
	name   string
	role   Role
	encode string
}

// parse splits data into lines and checks each; name is used in errors.
func parse(name string, data []byte) ([]line, error) {
	var out []line
	seen := make(map[string]int)
	for n := 1; len(data) > 0; n++ {
		end := bytes.IndexByte(data, '\n') + 1
		if end == 0 {
			end = len(data)
		}
		raw := data[:end]
		data = data[end:]
		text := strings.TrimSpace(string(raw))
		if text == "" || text[0] == '#' {
			out = append(out, line{raw: raw})
			continue
		}
		fields := strings.Split(text, ":")
		if len(fields) != 3 {
			return nil, &fileError{name, n, "want name:role:hash"}
		}
		if err := CheckName(fields[0]); err != nil {
			return nil, &fileError{name, n, strings.TrimPrefix(err.Error(), "apikey: ")}
		}
		if first, dup := seen[fields[0]]; dup {
			return nil, &fileError{name, n, fmt.Sprintf("key %q already named on line %d", fields[0], first)}
		}
		seen[fields[0]] = n
		role, err := ParseRole(fields[1])
		if err != nil {
			return nil, &fileError{name, n, strings.TrimPrefix(err.Error(), "apikey: ")}
		}
		if _, _, err := parseHash(fields[2]); err != nil {
			return nil, &fileError{name, n, err.Error()}
		}
		out = append(out, line{raw: raw, name: fields[0], role: role, encode: fields[2]})
	}
	return out, nil
}

// readBounded reads path whole, refusing anything but a regular file of
// at most MaxFileSize bytes. It returns the file's permission bits.
func readBounded(path string) ([]byte, os.FileMode, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, 0, fmt.Errorf("%s: larger than %d bytes", path, MaxFileSize)
	}
	return data, st.Mode().Perm(), nil
}

func readFile(path string) ([]entry, error) {
	data, _, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("apikey: cannot load key file: %w", err)
	}
	lines, err := parse(path, data)
	if err != nil {
		return nil, err
	}
	keys := make([]entry, 0, len(lines))
	for _, l := range lines {
		if l.name == "" {
			continue
		}
		salt, digest, _ := parseHash(l.encode) // checked by parse
		keys = append(keys, entry{name: l.name, role: l.role, salt: salt, digest: digest})
	}
	return keys, nil
}

// Entry is a key as List shows it: its name and role.
type Entry struct {
	Name string
	Role Role
}

// List returns the keys of the file at path, in file order.
func List(path string) ([]Entry, error) {
	keys, err := readFile(path)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(keys))
	for i, k := range keys {
		out[i] = Entry{Name: k.name, Role: k.role}
	}
	return out, nil
}

// Editing a key file.
//
// Add and Delete change one key and keep every other line (comments,
// blank lines, order) as it was, and refuse a file Load would refuse.
// They write a new file beside the old one, fsync it and rename it over
// the old one, so that a broker reloading it sees the old file or the
// new one, never a part; the new file keeps the old one's permission
// bits (0600 for a new file) and the rename follows a symbolic link to
// its target. Two editors working on one file at the same time may lose
// one's change.

// Add makes a key named name with role, adds it to the file at path
// (created when missing) and returns the key, which is stored nowhere:
// the caller shows it once. A key of that name already in the file is an
// error; delete it first.
func Add(path, name string, role Role) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", err
	}
	target, data, mode, err := readForEdit(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	lines, err := parse(path, data)
	if err != nil {
		return "", err
	}
	for _, l := range lines {
		if l.name == name {
			return "", fmt.Errorf("apikey: %s already has a key named %q: delete it first", path, name)
		}
	}
	key, err := Generate()
	if err != nil {
		return "", err
	}
	h, err := hash(key)
	if err != nil {
		return "", err
	}
	out := data
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	out = append(out, name+":"+string(role)+":"+h+"\n"...)
	if err := writeAtomic(target, out, mode); err != nil {
		return "", err
	}
	return key, nil
}

// Delete removes the key named name from the file at path. The error
// wraps ErrNotFound when the file has no such key, fs.ErrNotExist when
// there is no file.
func Delete(path, name string) error {
	target, data, mode, err := readForEdit(path)
	if err != nil {
		return err
	}
	lines, err := parse(path, data)
	if err != nil {
		return err
	}
	var out []byte
	found := false
	for _, l := range lines {
		if l.name == name && name != "" {
			found = true
			continue
		}
		out = append(out, l.raw...)
	}
	if !found {
		return fmt.Errorf("apikey: cannot delete %q from %s: %w", name, path, ErrNotFound)
	}
	return writeAtomic(target, out, mode)
}

// readForEdit resolves symbolic links in path and reads the file there;
// with no file it returns the path to create, mode 0600 and an error
// wrapping fs.ErrNotExist.
func readForEdit(path string) (target string, data []byte, mode os.FileMode, err error) {
	target, err = filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return path, nil, 0o600, fmt.Errorf("apikey: %s: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return "", nil, 0, fmt.Errorf("apikey: cannot edit key file: %w", err)
	}
	data, mode, err = readBounded(target)
	if err != nil {
		return "", nil, 0, fmt.Errorf("apikey: cannot edit key file: %w", err)
	}
	return target, data, mode, nil
}

// writeAtomic replaces path with data: a temporary file beside it,
// fsynced, renamed over it, and the directory fsynced.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("apikey: cannot write key file: %w", err)
	}
	name := tmp.Name()
	fail := func(err error) error {
		_ = tmp.Close()
		_ = os.Remove(name)
		return fmt.Errorf("apikey: cannot write key file %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("apikey: cannot write key file %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("apikey: cannot write key file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
