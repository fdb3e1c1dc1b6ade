package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gannetmq/gannet/auth"
	"github.com/gannetmq/gannet/codec"
)

// passwdRun runs `gannet passwd args...` with stdin and checks that
// nothing it printed holds one of the secrets.
func passwdRun(t *testing.T, secrets []string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runPasswd(args, strings.NewReader(stdin), &out, &errb)
	for _, s := range secrets {
		if s != "" && (strings.Contains(out.String(), s) || strings.Contains(errb.String(), s)) {
			t.Fatalf("gannet passwd %q printed a secret:\nstdout: %s\nstderr: %s", args, out.String(), errb.String())
		}
	}
	return code, out.String(), errb.String()
}

// fileHashes returns the hashes in a password file, as secrets that output
// must not hold.
func fileHashes(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var hs []string
	for _, l := range strings.Split(string(data), "\n") {
		if _, h, ok := strings.Cut(l, ":"); ok {
			hs = append(hs, h)
		}
	}
	return hs
}

func verdict(t *testing.T, path, user, password string) auth.Verdict {
	t.Helper()
	f, err := auth.LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Authenticate(context.Background(), &auth.Request{
		Username: user, HasUsername: true, Password: []byte(password), HasPassword: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a.Verdict
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestPasswdEndToEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	secrets := []string{"pw-alice", "pw-bob", "pw-alice-2", "mismatch-1", "mismatch-2"}
	run := func(stdin string, args ...string) (int, string, string) {
		t.Helper()
		return passwdRun(t, append(secrets, fileHashes(t, path)...), stdin, args...)
	}

	// Without -c the file must exist.
	if code, _, stderr := run("", "-b", path, "alice", "pw-alice"); code != 1 || !strings.Contains(stderr, "does not exist (-c creates it)") {
		t.Fatalf("missing file: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("the file was created without -c")
	}

	// Create.
	if code, stdout, stderr := run("", "-c", "-b", path, "alice", "pw-alice"); code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("create: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("new file mode %v, want 0600", m)
	}
	if data, _ := os.ReadFile(path); !strings.HasPrefix(string(data), "alice:$7$101$") {
		t.Fatal("default hash is not sha512-pbkdf2 with 101 iterations")
	}
	if v := verdict(t, path, "alice", "pw-alice"); v != auth.Allow {
		t.Fatalf("alice after create: %v", v)
	}

	// A second user, password typed twice on standard input.
	if code, _, stderr := run("pw-bob\npw-bob\n", path, "bob"); code != 0 || stderr != "Password: Reenter password: " {
		t.Fatalf("add bob: exit %d, stderr %q", code, stderr)
	}
	if v := verdict(t, path, "bob", "pw-bob"); v != auth.Allow {
		t.Fatalf("bob: %v", v)
	}

	// Change alice's password, keeping the file's mode.
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run("", "-b", path, "alice", "pw-alice-2"); code != 0 {
		t.Fatalf("change: exit %d, stderr %q", code, stderr)
	}
	if m := fileMode(t, path); m != 0o640 {
		t.Fatalf("mode after change %v, want 0640 kept", m)
	}
	if verdict(t, path, "alice", "pw-alice-2") != auth.Allow || verdict(t, path, "alice", "pw-alice") != auth.Deny || verdict(t, path, "bob", "pw-bob") != auth.Allow {
		t.Fatal("after the change: want alice's new password only, and bob untouched")
	}
	if data, _ := os.ReadFile(path); !strings.HasPrefix(string(data), "alice:") {
		t.Fatal("alice's line moved")
	}

	// Passwords that differ change nothing.
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run("mismatch-1\nmismatch-2\n", path, "carol"); code != 1 || !strings.Contains(stderr, "passwords do not match") {
		t.Fatalf("mismatch: exit %d, stderr %q", code, stderr)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a refused change wrote the file")
	}

	// Delete.
	if code, _, stderr := run("", "-D", path, "bob"); code != 0 {
		t.Fatalf("delete: exit %d, stderr %q", code, stderr)
	}
	if verdict(t, path, "bob", "pw-bob") != auth.Ignore || verdict(t, path, "alice", "pw-alice-2") != auth.Allow {
		t.Fatal("after delete: want bob gone and alice kept")
	}
	if code, _, stderr := run("", "-D", path, "bob"); code != 1 || !strings.Contains(stderr, `user "bob" not in`) {
		t.Fatalf("delete again: exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := run("", "-D", path+".missing", "bob"); code != 1 {
		t.Fatalf("delete from a missing file: exit %d", code)
	}

	// -c replaces the file.
	if code, _, _ := run("", "-c", "-b", path, "dave", "pw-bob"); code != 0 {
		t.Fatalf("recreate: exit %d", code)
	}
	if verdict(t, path, "alice", "pw-alice-2") != auth.Ignore || verdict(t, path, "dave", "pw-bob") != auth.Allow {
		t.Fatal("-c kept the old users")
	}
}

func TestPasswdAlgorithms(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for i, c := range []struct {
		args   []string
		prefix string
	}{
		{[]string{"-H", "sha512-pbkdf2", "-I", "1000"}, "$7$1000$"},
		{[]string{"-H", "sha512"}, "$6$"},
		{[]string{"-H", "bcrypt", "-I", "4"}, "$2a$04$"},
		{[]string{"-H", "argon2id", "-I", "1"}, "$argon2id$v=19$m=65536,t=1,p=4$"},
	} {
		user := fmt.Sprintf("user%d", i)
		args := append(append([]string{"-b"}, c.args...), path, user, "pw-"+user)
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if code, _, stderr := passwdRun(t, []string{"pw-" + user}, "", args...); code != 0 {
			t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "\n"+user+":"+c.prefix) && !strings.HasPrefix(string(data), user+":"+c.prefix) {
			t.Fatalf("%q: no line %s:%s... in the file", args, user, c.prefix)
		}
		if verdict(t, path, user, "pw-"+user) != auth.Allow || verdict(t, path, user, "pw-"+user+"!") != auth.Deny {
			t.Fatalf("%q: the hash does not tell right from wrong", args)
		}
	}
}

func TestPasswdUsageErrors(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "passwd")
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "want FILE USER"},
		{[]string{f}, "want FILE USER"},
		{[]string{f, "u", "pw", "x"}, "want FILE USER"},
		{[]string{f, "u", "pw"}, "needs -b"},
		{[]string{"-b", f, "u"}, "-b wants FILE USER PASSWORD"},
		{[]string{"-c", "-D", f, "u"}, "-c and -D cannot be used together"},
		{[]string{"-D", "-b", f, "u", "pw"}, "-D takes no -b, -H or -I"},
		{[]string{"-D", "-H", "sha512", f, "u"}, "-D takes no -b, -H or -I"},
		{[]string{"-D", f}, "-D wants FILE USER"},
		{[]string{"-H", "md5", "-c", "-b", f, "u", "pw"}, `-H: unknown hash algorithm "md5"`},
		{[]string{"-H", "bcrypt", "-I", "3", "-c", "-b", f, "u", "pw"}, "-I: bcrypt cost must be in [4, 13]"},
		{[]string{"-H", "sha512", "-I", "3", "-c", "-b", f, "u", "pw"}, "-I: sha512 takes no iteration count"},
		{[]string{"-I", "many", "-c", "-b", f, "u", "pw"}, "invalid value"},
		{[]string{"-x", f, "u"}, "flag provided but not defined: -x"},
	} {
		code, stdout, stderr := passwdRun(t, []string{"pw"}, "", c.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.want) || !strings.Contains(stderr, "usage: gannet passwd") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q with the usage", c.args, code, stdout, stderr, c.want)
		}
	}
	if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a usage error created the file")
	}
	code, stdout, _ := passwdRun(t, nil, "", "-h")
	if code != 0 || !strings.HasPrefix(stdout, "usage: gannet passwd") {
		t.Fatalf("-h: exit %d, stdout %q", code, stdout)
	}
}

