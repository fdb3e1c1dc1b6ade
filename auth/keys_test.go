package auth

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// keyCountedSource counts the calls reaching a Source, and says what the
// source it wraps is keyed by.
type keyCountedSource struct {
	Source
	calls atomic.Int64
}

func (s *keyCountedSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	s.calls.Add(1)
	return s.Source.Authenticate(ctx, r)
}

func (s *keyCountedSource) AuthKeyedBy() Fields { return authKeyFields(s.Source) }

// keyCountedACL counts the calls reaching an ACLSource, and says what the
// source it wraps is keyed by.
type keyCountedACL struct {
	ACLSource
	calls atomic.Int64
}

func (s *keyCountedACL) Rules(ctx context.Context, r *Request, username string) ([]Rule, error) {
	s.calls.Add(1)
	return s.ACLSource.Rules(ctx, r, username)
}

func (s *keyCountedACL) RulesKeyedBy() Fields { return rulesKeyFields(s.ACLSource) }

// keyChain is a caching chain over srcs and acls.
func keyChain(t testing.TB, srcs []Source, acls []ACLSource) *Chain {
	t.Helper()
	return newTestChain(t, ChainConfig{Sources: srcs, ACLs: acls, CacheTTL: time.Hour}, chainOptions{})
}

// keyStorm sends the requests mk makes for 0..n-1 to c at once, as a
// reconnect storm does, and checks that each gets want.
func keyStorm(t *testing.T, c *Chain, n int, want Outcome, mk func(i int) *Request) []Result {
	t.Helper()
	res := make([]Result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = c.Authenticate(context.Background(), mk(i))
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.Outcome != want {
			t.Fatalf("request %d: %v (%v), want %v", i, r.Outcome, r.Err, want)
		}
	}
	return res
}

// wantCalls checks that n calls reached a source.
func wantCalls(t *testing.T, what string, calls *atomic.Int64, n int64) {
	t.Helper()
	if got := calls.Load(); got != n {
		t.Fatalf("%s: %d source calls, want %d", what, got, n)
	}
}

// keyClient is alice's i-th client, with the password pw: each has its
// own client id, remote address, listener and protocol.
func keyClient(i int, pw string) *Request {
	r := chainUser("alice", pw)
	r.ClientID = fmt.Sprintf("alice-%d", i)
	r.Remote = fmt.Sprintf("192.0.2.%d:%d", i%250+1, 40000+i)
	r.Listener = []string{"mqtt", "tls", "ws"}[i%3]
	r.Protocol = byte(3 + i%3)
	return r
}

func TestKeyedPasswordFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte("alice:"+mustHash(t, HashSHA512, "pw")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pf, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	src := &keyCountedSource{Source: pf}
	c := keyChain(t, []Source{src}, nil)

	keyStorm(t, c, 100, Allowed, func(i int) *Request { return keyClient(i, "pw") })
	wantCalls(t, "100 clients of one user", &src.calls, 1)

	keyStorm(t, c, 10, NotAuthorized, func(i int) *Request { return keyClient(i, "wrong") })
	wantCalls(t, "a wrong password", &src.calls, 2)

	keyStorm(t, c, 10, NotAuthorized, func(i int) *Request {
		r := keyClient(i, "")
		r.HasPassword = false
		return r
	})
	wantCalls(t, "no password", &src.calls, 3)

	keyStorm(t, c, 1, NotAuthorized, func(int) *Request { return chainUser("bob", "pw") })
	wantCalls(t, "another user", &src.calls, 4)
}

