package auth

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Hashes for the file tests: cheap to check.
var (
	hashHunter2 = knownHashes[2].encoded // "hunter2", $6$
	hashPw2     = knownHashes[1].encoded // "pw2", $6$
	hashSecret7 = knownHashes[0].encoded // "secret", $7$
)

func writePasswdFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func passwdVerdict(t *testing.T, f *PasswordFile, user, password string) Verdict {
	t.Helper()
	a, err := f.Authenticate(context.Background(), &Request{
		Username: user, HasUsername: true,
		Password: []byte(password), HasPassword: true,
	})
	if err != nil {
		t.Fatalf("Authenticate(%q): %v", user, err)
	}
	return a.Verdict
}

// A file made by mosquitto_passwd itself, in both of its formats, is read
// and its passwords checked.
func TestPasswordFileFromMosquittoPasswd(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed (Debian package mosquitto): cannot check files it writes")
	}
	path := filepath.Join(t.TempDir(), "passwd")
	run := func(args ...string) error {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("mosquitto_passwd %q: %v: %s", args, err, out)
		}
		return nil
	}
	if err := run("-b", "-c", path, "alice", "wonder land"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"alice": "wonder land"}
	if err := run("-H", "sha512", "-b", path, "bob", "builder"); err != nil {
		t.Logf("no $6$ check: this mosquitto_passwd has no -H sha512: %v", err)
	} else {
		want["bob"] = "builder"
	}
	if err := run("-b", path, "carol", "ünïcode pässwörd"); err != nil {
		t.Fatal(err)
	}
	want["carol"] = "ünïcode pässwörd"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "alice:$7$") {
		t.Fatalf("mosquitto_passwd wrote no $7$ hash for alice:\n%s", data)
	}

	f, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != len(want) {
		t.Fatalf("Len() = %d, want %d", f.Len(), len(want))
	}
	for user, pw := range want {
		if v := passwdVerdict(t, f, user, pw); v != Allow {
			t.Errorf("%s, right password: %v, want allow", user, v)
		}
		if v := passwdVerdict(t, f, user, pw+" "); v != Deny {
			t.Errorf("%s, wrong password: %v, want deny", user, v)
		}
	}
}

