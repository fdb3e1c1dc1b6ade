//go:build linux

package auth

// ACL lookups from Redis and PostgreSQL, counted by the servers: the
// rules stored there name ${clientid}, yet with the default queries (which
// read only ${username}) the chain asks once per user and fills in each
// client's values itself.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// templateBackend is a Redis or PostgreSQL source made for one test,
// with the users alice and bob (password "pw") and, for each, the rules
//
//	allow subscribe shared/#
//	allow all       devices/${clientid}/#
//	deny  publish   devices/${clientid}/secret
//	allow publish   users/${username}/#
//
// The backend counts on its side the lookups it answers.
type templateBackend struct {
	src interface {
		Source
		ACLSource
	}
	// lookups returns the authentication and the ACL lookups the
	// backend answered since the last call.
	lookups func(t *testing.T) (auth, acl int)
	// hold makes the backend hold every ACL lookup until release is
	// called.
	hold func(t *testing.T) (release func())
}

// templateRules are the stored rules of every user.
var templateRules = [][3]string{
	{"allow", "subscribe", "shared/#"},
	{"allow", "all", "devices/${clientid}/#"},
	{"deny", "publish", "devices/${clientid}/secret"},
	{"allow", "publish", "users/${username}/#"},
}

var templateBackends = []struct {
	name string
	make func(t *testing.T, aclByClientID bool) *templateBackend
}{
	{"redis", redisTemplateBackend},
	{"postgres", postgresTemplateBackend},
}

// redisTemplateBackend is a redis-server of the test's own, whose
// commands a MONITOR connection counts. With aclByClientID, the ACL
// command reads a key of each user and client id.
func redisTemplateBackend(t *testing.T, aclByClientID bool) *templateBackend {
	srv := startRedis(t)
	c := redisClient(t, srv)
	acl := map[string]string{}
	for _, r := range templateRules {
		v := r[1]
		if r[0] == "deny" {
			v = "deny"
		}
		acl[r[2]] = v
	}
	seed := map[string]map[string]string{}
	for _, user := range []string{"alice", "bob"} {
		seed["mqtt_user:"+user] = map[string]string{"password_hash": mustHash(t, HashSHA512, "pw")}
		seed["mqtt_acl:"+user] = acl
	}
	aclCmd := DefaultRedisACLCommand
	if aclByClientID {
		aclCmd = "HGETALL mqtt_acl:${username}:${clientid}"
		for i := range 2 {
			seed[fmt.Sprintf("mqtt_acl:alice:alice-%d", i)] = acl
		}
	}
	redisSeed(t, c, seed)
	mon := monitorRedis(t, srv)
	// The authentication and ACL commands, as MONITOR shows them.
	const authCmd, aclCmdSeen = `"HMGET" "mqtt_user:`, `"HGETALL" "mqtt_acl:`
	return &templateBackend{
		src: newTestRedisSource(t, RedisConfig{URL: srv.URL, ACLCommand: aclCmd}),
		lookups: func(t *testing.T) (int, int) {
			n := mon.count(t, c, authCmd, aclCmdSeen)
			return n[0], n[1]
		},
		hold: func(t *testing.T) func() {
			srv.Pause(t)
			return func() { srv.Resume(t) }
		},
	}
}

