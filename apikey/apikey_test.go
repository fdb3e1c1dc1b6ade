package apikey

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Add makes keys that Check knows by name and role, stores only a salted
// digest, and keeps the file's other lines; Delete removes one key and
// nothing else; Reload puts a changed file in force.
func TestAddCheckDeleteReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api-keys")
	ro, err := Add(path, "grafana", Read)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("new key file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	// A comment an operator wrote stays where it is.
	data, _ := os.ReadFile(path)
	if err := os.WriteFile(path, append([]byte("# keys of the admin API\n"), data...), 0o600); err != nil {
		t.Fatal(err)
	}
	rw, err := Add(path, "deploy-bot", Write)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ro, KeyPrefix) || len(ro) != len(KeyPrefix)+43 || ro == rw {
		t.Fatalf("keys %q and %q: want %s and 43 base64url characters, different", ro, rw, KeyPrefix)
	}
	data, _ = os.ReadFile(path)
	text := string(data)
	if strings.Contains(text, ro) || strings.Contains(text, strings.TrimPrefix(ro, KeyPrefix)) || strings.Contains(text, rw) {
		t.Fatalf("the file holds a key:\n%s", text)
	}
	if !strings.HasPrefix(text, "# keys of the admin API\ngrafana:read:sha256$") || !strings.Contains(text, "\ndeploy-bot:write:sha256$") {
		t.Fatalf("file:\n%s", text)
	}

	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key  string
		name string
		role Role
		ok   bool
	}{
		{ro, "grafana", Read, true},
		{rw, "deploy-bot", Write, true},
		{ro[:len(ro)-1], "", "", false},
		{ro + "x", "", "", false},
		{"", "", "", false},
		{strings.Repeat("a", MaxKeyLen+1), "", "", false},
	} {
		name, role, ok := f.Check(c.key)
		if name != c.name || role != c.role || ok != c.ok {
			t.Errorf("Check(%.12q...) = %q %q %v, want %q %q %v", c.key, name, role, ok, c.name, c.role, c.ok)
		}
	}
	if _, err := Add(path, "grafana", Write); err == nil || !strings.Contains(err.Error(), "already has a key named") {
		t.Fatalf("second key named grafana: %v", err)
	}

	if err := Delete(path, "grafana"); err != nil {
		t.Fatal(err)
	}
	if err := Delete(path, "grafana"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting it again: %v, want ErrNotFound", err)
	}
	if _, _, ok := f.Check(ro); !ok {
		t.Fatal("the loaded file dropped a key before Reload")
	}
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := f.Check(ro); ok {
		t.Fatal("a deleted key still works after Reload")
	}
	if _, _, ok := f.Check(rw); !ok {
		t.Fatal("the other key stopped working")
	}
	entries, err := List(path)
	if err != nil || len(entries) != 1 || entries[0] != (Entry{"deploy-bot", Write}) {
		t.Fatalf("List: %v %v", entries, err)
	}
	data, _ = os.ReadFile(path)
	if !strings.HasPrefix(string(data), "# keys of the admin API\ndeploy-bot:write:") {
		t.Fatalf("after delete:\n%s", data)
	}

	// A broken file is refused whole, and Reload keeps the keys in force.
	if err := os.WriteFile(path, append(data, "broken line\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err == nil || !strings.Contains(err.Error(), path+":3:") {
		t.Fatalf("Reload of a broken file: %v, want an error naming %s:3", err, path)
	}
	if _, _, ok := f.Check(rw); !ok {
		t.Fatal("a failed Reload dropped the keys in force")
	}
}

// A file Load refuses names the line and the reason, never the digest.
func TestLoadRefusesMalformed(t *testing.T) {
	good, err := hash("k")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ text, want string }{
		{"a:read\n", "want name:role:hash"},
		{"a:admin:" + good + "\n", "role must be read or write"},
		{"a b:read:" + good + "\n", "letters, digits"},
		{"a:read:" + good + "\na:write:" + good + "\n", `"a" already named on line 1`},
		{"a:read:md5$x$y\n", "sha256$SALT$DIGEST"},
		{"a:read:sha256$!!$" + strings.Split(good, "$")[2] + "\n", "malformed salt"},
		{"a:read:sha256$" + strings.Split(good, "$")[1] + "$AAAA\n", "malformed digest"},
	} {
		path := filepath.Join(t.TempDir(), "keys")
		if err := os.WriteFile(path, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path+":") {
			t.Errorf("%q: %v, want an error with %q and the line", c.text, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), strings.Split(good, "$")[2]) {
			t.Errorf("%q: the error shows the digest: %v", c.text, err)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
}