func TestPasswordFileAuthenticate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writePasswdFile(t, path, "alice:"+hashHunter2+"\nbob:"+hashSecret7+"\n")
	f, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Name() != "password-file" || f.Path() != path {
		t.Fatalf("Name() %q, Path() %q", f.Name(), f.Path())
	}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		r    Request
		want Verdict
	}{
		{"right", Request{Username: "alice", HasUsername: true, Password: []byte("hunter2"), HasPassword: true}, Allow},
		{"right $7$", Request{Username: "bob", HasUsername: true, Password: []byte("secret"), HasPassword: true}, Allow},
		{"wrong", Request{Username: "alice", HasUsername: true, Password: []byte("hunter3"), HasPassword: true}, Deny},
		{"empty password", Request{Username: "alice", HasUsername: true, Password: []byte{}, HasPassword: true}, Deny},
		{"no password", Request{Username: "alice", HasUsername: true}, Deny},
		{"no password flag", Request{Username: "alice", HasUsername: true, Password: []byte("hunter2")}, Deny},
		{"another's password", Request{Username: "bob", HasUsername: true, Password: []byte("hunter2"), HasPassword: true}, Deny},
		{"unknown user", Request{Username: "mallory", HasUsername: true, Password: []byte("hunter2"), HasPassword: true}, Ignore},
		{"user name case", Request{Username: "Alice", HasUsername: true, Password: []byte("hunter2"), HasPassword: true}, Ignore},
		{"no user name", Request{Password: []byte("hunter2"), HasPassword: true}, Ignore},
		{"empty user name", Request{HasUsername: true, Password: []byte("hunter2"), HasPassword: true}, Ignore},
	} {
		a, err := f.Authenticate(ctx, &c.r)
		if err != nil || a.Verdict != c.want {
			t.Errorf("%s: got %v, %v; want %v", c.name, a.Verdict, err, c.want)
		}
		if a.Superuser || a.Username != "" || a.HasRules {
			t.Errorf("%s: answer carries more than a verdict: %+v", c.name, a)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = f.Authenticate(cctx, &Request{Username: "alice", HasUsername: true, Password: []byte("hunter2"), HasPassword: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("done context: got %v, want context.Canceled", err)
	}
}

// Comments, blank lines, blanks around fields, CRLF line ends, a byte
// order mark and a last line without a newline are all read as Mosquitto
// reads them.
func TestPasswordFileLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writePasswdFile(t, path, "\uFEFF# users\r\n\r\n   \n\t\nalice:"+hashHunter2+"\r\n#bob:"+hashPw2+"\n  carol smith \t:\t "+hashPw2+"  \ndave:"+hashSecret7)
	f, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 3 {
		t.Fatalf("Len() = %d, want 3", f.Len())
	}
	for _, c := range []struct{ user, pw string }{{"alice", "hunter2"}, {"carol smith", "pw2"}, {"dave", "secret"}} {
		if v := passwdVerdict(t, f, c.user, c.pw); v != Allow {
			t.Errorf("%q: %v, want allow", c.user, v)
		}
	}
	if v := passwdVerdict(t, f, "bob", "pw2"); v != Ignore {
		t.Errorf("commented-out bob: %v, want ignore", v)
	}
}

func TestPasswordFileMalformed(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("u", MaxPasswordFileLine)
	for _, c := range []struct {
		name, content string
		line          int
		reason        string
	}{
		{"no colon", "alice:" + hashHunter2 + "\nbob " + hashPw2 + "\n", 2, "no colon"},
		{"empty user", "\n:" + hashPw2 + "\n", 2, "empty user name"},
		{"blank user", "  \t:" + hashPw2 + "\n", 1, "empty user name"},
		{"empty hash", "alice:\n", 1, "empty hash"},
		{"plain text password", "# c\nalice:" + hashHunter2 + "\nbob:SECRETpassword\n", 3, "unknown password hash format"},
		{"malformed hash", "alice:$7$0$" + strings.TrimPrefix(hashSecret7, "$7$101$") + "\n", 1, "iterations not a number in [1, 500000]"},
		{"over-cost hash", "alice:$7$999999$" + strings.TrimPrefix(hashSecret7, "$7$101$") + "\n", 1, "iterations"},
		{"duplicate", "alice:" + hashHunter2 + "\n#\nalice:" + hashPw2 + "\n", 3, "user already named on line 1"},
		{"control character", "al\x01ice:" + hashPw2 + "\n", 1, "control character"},
		{"NUL", "al\x00ice:" + hashPw2 + "\n", 1, "control character"},
		{"DEL", "al\x7fice:" + hashPw2 + "\n", 1, "control character"},
		{"C1 control", "al\u0085ice:" + hashPw2 + "\n", 1, "control character"},
		{"not UTF-8", "al\xffice:" + hashPw2 + "\n", 1, "not UTF-8"},
		{"long line", "alice:" + hashPw2 + "\n" + long + ":" + hashPw2 + "\n", 2, "line longer than 65536 bytes"},
		{"lone CR", "alice:" + hashPw2 + "\rbob:" + hashHunter2 + "\n", 1, "not base64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
			writePasswdFile(t, path, c.content)
			_, err := LoadPasswordFile(path)
			if err == nil {
				t.Fatal("loaded")
			}
			prefix := fmt.Sprintf("auth: cannot load password file: %s:%d: ", path, c.line)
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("got %q, want %q then %q", err, prefix, c.reason)
			}
			for _, secret := range []string{"SECRETpassword", hashPw2[4:20], hashHunter2[4:20], hashSecret7[8:24]} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error repeats a hash: %v", err)
				}
			}
		})
	}
}

func TestPasswordFileNotAFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadPasswordFile(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: got %v, want fs.ErrNotExist", err)
	}
	if _, err := LoadPasswordFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: got %v", err)
	}
	big := filepath.Join(dir, "big")
	fh, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(MaxPasswordFileSize + 1); err != nil { // sparse
		t.Fatal(err)
	}
	_ = fh.Close()
	if _, err := LoadPasswordFile(big); err == nil || !strings.Contains(err.Error(), "larger than 67108864 bytes") {
		t.Errorf("large file: got %v", err)
	}
}

// A reload that fails leaves the old users in force; one that succeeds
// replaces them.
func TestPasswordFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writePasswdFile(t, path, "alice:"+hashHunter2+"\n")
	f, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}

	writePasswdFile(t, path, "alice:"+hashPw2+"\nbob:plaintext\n")
	err = f.Reload()
	if err == nil || !strings.Contains(err.Error(), path+":2: unknown password hash format") {
		t.Fatalf("bad reload: got %v", err)
	}
	if v := passwdVerdict(t, f, "alice", "hunter2"); v != Allow {
		t.Fatalf("after a failed reload, old password: %v, want allow", v)
	}
	if v := passwdVerdict(t, f, "alice", "pw2"); v != Deny {
		t.Fatalf("after a failed reload, new password: %v, want deny", v)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reload of a removed file: got %v", err)
	}
	if v := passwdVerdict(t, f, "alice", "hunter2"); v != Allow {
		t.Fatalf("after the file went, old password: %v, want allow", v)
	}

	writePasswdFile(t, path, "bob:"+hashPw2+"\n")
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if v := passwdVerdict(t, f, "bob", "pw2"); v != Allow {
		t.Fatalf("after reload, new user: %v, want allow", v)
	}
	if v := passwdVerdict(t, f, "alice", "hunter2"); v != Ignore {
		t.Fatalf("after reload, removed user: %v, want ignore", v)
	}
	if f.Len() != 1 {
		t.Fatalf("Len() = %d, want 1", f.Len())
	}
}