func TestKeyedCertSource(t *testing.T) {
	cs, err := NewCertSource("cn")
	if err != nil {
		t.Fatal(err)
	}
	src := &keyCountedSource{Source: cs}
	c := keyChain(t, []Source{src}, nil)
	device := func(i int, listener string) *Request {
		r := keyClient(i, fmt.Sprintf("pw-%d", i))
		r.Username = fmt.Sprintf("user-%d", i)
		r.Listener, r.CertCN, r.CertSANs = listener, "device-1", []string{"device-1.example"}
		return r
	}

	res := keyStorm(t, c, 100, Allowed, func(i int) *Request { return device(i, "tls") })
	wantCalls(t, "100 clients of one certificate", &src.calls, 1)
	if res[0].Username != "device-1" {
		t.Fatalf("username %q, want the certificate's CN", res[0].Username)
	}

	keyStorm(t, c, 10, Allowed, func(i int) *Request { return device(i, "wss") })
	wantCalls(t, "another listener", &src.calls, 2)

	keyStorm(t, c, 10, Allowed, func(i int) *Request {
		r := device(i, "tls")
		r.CertSANs = []string{"other.example"}
		return r
	})
	wantCalls(t, "another SAN", &src.calls, 3)

	keyStorm(t, c, 10, Allowed, func(i int) *Request {
		r := device(i, "tls")
		r.CertCN = "device-2"
		return r
	})
	wantCalls(t, "another CN", &src.calls, 4)
}

// TestKeyedACLFile checks the ACL file's key: the effective username and
// the client id (see ACLFile.RulesKeyedBy), with or without "%c"
// patterns; not the password, the address, the listener or the protocol.
func TestKeyedACLFile(t *testing.T) {
	for _, pattern := range []string{"pattern read devices/%u/#", "pattern read devices/%c/#"} {
		t.Run(pattern, func(t *testing.T) {
			f, err := LoadACLFile(writeACL(t, "user alice\ntopic read shared/#\n"+pattern+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			acl := &keyCountedACL{ACLSource: f}
			c := keyChain(t, nil, []ACLSource{acl})

			keyStorm(t, c, 100, Allowed, func(i int) *Request { return keyClient(i, fmt.Sprintf("pw-%d", i)) })
			wantCalls(t, "100 clients of one user", &acl.calls, 100)

			res := keyStorm(t, c, 100, Allowed, func(i int) *Request {
				r := keyClient(i, fmt.Sprintf("other-%d", i))
				r.ClientID = "alice-7"
				return r
			})
			wantCalls(t, "one client id, 100 passwords and addresses", &acl.calls, 100)
			for i, r := range res {
				if !r.Matcher.CanRead([]byte("shared/x")) {
					t.Fatalf("request %d: cannot read shared/x", i)
				}
			}
			m := res[0].Matcher
			if pattern == "pattern read devices/%c/#" {
				if !m.CanRead([]byte("devices/alice-7/x")) || m.CanRead([]byte("devices/alice-8/x")) {
					t.Fatal("the client-id pattern is not this client's")
				}
			}
		})
	}
}

// TestKeyedHTTPSource checks that a source that does not say what it
// reads is keyed by every field but the remote port.
func TestKeyedHTTPSource(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"result": "allow"}`))
	}))
	t.Cleanup(srv.Close)
	hs, err := NewHTTPSource(HTTPConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	c := keyChain(t, []Source{hs}, nil)
	base := func(i int) *Request {
		r := chainUser("alice", "pw")
		r.Remote = fmt.Sprintf("192.0.2.1:%d", 40000+i)
		return r
	}
	keyStorm(t, c, 100, Allowed, base)
	wantCalls(t, "100 requests differing in the remote port", &calls, 1)
	changes := []struct {
		what   string
		change func(r *Request)
	}{
		{"client id", func(r *Request) { r.ClientID = "other" }},
		{"password", func(r *Request) { r.Password = []byte("other") }},
		{"username", func(r *Request) { r.Username = "bob" }},
		{"remote host", func(r *Request) { r.Remote = "192.0.2.99:40000" }},
		{"listener", func(r *Request) { r.Listener = "ws" }},
		{"protocol", func(r *Request) { r.Protocol = 5 }},
		{"certificate CN", func(r *Request) { r.CertCN = "cn" }},
		{"certificate SANs", func(r *Request) { r.CertSANs = []string{"san"} }},
	}
	for i, ch := range changes {
		keyStorm(t, c, 10, Allowed, func(j int) *Request {
			r := base(j)
			ch.change(r)
			return r
		})
		wantCalls(t, "another "+ch.what, &calls, int64(i+2))
	}
}