func TestPasswdRefusesBadPasswords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, c := range []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"empty -b", "", []string{"-c", "-b", path, "u", ""}, "empty password"},
		{"empty typed", "\n\n", []string{"-c", path, "u"}, "empty password"},
		{"no input", "", []string{"-c", path, "u"}, "no password on standard input"},
		{"one line only", "pw\n", []string{"-c", path, "u"}, "no password on standard input"},
		{"too long", strings.Repeat("p", 70<<10) + "\n", []string{"-c", path, "u"}, "longer than 65536 bytes"},
		{"bcrypt over 72 bytes", "", []string{"-c", "-H", "bcrypt", "-I", "4", "-b", path, "u", strings.Repeat("p", 73)}, "at most 72 bytes"},
		{"colon in user", "", []string{"-c", "-b", path, "a:b", "pw"}, "user name holds a colon"},
	} {
		code, _, stderr := passwdRun(t, nil, c.stdin, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", c.name, code, stderr, c.want)
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: the file was written", c.name)
		}
	}
	// A last line without a newline and CRLF input are read.
	for _, stdin := range []string{"pw\r\npw", "pw\npw\n"} {
		if code, _, stderr := passwdRun(t, nil, stdin, "-c", path, "u"); code != 0 {
			t.Fatalf("stdin %q: exit %d, stderr %q", stdin, code, stderr)
		}
		if verdict(t, path, "u", "pw") != auth.Allow {
			t.Fatalf("stdin %q: password not \"pw\"", stdin)
		}
	}
}

