//go:build linux

package auth

// Test servers: real redis-server and PostgreSQL processes that tests
// start on free loopback ports, each in its own temporary directory.
//
//	sharedRedis(t), sharedPostgres(t)   one server per test binary, started
//	                                    on first use, stopped by TestMain;
//	                                    for tests that only read and write
//	                                    (keep keys and schemas apart: see
//	                                    pgSchema)
//	startRedis(t), startPostgres(t)     a server of the test's own, stopped
//	                                    at the test's cleanup; for tests
//	                                    that kill, stop or pause it
//	newPostgres(t)                      the same, not started yet
//
// A missing binary skips the test with a message saying what to install.
// The servers keep no data on disk worth keeping (Redis: no RDB, no AOF;
// PostgreSQL: fsync off). Readiness is awaited by connecting, with a
// deadline, never by sleeping.
//
// Server processes are started with a parent-death signal from one
// goroutine locked to its OS thread: if the test binary dies (panic,
// -timeout) the kernel ends them, so no server outlives its tests.
// PostgreSQL refuses to run as root: when the tests run as root its
// binaries run as the "postgres" system user, in directories owned by it.
//
// The helpers are Linux-only (parent-death signal, credentials).

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

// TestMain runs the package's tests, then stops the shared servers.
func TestMain(m *testing.M) {
	code := m.Run()
	shared.stopAll()
	os.Exit(code)
}

// serverReadyTimeout bounds how long a server may take to accept
// connections after its start.
const serverReadyTimeout = 30 * time.Second

// testServers holds what outlives one test: the shared servers, the
// PostgreSQL data directory template, and how to get rid of them.
type testServers struct {
	mu    sync.Mutex
	stops []func()

	redisOnce sync.Once
	redis     *redisServer
	redisErr  error

	pgOnce sync.Once
	pg     *pgServer
	pgErr  error

	templateOnce sync.Once
	template     string // a data directory made by initdb, to copy
	templateErr  error
}

var shared testServers

// atExitOfTests registers f to run after every test (TestMain), in
// reverse order of registration.
func atExitOfTests(f func()) {
	shared.mu.Lock()
	shared.stops = append(shared.stops, f)
	shared.mu.Unlock()
}

func (s *testServers) stopAll() {
	s.mu.Lock()
	stops := s.stops
	s.stops = nil
	s.mu.Unlock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
}

// errSkip marks an error that should skip a test rather than fail it.
type errSkip struct{ msg string }

func (e errSkip) Error() string { return e.msg }

// failOrSkip ends the test with err: skipped when a server cannot exist
// here, failed otherwise.
func failOrSkip(t testing.TB, err error) {
	t.Helper()
	var skip errSkip
	if errors.As(err, &skip) {
		t.Skip(skip.msg)
	}
	t.Fatal(err)
}

// --- processes ---

// spawner starts processes from one goroutine that stays locked to its
// OS thread for the life of the test binary: the parent-death signal
// fires when the thread that forked a child exits, and Go may end other
// threads at any time.
var spawner = sync.OnceValue(func() chan<- spawnRequest {
	ch := make(chan spawnRequest)
	go func() {
		runtime.LockOSThread() // never unlocked
		for req := range ch {
			req.done <- req.cmd.Start()
		}
	}()
	return ch
})

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// serverProcess is one run of a server binary.
type serverProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // how it exited; read after done is closed
}

// runServer starts bin with args in dir, its output appended to logPath,
// as cred's user when cred is not nil. deathSig is what the kernel sends
// it when the test binary dies.
func runServer(bin string, args []string, dir, logPath string, cred *syscall.Credential, deathSig syscall.Signal) (*serverProcess, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open server log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: deathSig, Credential: cred}
	done := make(chan error)
	spawner() <- spawnRequest{cmd: cmd, done: done}
	if err := <-done; err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", bin, err)
	}
	p := &serverProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *serverProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig and waits up to timeout for the process to exit; past
// it, the process is killed.
func (p *serverProcess) signal(sig syscall.Signal, timeout time.Duration) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
		return fmt.Errorf("cannot signal server: %w", err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("server did not exit within %v of %v: killed", timeout, sig)
	}
}

