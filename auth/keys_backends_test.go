//go:build linux

package auth

import (
	"fmt"
	"testing"
)

// keyedBackend is a Redis or PostgreSQL source built for one test: the
// user alice with password "pw", and the ACL rows
// "subscribe shared/#" and "subscribe devices/${clientid}/#".
type keyedBackend struct {
	name string
	// make builds a source whose auth query reads the user by
	// ${username} (byClientID false) or by ${username} and ${clientid}.
	make func(t *testing.T, byClientID bool) interface {
		Source
		ACLSource
	}
}

func keyedBackends() []keyedBackend {
	return []keyedBackend{
		{"redis", func(t *testing.T, byClientID bool) interface {
			Source
			ACLSource
		} {
			srv := sharedRedis(t)
			prefix := fmt.Sprintf("keyed-%s-", t.Name())
			redisSeed(t, redisClient(t, srv), map[string]map[string]string{
				prefix + "user:alice":         {"password_hash": mustHash(t, HashSHA512, "pw")},
				prefix + "user:alice:alice-7": {"password_hash": mustHash(t, HashSHA512, "pw")},
				prefix + "acl:alice":          {"shared/#": "subscribe", "devices/${clientid}/#": "subscribe"},
			})
			cmd := "HMGET " + prefix + "user:${username} password_hash"
			if byClientID {
				cmd = "HMGET " + prefix + "user:${username}:${clientid} password_hash"
			}
			return newTestRedisSource(t, RedisConfig{URL: srv.URL, AuthCommand: cmd, ACLCommand: "HGETALL " + prefix + "acl:${username}"})
		}},
		{"postgres", func(t *testing.T, byClientID bool) interface {
			Source
			ACLSource
		} {
			url := pgSchema(t, sharedPostgres(t), pgTables...)
			pgAddUser(t, url, "alice", mustHash(t, HashSHA512, "pw"), false)
			pgAddRule(t, url, "alice", "allow", "subscribe", "shared/#")
			pgAddRule(t, url, "alice", "allow", "subscribe", "devices/${clientid}/#")
			q := DefaultPostgresAuthQuery
			if byClientID {
				q = "SELECT password_hash FROM mqtt_user WHERE username = ${username} AND ${clientid} = 'alice-7'"
			}
			return newTestPostgresSource(t, PostgresConfig{URL: url, AuthQuery: q, ACLQuery: pgOrderedACLQuery})
		}},
	}
}

// TestKeyedBackendAuth checks that a Redis or PostgreSQL source whose
// query reads only ${username} is asked once for many clients of a
// user, again for another password, and again for another client id
// when the query reads ${clientid}.
func TestKeyedBackendAuth(t *testing.T) {
	for _, b := range keyedBackends() {
		t.Run(b.name, func(t *testing.T) {
			src := &keyCountedSource{Source: b.make(t, false)}
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
		})
		t.Run(b.name+"/clientid", func(t *testing.T) {
			src := &keyCountedSource{Source: b.make(t, true)}
			c := keyChain(t, []Source{src}, nil)
			keyStorm(t, c, 100, Allowed, func(i int) *Request {
				r := keyClient(i, "pw")
				r.ClientID = "alice-7"
				return r
			})
			wantCalls(t, "100 connections of one client id", &src.calls, 1)
			// Another client id reads another row: it is not alice-7's
			// answer.
			keyStorm(t, c, 1, NotAuthorized, func(i int) *Request {
				r := keyClient(i, "pw")
				r.ClientID = "alice-8"
				return r
			})
			wantCalls(t, "another client id", &src.calls, 2)
		})
	}
}

// TestKeyedBackendRules checks the key of a Redis or PostgreSQL source's
// Rules, the rules with the client's values put in (RulesKeyedBy): not
// the password, listener or protocol; but the client id, even though the
// query reads only ${username}, since a stored topic filter names
// ${clientid}. keyCountedACL hides the source's rules as stored, which a
// chain asks for otherwise, once per user: see TestTemplateBackendStorm.
func TestKeyedBackendRules(t *testing.T) {
	for _, b := range keyedBackends() {
		t.Run(b.name, func(t *testing.T) {
			acl := &keyCountedACL{ACLSource: b.make(t, false)}
			c := keyChain(t, nil, []ACLSource{acl})
			res := keyStorm(t, c, 100, Allowed, func(i int) *Request {
				r := keyClient(i, fmt.Sprintf("pw-%d", i))
				r.ClientID, r.Remote = "alice-7", "192.0.2.1:5000"
				return r
			})
			wantCalls(t, "one client id, 100 passwords", &acl.calls, 1)
			m := res[0].Matcher
			if !m.CanRead([]byte("shared/x")) || !m.CanRead([]byte("devices/alice-7/x")) || m.CanRead([]byte("devices/alice-8/x")) {
				t.Fatal("alice-7 does not have its own rules")
			}
			res = keyStorm(t, c, 1, Allowed, func(int) *Request {
				r := keyClient(0, "pw-0")
				r.ClientID, r.Remote = "alice-8", "192.0.2.1:5000"
				return r
			})
			wantCalls(t, "another client id", &acl.calls, 2)
			if m := res[0].Matcher; !m.CanRead([]byte("devices/alice-8/x")) || m.CanRead([]byte("devices/alice-7/x")) {
				t.Fatal("alice-8 has alice-7's rules")
			}
			keyStorm(t, c, 1, Allowed, func(int) *Request {
				r := keyClient(0, "pw-0")
				r.ClientID, r.Remote = "alice-8", "192.0.2.2:5000"
				return r
			})
			wantCalls(t, "another peer host", &acl.calls, 3)
		})
	}
}
