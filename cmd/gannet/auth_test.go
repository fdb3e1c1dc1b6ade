package main

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// connectWith sends CONNECT with credentials on a new connection and
// returns the CONNACK's code and the connection.
func connectWith(t *testing.T, addr, id, user, pass string) (codec.ReasonCode, *mqttConn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	mc := &mqttConn{t: t, c: c, r: bufio.NewReader(c), v: codec.V311}
	mc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V311, CleanStart: true, KeepAlive: 30,
		ClientID: []byte(id), UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)})
	p, err := mc.read()
	if err != nil {
		t.Fatalf("%s: no CONNACK: %v", id, err)
	}
	return p.(*codec.Connack).Code, mc
}

// The binary with a password file made by `gannet passwd` and an ACL file:
// credentials are checked, the ACL holds, SIGHUP reloads the ACL without
// dropping anyone, and a broken file at reload keeps the old one.
func TestPasswordAndACLFiles(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if out, err := exec.Command(gannetBin, "passwd", "-c", "-b", pw, "alice", "wonder").CombinedOutput(); err != nil {
		t.Fatalf("gannet passwd: %v: %s", err, out)
	}
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("user alice\ntopic readwrite alice/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startGannet(t, "--password-file="+pw, "--acl-file="+acl)
	if strings.Contains(b.stderr.String(), "no authentication configured") {
		t.Errorf("warned about open access with a password file:\n%s", b.stderr.String())
	}
	if code, _ := connectWith(t, b.mqtt, "x", "alice", "wrong"); code != codec.V3BadUsernameOrPassword {
		t.Fatalf("wrong password: CONNACK %v", code)
	}
	code, alice := connectWith(t, b.mqtt, "a1", "alice", "wonder")
	if code != codec.V3Accepted {
		t.Fatalf("right password: CONNACK %v", code)
	}
	alice.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("alice/#")}, {Filter: []byte("other/#")}}})
	p, err := alice.read()
	if sa, ok := p.(*codec.Suback); err != nil || !ok || sa.Codes[0] != codec.GrantedQoS0 || sa.Codes[1] != codec.V3SubackFailure {
		t.Fatalf("SUBACK %+v, %v; want granted, refused", p, err)
	}

	// SIGHUP: the new ACL lets alice subscribe to other/#; she stays
	// connected.
	if err := os.WriteFile(acl, []byte("user alice\ntopic readwrite alice/#\ntopic read other/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.stderr.String(), "reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged:\n%s", b.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, alice2 := connectWith(t, b.mqtt, "a2", "alice", "wonder")
	alice2.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("other/#")}}})
	if p, err := alice2.read(); err != nil || p.(*codec.Suback).Codes[0] != codec.GrantedQoS0 {
		t.Fatalf("after SIGHUP: %+v, %v; want granted", p, err)
	}
	alice.send(&codec.Pingreq{})
	if p, err := alice.read(); err != nil || p.Type() != codec.PINGRESP {
		t.Fatalf("the connected client after SIGHUP: %+v, %v", p, err)
	}

	// A broken ACL file: reported, the old one stays.
	if err := os.WriteFile(acl, []byte("topic nonsense here too\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = b.cmd.Process.Signal(syscall.SIGHUP)
	for !strings.Contains(b.stderr.String(), "reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no failed reload logged:\n%s", b.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, alice3 := connectWith(t, b.mqtt, "a3", "alice", "wonder")
	alice3.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("other/#")}}})
	if p, err := alice3.read(); err != nil || p.(*codec.Suback).Codes[0] != codec.GrantedQoS0 {
		t.Fatalf("after a failed reload: %+v, %v; want the old rules", p, err)
	}
	if strings.Contains(b.stderr.String(), "wonder") {
		t.Fatal("a password reached the log")
	}
}

// Without any source the broker warns once that anyone may do anything;
// a password file that does not parse stops it with exit code 2 and the
// file and line.
func TestAuthStartup(t *testing.T) {
	b := startGannet(t)
	if strings.Count(b.stderr.String(), "no authentication configured") != 1 {
		t.Errorf("want one warning about open access:\n%s", b.stderr.String())
	}
	bad := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(bad, []byte("alice:$7$nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := exitCode(t, "--listen=127.0.0.1:0", "--http-listen=", "--data-dir="+t.TempDir(), "--password-file="+bad)
	if code != 2 || !strings.Contains(out, bad+":1") {
		t.Fatalf("exit %d, want 2 naming %s:1:\n%s", code, bad, out)
	}
	if bytes.Contains([]byte(out), []byte("nonsense")) {
		t.Fatalf("the hash reached the output:\n%s", out)
	}
}