// awaitReady calls probe until it succeeds, the process exits, or
// serverReadyTimeout passes. The error includes the end of the server's
// log.
func awaitReady(p *serverProcess, logPath string, probe func(ctx context.Context) error) error {
	deadline := time.Now().Add(serverReadyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := probe(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("server exited (%v) before accepting connections; its log ends:\n%s", p.err, logTail(logPath))
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready after %v (last: %v); its log ends:\n%s", serverReadyTimeout, err, logTail(logPath))
		}
	}
}

// logTail returns the last lines of a server's log.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 40 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("cannot find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// serverDir makes a temporary directory for a server, owned by cred's
// user when cred is not nil. (t.TempDir's parent is private to root,
// where the postgres user could not reach.)
func serverDir(cred *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp("", "gannet-auth-test-")
	if err != nil {
		return "", err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("cannot give %s to the server's user: %w", dir, err)
		}
	}
	return dir, nil
}

// --- Redis ---

// redisServer is a redis-server that a test started, on 127.0.0.1 at a
// port of its own. Stop, Kill, Start, Pause and Resume may be called from
// the test's goroutine; the server keeps its port across them, and loses
// its data when it stops (no persistence).
type redisServer struct {
	Addr string // "127.0.0.1:<port>"
	URL  string // "redis://127.0.0.1:<port>/0"

	bin  string
	dir  string
	port int
	proc *serverProcess
}

// startRedis starts a redis-server of the test's own, stopped (and its
// directory removed) at the test's cleanup. It skips the test when
// redis-server is not installed.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	s, err := launchRedis()
	if err != nil {
		failOrSkip(t, err)
	}
	t.Cleanup(s.close)
	return s
}

// sharedRedis returns the test binary's shared redis-server, starting it
// on first use. Tests that share it must keep to keys of their own, and
// must not stop it.
func sharedRedis(t testing.TB) *redisServer {
	t.Helper()
	shared.redisOnce.Do(func() {
		shared.redis, shared.redisErr = launchRedis()
		if shared.redisErr == nil {
			atExitOfTests(shared.redis.close)
		}
	})
	if shared.redisErr != nil {
		failOrSkip(t, shared.redisErr)
	}
	return shared.redis
}

// launchRedis starts a redis-server in a fresh directory, trying another
// port if the first one was taken meanwhile.
func launchRedis() (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errSkip{"redis-server not found in PATH (install the redis-server package to run the Redis tests)"}
	}
	dir, err := serverDir(nil)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s := &redisServer{bin: bin, dir: dir, port: port}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.URL = "redis://" + s.Addr + "/0"
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (s *redisServer) logPath() string { return filepath.Join(s.dir, "redis.log") }

// start runs redis-server and waits until it answers PING.
func (s *redisServer) start() error {
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--logfile", "",
	}
	p, err := runServer(s.bin, args, s.dir, s.logPath(), nil, syscall.SIGKILL)
	if err != nil {
		return err
	}
	s.proc = p
	if err := awaitReady(p, s.logPath(), s.ping); err != nil {
		_ = p.signal(syscall.SIGKILL, 5*time.Second)
		return fmt.Errorf("redis-server on %s: %w", s.Addr, err)
	}
	return nil
}