// Authenticate runs while Reload swaps between two contents: alice is in
// both with one password, bob only in the second. Every answer must match
// one of the two contents, never a mix or an error.
func TestPasswordFileReloadRace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	one := "alice:" + hashHunter2 + "\n"
	two := "# two\nalice:" + hashHunter2 + "\nbob:" + hashPw2 + "\n"
	writePasswdFile(t, path, one)
	f, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const reloads = 100
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a, err := f.Authenticate(context.Background(), &Request{Username: "alice", HasUsername: true, Password: []byte("hunter2"), HasPassword: true})
				if err != nil || a.Verdict != Allow {
					errs <- fmt.Errorf("alice: %v, %v", a.Verdict, err)
					return
				}
				b, err := f.Authenticate(context.Background(), &Request{Username: "bob", HasUsername: true, Password: []byte("pw2"), HasPassword: true})
				if err != nil || (b.Verdict != Allow && b.Verdict != Ignore) {
					errs <- fmt.Errorf("bob: %v, %v", b.Verdict, err)
					return
				}
				_ = f.Len()
			}
		}()
	}
	// Two reloaders, so that Reload also races with itself.
	var rw sync.WaitGroup
	for r := 0; r < 2; r++ {
		rw.Add(1)
		go func() {
			defer rw.Done()
			for i := 0; i < reloads; i++ {
				if err := f.Reload(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < reloads; i++ {
		content := one
		if i%2 == 0 {
			content = two
		}
		// Replace atomically, as an editor should, so that a reload
		// never reads a half-written file.
		if err := writeFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rw.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The last content written was "one" (i = reloads-1 is odd).
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if v := passwdVerdict(t, f, "bob", "pw2"); v != Ignore {
		t.Fatalf("after the last reload bob: %v, want ignore", v)
	}
}

// Editing keeps every line it does not change, byte for byte.
func TestPasswordFileEdit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	head := "# staff\r\nalice:" + hashHunter2 + "\r\n\n# services\n"
	writePasswdFile(t, path, head+"svc:"+hashPw2)
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}

	// Change an existing user in place (keeping its CRLF).
	if err := SetPassword(path, "alice", hashSecret7); err != nil {
		t.Fatal(err)
	}
	want := "# staff\r\nalice:" + hashSecret7 + "\r\n\n# services\nsvc:" + hashPw2
	checkPasswdFile(t, path, want, 0o640)

	// Add a user at the end (the last line gains its newline).
	if err := SetPassword(path, "bob", hashHunter2); err != nil {
		t.Fatal(err)
	}
	want += "\nbob:" + hashHunter2 + "\n"
	checkPasswdFile(t, path, want, 0o640)

	f, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if passwdVerdict(t, f, "alice", "secret") != Allow || passwdVerdict(t, f, "bob", "hunter2") != Allow || passwdVerdict(t, f, "svc", "pw2") != Allow {
		t.Fatal("edited file does not authenticate its users")
	}

	// Delete one.
	if err := DeleteUser(path, "svc"); err != nil {
		t.Fatal(err)
	}
	want = "# staff\r\nalice:" + hashSecret7 + "\r\n\n# services\nbob:" + hashHunter2 + "\n"
	checkPasswdFile(t, path, want, 0o640)

	if err := DeleteUser(path, "svc"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("deleting a missing user: got %v", err)
	}
	if err := DeleteUser(path, "# staff"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("deleting a comment: got %v", err)
	}
	checkPasswdFile(t, path, want, 0o640)

	// Create replaces the file, keeping its mode.
	if err := CreatePasswordFile(path, "carol", hashPw2); err != nil {
		t.Fatal(err)
	}
	checkPasswdFile(t, path, "carol:"+hashPw2+"\n", 0o640)

	// A new file is 0600.
	fresh := filepath.Join(dir, "fresh")
	if err := CreatePasswordFile(fresh, "dave", hashPw2); err != nil {
		t.Fatal(err)
	}
	checkPasswdFile(t, fresh, "dave:"+hashPw2+"\n", 0o600)

	// No temporary file is left behind.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		t.Fatalf("directory holds %d entries, want 2", len(ents))
	}
}

func checkPasswdFile(t *testing.T, path, want string, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("file holds\n%q\nwant\n%q", got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != mode {
		t.Fatalf("mode %v, want %v", st.Mode().Perm(), mode)
	}
}

func TestPasswordFileEditRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")

	if err := SetPassword(path, "alice", hashPw2); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("set in a missing file: got %v", err)
	}
	if err := DeleteUser(path, "alice"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("delete from a missing file: got %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a failed edit created the file")
	}

	bad := "alice:" + hashPw2 + "\nbob\n"
	writePasswdFile(t, path, bad)
	for name, err := range map[string]error{
		"set":    SetPassword(path, "carol", hashPw2),
		"delete": DeleteUser(path, "alice"),
	} {
		if err == nil || !strings.Contains(err.Error(), path+":2: no colon") {
			t.Errorf("%s on a malformed file: got %v", name, err)
		}
	}
	checkPasswdFile(t, path, bad, 0o600)

	writePasswdFile(t, path, "alice:"+hashPw2+"\n")
	for _, c := range []struct{ user, hash, want string }{
		{"a:b", hashPw2, "colon"},
		{"", hashPw2, "empty user name"},
		{"#x", hashPw2, "starts with #"},
		{" x", hashPw2, "blank"},
		{"x\n", hashPw2, "control character"},
		{"x", "plaintext", "unknown password hash format"},
		{"x", "", "unknown password hash format"},
	} {
		err := SetPassword(path, c.user, c.hash)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SetPassword(%q, %q): got %v, want %q", c.user, c.hash, err, c.want)
		}
		if err := CreatePasswordFile(path, c.user, c.hash); err == nil {
			t.Errorf("CreatePasswordFile(%q, %q) accepted", c.user, c.hash)
		}
	}
	checkPasswdFile(t, path, "alice:"+hashPw2+"\n", 0o600)
}