// Mosquitto reads what `gannet passwd` writes: its broker lets users in
// with the right password and refuses a wrong one, and mosquitto_passwd
// edits the file.
func TestPasswdFileWorksWithMosquitto(t *testing.T) {
	mosq, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Skip("mosquitto not installed (Debian package mosquitto): cannot check it reads our files")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	for _, args := range [][]string{
		{"-c", "-b", path, "alice", "pw alice"},
		{"-H", "sha512", "-b", path, "bob", "pw-bob"},
	} {
		if code, _, stderr := passwdRun(t, nil, "", args...); code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, stderr)
		}
	}
	if mp, err := exec.LookPath("mosquitto_passwd"); err == nil {
		if out, err := exec.Command(mp, "-b", path, "carol", "pw-carol").CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd cannot add to our file: %v: %s", err, out)
		}
		if v := verdict(t, path, "carol", "pw-carol"); v != auth.Allow {
			t.Fatalf("carol, added by mosquitto_passwd: %v", v)
		}
		if v := verdict(t, path, "alice", "pw alice"); v != auth.Allow {
			t.Fatalf("alice after mosquitto_passwd rewrote the file: %v", v)
		}
	}

	addr := startMosquitto(t, mosq, dir, path)
	for _, c := range []struct {
		user, password string
		ok             bool
	}{
		{"alice", "pw alice", true},
		{"bob", "pw-bob", true},
		{"alice", "pw-bob", false},
		{"bob", "pw bob", false},
	} {
		code := connackCode(t, addr, c.user, c.password)
		if (code == 0) != c.ok {
			t.Errorf("mosquitto, %s with %q: CONNACK %d, want accepted %v", c.user, c.password, code, c.ok)
		}
	}
}

// startMosquitto runs a Mosquitto broker on a free loopback port with the
// password file, and returns its address once it says it is running.
func startMosquitto(t *testing.T, bin, dir, passwdPath string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		conf := filepath.Join(dir, "mosquitto.conf")
		content := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\nlog_dest stderr\npersistence false\n", port, passwdPath)
		if os.Geteuid() == 0 {
			content += "user root\n" // else it drops to a user that cannot read the test's directory
		}
		if err := os.WriteFile(conf, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-c", conf)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		running := make(chan struct{})
		var log lockedBuffer
		go func() {
			sc := bufio.NewScanner(stderr)
			said := false
			for sc.Scan() {
				fmt.Fprintln(&log, sc.Text())
				if !said && strings.Contains(sc.Text(), " running") {
					said = true
					close(running)
				}
			}
		}()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-running:
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return addr
		case err := <-exited:
			if attempt < 3 {
				continue // the port was taken between choosing and binding
			}
			t.Fatalf("mosquitto exited: %v\n%s", err, log.String())
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("mosquitto not running after 20s:\n%s", log.String())
		}
	}
}

// connackCode connects with MQTT 3.1.1 and returns the CONNACK return code.
func connackCode(t *testing.T, addr, user, password string) codec.ReasonCode {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mc := &mqttConn{t: t, c: c, r: bufio.NewReader(c), v: codec.V311}
	mc.send(&codec.Connect{
		ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, KeepAlive: 30,
		ClientID:     []byte("passwd-test"),
		UsernameFlag: true, Username: []byte(user),
		PasswordFlag: true, Password: []byte(password),
	})
	p, err := mc.read()
	if err != nil {
		t.Fatalf("%s: no CONNACK: %v", user, err)
	}
	ca, ok := p.(*codec.Connack)
	if !ok {
		t.Fatalf("%s: got %T, want CONNACK", user, p)
	}
	return ca.Code
}
