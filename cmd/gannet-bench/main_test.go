package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Transport flags that cannot work together, or name files that do not
// hold what they should, stop the generator with exit code 2 and a
// message naming the flag, before it dials anything.
func TestTransportFlagErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Nothing listens on port 1 of loopback: a run that got as far as
	// dialling would fail with another message.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls"}, "--tls needs --ca FILE"},
		{[]string{"--ca", notPEM}, "--ca applies only with --tls"},
		{[]string{"--insecure-skip-verify", "--tls-resume"}, "--insecure-skip-verify, --tls-resume apply only with --tls"},
		{[]string{"--tls", "--ca", notPEM, "--insecure-skip-verify"}, "contradict"},
		{[]string{"--tls", "--insecure-skip-verify", "--cert", notPEM}, "--cert and --key go together"},
		{[]string{"--tls", "--insecure-skip-verify", "--tls-groups", "X25519,X448"}, `unknown group "X448"`},
		{[]string{"--ws-path", "/mqtt"}, "--ws-path applies only with --ws"},
		{[]string{"--ws", "--ws-path", "mqtt"}, "--ws-path must start with /"},
		{[]string{"--tls", "--ca", filepath.Join(dir, "missing.pem")}, "cannot read the CA file"},
		{[]string{"--tls", "--ca", notPEM}, "holds no PEM certificate"},
		{[]string{"--tls", "--insecure-skip-verify", "--cert", notPEM, "--key", notPEM}, "cannot load the client certificate"},
	} {
		var stdout, stderr strings.Builder
		args := append([]string{"--addr", "127.0.0.1:1", "--scenario", "conn", "--clients", "1"}, c.args...)
		if code := run(args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", c.args, code, stderr.String(), c.want)
		}
		if strings.Contains(stderr.String(), "connection refused") {
			t.Errorf("%v: dialled before checking the flags: %q", c.args, stderr.String())
		}
	}
	// The groups may be named as crypto/tls prints them, or with a dash.
	var stdout, stderr strings.Builder
	args := []string{"--addr", "127.0.0.1:1", "--scenario", "conn", "--clients", "1", "--tls", "--insecure-skip-verify", "--tls-groups", "CurveP256,p-384,x25519"}
	if code := run(args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "connection refused") {
		t.Errorf("--tls-groups CurveP256,p-384,x25519: exit %d, stderr %q; want the flags accepted and the dial refused", code, stderr.String())
	}
}