// postgresTemplateBackend is a schema of the shared PostgreSQL server
// whose queries go through PL/pgSQL functions that log each call. The
// ACL function takes a shared advisory lock first, so that a test holding
// it exclusively holds every ACL lookup. With aclByClientID, the ACL
// query reads the client id too.
func postgresTemplateBackend(t *testing.T, aclByClientID bool) *templateBackend {
	var b [8]byte
	_, _ = rand.Read(b[:])
	lock := int64(binary.LittleEndian.Uint64(b[:]) >> 1)
	url := pgSchema(t, sharedPostgres(t), append(slicesClone(pgTables),
		`CREATE TABLE lookups (kind text NOT NULL, username text)`,
		`CREATE FUNCTION counted_user(u text) RETURNS TABLE (password_hash text, is_superuser boolean)
		LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO lookups VALUES ('auth', u);
			RETURN QUERY SELECT m.password_hash, m.is_superuser FROM mqtt_user m WHERE m.username = u;
		END $$`,
		fmt.Sprintf(`CREATE FUNCTION counted_acl(u text) RETURNS TABLE (permission text, action text, topic text)
		LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_advisory_lock_shared(%[1]d);
			PERFORM pg_advisory_unlock_shared(%[1]d);
			INSERT INTO lookups VALUES ('acl', u);
			RETURN QUERY SELECT a.permission, a.action, a.topic FROM mqtt_acl a WHERE a.username = u ORDER BY a.id;
		END $$`, lock),
	)...)
	for _, user := range []string{"alice", "bob"} {
		pgAddUser(t, url, user, mustHash(t, HashSHA512, "pw"), false)
		for _, r := range templateRules {
			pgAddRule(t, url, user, r[0], r[1], r[2])
		}
	}
	aclQuery := "SELECT permission, action, topic FROM counted_acl(${username})"
	if aclByClientID {
		aclQuery = "SELECT permission, action, topic FROM counted_acl(${username}) WHERE ${clientid} <> ''"
	}
	src := newTestPostgresSource(t, PostgresConfig{URL: url,
		AuthQuery: "SELECT password_hash, is_superuser FROM counted_user(${username})",
		ACLQuery:  aclQuery})
	var seen [2]int
	return &templateBackend{
		src: src,
		lookups: func(t *testing.T) (int, int) {
			var n [2]int
			for i, kind := range []string{"auth", "acl"} {
				var total int
				pgQueryRow(t, url, "SELECT count(*) FROM lookups WHERE kind = $1", []any{kind}, &total)
				n[i], seen[i] = total-seen[i], total
			}
			return n[0], n[1]
		},
		hold: func(t *testing.T) func() {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lock); err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			release := func() { once.Do(func() { conn.Close(ctx) }) } // ends the session and its lock
			t.Cleanup(release)
			return release
		},
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// pgQueryRow runs a query that returns one row on url and scans it into
// dest.
func pgQueryRow(t *testing.T, url, query string, args []any, dest ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, query, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// redisMonitor reads a redis-server's MONITOR stream: every command the
// server runs, in the order it runs them.
type redisMonitor struct {
	lines chan string // closed when the connection ends
}

// monitorRedis opens a MONITOR connection to srv, closed at the test's
// cleanup.
func monitorRedis(t *testing.T, srv *redisServer) *redisMonitor {
	t.Helper()
	conn, err := net.DialTimeout("tcp", srv.Addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(conn)
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := rd.ReadString('\n'); err != nil || line != "+OK\r\n" {
		t.Fatalf("MONITOR answered %q, %v", line, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	m := &redisMonitor{lines: make(chan string, 1<<16)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(m.lines)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			m.lines <- line
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
	return m
}

// count returns, for each of prefixes, how many commands the server ran
// since the last count whose MONITOR text (`"HGETALL" "key"`) starts with
// it, the case of the text aside. It sends an ECHO of a fresh marker through c, and reads up to it:
// the server ran every command sent before count before the marker.
func (m *redisMonitor) count(t *testing.T, c *redis.Client, prefixes ...string) []int {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	marker := fmt.Sprintf("marker-%x", b)
	if err := c.Echo(context.Background(), marker).Err(); err != nil {
		t.Fatal(err)
	}
	n := make([]int, len(prefixes))
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case line, ok := <-m.lines:
			if !ok {
				t.Fatal("MONITOR connection ended")
			}
			// +<time> [<db> <addr>] "command" "arg" ..., the command
			// as the client spelt it.
			_, cmd, _ := strings.Cut(line, "] ")
			cmd = strings.ToLower(cmd)
			if strings.HasPrefix(cmd, `"echo" "`+marker+`"`) {
				return n
			}
			for i, p := range prefixes {
				if strings.HasPrefix(cmd, strings.ToLower(p)) {
					n[i]++
				}
			}
		case <-deadline.C:
			t.Fatalf("MONITOR did not show the marker within 30s")
		}
	}
}

// templateClient is alice's i-th client: its own client id and address.
func templateClient(user string, i int) *Request {
	r := chainUser(user, "pw")
	r.ClientID = fmt.Sprintf("%s-%d", user, i)
	r.Remote = fmt.Sprintf("192.0.2.%d:%d", i%250+1, 40000+i)
	return r
}

// checkOwnRules checks that m holds the rules of client id of user:
// its own devices/<id>/ topics, not another client's.
func checkOwnRules(t *testing.T, m *Matcher, user, id, other string) {
	t.Helper()
	for _, c := range []struct {
		topic string
		want  bool
	}{
		{"devices/" + id + "/x", true},
		{"devices/" + id + "/secret", false},
		{"devices/" + other + "/x", false},
		{"users/" + user + "/x", true},
		{"users/someone-else/x", false},
	} {
		if got := m.CanPublish([]byte(c.topic)); got != c.want {
			t.Errorf("client %s of %s: CanPublish(%q) = %v, want %v", id, user, c.topic, got, c.want)
		}
	}
	if got := m.CanSubscribe([]byte("shared/#")); got != SubAllowed {
		t.Errorf("client %s of %s: CanSubscribe(shared/#) = %v, want allowed", id, user, got)
	}
	if got := m.CanSubscribe([]byte("devices/" + other + "/#")); got != SubDenied {
		t.Errorf("client %s of %s: CanSubscribe(devices/%s/#) = %v, want denied", id, user, other, got)
	}
}

func wantLookups(t *testing.T, what string, b *templateBackend, auth, acl int) {
	t.Helper()
	if a, l := b.lookups(t); a != auth || l != acl {
		t.Fatalf("%s: the backend answered %d authentication and %d ACL lookups, want %d and %d", what, a, l, auth, acl)
	}
}

// TestTemplateBackendStorm checks that many clients of one user cost
// one authentication and one ACL lookup, each client getting its own
// ${clientid} in its rules, and that the same clients again within the
// TTL cost none.
func TestTemplateBackendStorm(t *testing.T) {
	const n = 100
	for _, tb := range templateBackends {
		t.Run(tb.name, func(t *testing.T) {
			b := tb.make(t, false)
			c := keyChain(t, []Source{b.src}, []ACLSource{b.src})
			for pass := range 2 {
				res := keyStorm(t, c, n, Allowed, func(i int) *Request { return templateClient("alice", i) })
				for i, r := range res {
					checkOwnRules(t, r.Matcher, "alice", fmt.Sprintf("alice-%d", i), fmt.Sprintf("alice-%d", (i+1)%n))
				}
				if pass == 0 {
					wantLookups(t, "100 clients of alice", b, 1, 1)
				} else {
					wantLookups(t, "the same 100 clients again", b, 0, 0)
				}
			}

			// Another user is another question; a client id that is not
			// usable in a filter is not: alice's stored rules serve it,
			// its allow rule dropped and its deny rule widened.
			res := keyStorm(t, c, 1, Allowed, func(int) *Request { return templateClient("bob", 0) })
			checkOwnRules(t, res[0].Matcher, "bob", "bob-0", "alice-0")
			wantLookups(t, "bob", b, 1, 1)
			res = keyStorm(t, c, 1, Allowed, func(int) *Request {
				r := templateClient("alice", 0)
				r.ClientID = "alice/evil"
				return r
			})
			m := res[0].Matcher
			for topic, want := range map[string]bool{
				"devices/alice/evil/x": false, "devices/alice/evil/secret": false,
				"devices/alice-1/secret": false, "users/alice/x": true,
			} {
				if got := m.CanPublish([]byte(topic)); got != want {
					t.Errorf("client alice/evil: CanPublish(%q) = %v, want %v", topic, got, want)
				}
			}
			wantLookups(t, "a client id holding '/'", b, 0, 0)
		})
	}
}

// TestTemplateBackendMerged checks that concurrent ACL lookups for one
// user are one backend call even with caching off, and that each client
// still gets its own rules.
func TestTemplateBackendMerged(t *testing.T) {
	const n = 50
	for _, tb := range templateBackends {
		t.Run(tb.name, func(t *testing.T) {
			b := tb.make(t, false)
			c := newTestChain(t, ChainConfig{ACLs: []ACLSource{b.src}}, chainOptions{})
			var joined atomic.Int64
			all := make(chan struct{})
			c.cache.onJoin = func() {
				if joined.Add(1) == n {
					close(all)
				}
			}
			release := b.hold(t)
			results := make(chan Result, n)
			for i := range n {
				r := templateClient("alice", i)
				c.Check(r, func(res Result) { results <- res })
			}
			select {
			case <-all:
			case <-time.After(decideTimeout):
				t.Fatalf("%d of %d lookups waiting for the backend", joined.Load(), n)
			}
			release()
			got := map[string]*Matcher{}
			for range n {
				select {
				case res := <-results:
					if res.Outcome != Allowed {
						t.Fatalf("%v (%v)", res.Outcome, res.Err)
					}
					// Which client: the one whose devices/<id>/x it may
					// publish to.
					for i := range n {
						if id := fmt.Sprintf("alice-%d", i); res.Matcher.CanPublish([]byte("devices/" + id + "/x")) {
							got[id] = res.Matcher
						}
					}
				case <-time.After(decideTimeout):
					t.Fatal("a lookup did not end")
				}
			}
			if len(got) != n {
				t.Fatalf("%d clients got rules of their own, want %d", len(got), n)
			}
			for i := range n {
				id := fmt.Sprintf("alice-%d", i)
				checkOwnRules(t, got[id], "alice", id, fmt.Sprintf("alice-%d", (i+1)%n))
			}
			wantLookups(t, "50 concurrent lookups", b, 0, 1)

			// Caching is off: a later lookup asks again.
			if res := c.Authenticate(context.Background(), templateClient("alice", 0)); res.Outcome != Allowed {
				t.Fatalf("%v (%v)", res.Outcome, res.Err)
			}
			wantLookups(t, "a later lookup", b, 0, 1)
		})
	}
}

// TestTemplateBackendWithOthers checks a backend's rules among those of
// another ACL source: the stored rules are fetched once for the user, and
// each client gets both sources' rules.
func TestTemplateBackendWithOthers(t *testing.T) {
	const n = 20
	f, err := LoadACLFile(writeACL(t, "user alice\ntopic read other/#\npattern read own/%c\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range templateBackends {
		t.Run(tb.name, func(t *testing.T) {
			b := tb.make(t, false)
			c := keyChain(t, nil, []ACLSource{b.src, f})
			res := keyStorm(t, c, n, Allowed, func(i int) *Request { return templateClient("alice", i) })
			for i, r := range res {
				id := fmt.Sprintf("alice-%d", i)
				checkOwnRules(t, r.Matcher, "alice", id, fmt.Sprintf("alice-%d", (i+1)%n))
				if !r.Matcher.CanRead([]byte("other/x")) || !r.Matcher.CanRead([]byte("own/"+id)) || r.Matcher.CanRead([]byte("own/x")) {
					t.Errorf("client %s does not have the ACL file's rules", id)
				}
			}
			wantLookups(t, "20 clients of alice", b, 0, 1)
		})
	}
}

// TestTemplateBackendKeyedByQuery checks that an ACL query that reads
// ${clientid} is asked again for another client id: its answer may
// differ.
func TestTemplateBackendKeyedByQuery(t *testing.T) {
	for _, tb := range templateBackends {
		t.Run(tb.name, func(t *testing.T) {
			b := tb.make(t, true)
			c := keyChain(t, nil, []ACLSource{b.src})
			keyStorm(t, c, 10, Allowed, func(int) *Request { return templateClient("alice", 0) })
			wantLookups(t, "10 connections of one client id", b, 0, 1)
			res := keyStorm(t, c, 1, Allowed, func(int) *Request { return templateClient("alice", 1) })
			checkOwnRules(t, res[0].Matcher, "alice", "alice-1", "alice-0")
			wantLookups(t, "another client id", b, 0, 1)
		})
	}
}