// ping sends PING on a fresh connection and expects +PONG.
func (s *redisServer) ping(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Start starts the server again, on the same port, after Stop or Kill.
func (s *redisServer) Start(t testing.TB) {
	t.Helper()
	if !s.proc.exited() {
		t.Fatal("redis-server is still running")
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

// Kill ends the server at once (SIGKILL), as a crash would, and waits
// for it to be gone.
func (s *redisServer) Kill(t testing.TB) {
	t.Helper()
	if err := s.proc.signal(syscall.SIGKILL, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Stop shuts the server down cleanly (SIGTERM) and waits for it.
func (s *redisServer) Stop(t testing.TB) {
	t.Helper()
	if err := s.proc.signal(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Pause freezes the server (SIGSTOP): connections stay open and nothing
// answers, as with a hung server or a dropped network. Resume undoes it;
// the test's cleanup does too.
func (s *redisServer) Pause(t testing.TB) {
	t.Helper()
	if err := s.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.proc.cmd.Process.Signal(syscall.SIGCONT) })
}

// Resume undoes Pause.
func (s *redisServer) Resume(t testing.TB) {
	t.Helper()
	if err := s.proc.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

// close stops the server and removes its directory.
func (s *redisServer) close() {
	if s.proc != nil {
		_ = s.proc.cmd.Process.Signal(syscall.SIGCONT)
		_ = s.proc.signal(syscall.SIGKILL, 10*time.Second)
	}
	os.RemoveAll(s.dir)
}

// redisClient returns a go-redis client of s for a test's setup, closed
// at the test's cleanup.
func redisClient(t testing.TB, s *redisServer) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// --- PostgreSQL ---

// pgServer is a PostgreSQL server that a test started, on 127.0.0.1 at a
// port of its own, superuser "postgres" with trust authentication. Start
// and Stop may be called from the test's goroutine; the server keeps its
// port and its data across them.
type pgServer struct {
	URL string // postgres://postgres@127.0.0.1:<port>/postgres?sslmode=disable

	bin  string // directory of initdb and postgres
	dir  string // holds data/, the log and the Unix socket
	port int
	cred *syscall.Credential // the server's user; nil: ours
	proc *serverProcess
}

// startPostgres starts a PostgreSQL server of the test's own, stopped
// (and its directory removed) at the test's cleanup. It skips the test
// when PostgreSQL is not installed.
func startPostgres(t testing.TB) *pgServer {
	t.Helper()
	s := newPostgres(t)
	s.Start(t)
	return s
}

// newPostgres prepares a PostgreSQL server of the test's own (a data
// directory and a port) without starting it: its URL refuses connections
// until Start.
func newPostgres(t testing.TB) *pgServer {
	t.Helper()
	s, err := preparePostgres()
	if err != nil {
		failOrSkip(t, err)
	}
	t.Cleanup(s.close)
	return s
}

// sharedPostgres returns the test binary's shared PostgreSQL server,
// starting it on first use. Tests that share it work in a schema of
// their own (pgSchema), and must not stop it.
func sharedPostgres(t testing.TB) *pgServer {
	t.Helper()
	shared.pgOnce.Do(func() {
		s, err := preparePostgres()
		if err == nil {
			if err = s.start(); err != nil {
				s.close()
			}
		}
		if err != nil {
			shared.pgErr = err
			return
		}
		shared.pg = s
		atExitOfTests(s.close)
	})
	if shared.pgErr != nil {
		failOrSkip(t, shared.pgErr)
	}
	return shared.pg
}

// postgresBin returns the directory holding initdb and postgres: that of
// initdb in PATH, else the newest /usr/lib/postgresql/<version>/bin
// (Debian's layout).
func postgresBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var found []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return "", errSkip{"PostgreSQL not found (no initdb in PATH nor /usr/lib/postgresql/*/bin; install the postgresql package to run the PostgreSQL tests)"}
	}
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	slices.SortFunc(found, func(a, b string) int { return version(a) - version(b) })
	return found[len(found)-1], nil
}

// postgresUser returns the credential to run PostgreSQL with: nil when
// we are not root, the "postgres" user's when we are.
func postgresUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := osuser.Lookup("postgres")
	if err != nil {
		return nil, errSkip{"running as root, and no \"postgres\" user to run PostgreSQL as (PostgreSQL refuses root): " + err.Error()}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user postgres has uid %q, gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// pgTemplate returns a data directory made by initdb once per test
// binary; servers start from copies of it, which is much faster than
// initdb.
func pgTemplate(bin string, cred *syscall.Credential) (string, error) {
	shared.templateOnce.Do(func() {
		dir, err := serverDir(cred)
		if err != nil {
			shared.templateErr = err
			return
		}
		data := filepath.Join(dir, "data")
		logPath := filepath.Join(dir, "initdb.log")
		cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
			"-E", "UTF8", "--locale=C", "--no-sync")
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			os.RemoveAll(dir)
			shared.templateErr = fmt.Errorf("initdb: %w\n%s", err, out)
			return
		}
		_ = os.WriteFile(logPath, out, 0o644)
		shared.template = data
		atExitOfTests(func() { os.RemoveAll(dir) })
	})
	return shared.template, shared.templateErr
}

// preparePostgres makes a server's directory, with a copy of the
// template's data directory, and picks its port.
func preparePostgres() (*pgServer, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	cred, err := postgresUser()
	if err != nil {
		return nil, err
	}
	tmpl, err := pgTemplate(bin, cred)
	if err != nil {
		return nil, err
	}
	dir, err := serverDir(cred)
	if err != nil {
		return nil, err
	}
	// cp -a keeps owners and modes (PostgreSQL wants data/ at 0700).
	if out, err := exec.Command("cp", "-a", tmpl, filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("cannot copy the data directory: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &pgServer{bin: bin, dir: dir, port: port, cred: cred}
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	return s, nil
}

func (s *pgServer) logPath() string { return filepath.Join(s.dir, "postgres.log") }

// start runs postgres and waits until it accepts a connection.
func (s *pgServer) start() error {
	args := []string{
		"-D", filepath.Join(s.dir, "data"), "-p", strconv.Itoa(s.port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB", "-c", "max_connections=60",
	}
	// SIGQUIT on the test binary's death: immediate shutdown, which
	// also ends the server's children.
	p, err := runServer(filepath.Join(s.bin, "postgres"), args, s.dir, s.logPath(), s.cred, syscall.SIGQUIT)
	if err != nil {
		return err
	}
	s.proc = p
	err = awaitReady(p, s.logPath(), func(ctx context.Context) error {
		c, err := pgconn.Connect(ctx, s.URL)
		if err != nil {
			return err
		}
		return c.Close(ctx)
	})
	if err != nil {
		_ = p.signal(syscall.SIGQUIT, 10*time.Second)
		return fmt.Errorf("postgres on port %d: %w", s.port, err)
	}
	return nil
}

// Start starts the server, the first time or again after Stop, and waits
// until it accepts connections.
func (s *pgServer) Start(t testing.TB) {
	t.Helper()
	if s.proc != nil && !s.proc.exited() {
		t.Fatal("postgres is still running")
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

// Stop shuts the server down the way "pg_ctl stop -m fast" does (SIGINT:
// sessions are terminated at once, then a clean shutdown) and waits for
// it to be gone.
func (s *pgServer) Stop(t testing.TB) {
	t.Helper()
	if err := s.proc.signal(syscall.SIGINT, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// close stops the server and removes its directory.
func (s *pgServer) close() {
	if s.proc != nil {
		_ = s.proc.signal(syscall.SIGQUIT, 10*time.Second)
	}
	os.RemoveAll(s.dir)
}

// pgSchema makes a schema of the test's own in s's database, runs ddl in
// it, and returns a URL whose sessions use it (search_path); the schema
// is dropped at the test's cleanup.
func pgSchema(t testing.TB, s *pgServer, ddl ...string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	url := s.URL + "&search_path=" + name
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, s.URL); err == nil {
			_, _ = c.Exec(ctx, "DROP SCHEMA "+name+" CASCADE")
			c.Close(ctx)
		}
	})
	for _, q := range ddl {
		pgExec(t, url, q)
	}
	return url
}

// pgExec runs one statement, with args bound to its parameters, on
// url.
func pgExec(t testing.TB, url, stmt string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, stmt, args...); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// backendRequest is a CONNECT with a username and password, as the
// Redis and PostgreSQL tests send it.
func backendRequest(username, password string) *Request {
	return &Request{
		ClientID:    "client-" + username,
		Username:    username,
		Password:    []byte(password),
		HasUsername: true,
		HasPassword: true,
		Remote:      "192.0.2.7:40000",
		Protocol:    5,
		Listener:    "mqtt",
	}
}

// mustHash encodes password with alg at its default cost (bcrypt at its
// cheapest, to keep tests fast).
func mustHash(t testing.TB, alg HashAlgorithm, password string) string {
	t.Helper()
	cost := 0
	if alg == HashBcrypt {
		cost = MinBcryptCost
	}
	h, err := HashPassword(alg, []byte(password), cost)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// silentServer listens on a loopback port, accepts connections and never
// answers, as a hung server would; it returns its address. Closed at the
// test's cleanup.
func silentServer(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}