// An edit through a symbolic link changes the file it points to and keeps
// the link.
func TestPasswordFileEditSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	writePasswdFile(t, target, "alice:"+hashPw2+"\n")
	if err := os.Symlink("real", link); err != nil {
		t.Skipf("no symbolic links here: %v", err)
	}
	if err := SetPassword(link, "bob", hashHunter2); err != nil {
		t.Fatal(err)
	}
	checkPasswdFile(t, target, "alice:"+hashPw2+"\nbob:"+hashHunter2+"\n", 0o600)
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v", err)
	}
}

// FuzzParsePasswordFile feeds arbitrary files: the parser must not panic;
// what it accepts it must accept again after an edit that sets and then
// deletes a user (the edit keeps the other lines), and its errors name a
// line of the file and never repeat a hash.
func FuzzParsePasswordFile(f *testing.F) {
	f.Add([]byte("alice:" + hashHunter2 + "\n# c\n\nbob:" + hashPw2))
	f.Add([]byte("\uFEFFalice:" + hashHunter2 + "\r\n"))
	f.Add([]byte("alice:" + hashHunter2 + "\nalice:" + hashPw2 + "\n"))
	f.Add([]byte(" a b :" + hashPw2 + "\r"))
	f.Add([]byte("a:$2a$04$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n"))
	f.Add([]byte("a:$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\n"))
	f.Add([]byte(":\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		users, err := parsePasswordFile("fuzz", data)
		if err != nil {
			var pe *passwdError
			if !errors.As(err, &pe) {
				t.Fatalf("error without a line: %v", err)
			}
			lines := strings.Count(string(data), "\n") + 1
			if pe.line < 1 || pe.line > lines {
				t.Fatalf("error names line %d of %d", pe.line, lines)
			}
			if !strings.HasPrefix(err.Error(), fmt.Sprintf("auth: cannot load password file: fuzz:%d: ", pe.line)) {
				t.Fatalf("error %q does not start with the file and line", err)
			}
			if strings.Contains(err.Error(), hashPw2[4:20]) || strings.Contains(err.Error(), hashHunter2[4:20]) {
				t.Fatalf("error repeats a hash: %v", err)
			}
			return
		}
		for user, h := range users {
			if checkUserName(user) != nil {
				t.Fatalf("accepted user name %q", user)
			}
			if h == nil {
				t.Fatalf("user %q without a hash", user)
			}
		}
		// An edit round trip in memory: add a user, then remove it.
		path := filepath.Join(t.TempDir(), "passwd")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		const newUser = "fuzz-new-user"
		if _, taken := users[newUser]; taken {
			return
		}
		if err := SetPassword(path, newUser, hashPw2); err != nil {
			if len(data)+len(newUser)+len(hashPw2)+2 > MaxPasswordFileSize {
				return
			}
			t.Fatalf("SetPassword on an accepted file: %v", err)
		}
		edited, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parsePasswordFile("edited", edited)
		if err != nil {
			t.Fatalf("edited file does not parse: %v", err)
		}
		if len(again) != len(users)+1 || again[newUser] == nil {
			t.Fatalf("edited file has %d users, want %d with %q", len(again), len(users)+1, newUser)
		}
		if err := DeleteUser(path, newUser); err != nil {
			t.Fatal(err)
		}
		back, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// Deleting the added line gives the file back, but for the
		// newline a last line without one gained.
		if string(back) != string(data) && string(back) != string(data)+"\n" {
			t.Fatalf("set then delete changed the file:\n%q\n%q", data, back)
		}
	})
}
