package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/server"
)

// writeFile writes content to name in a new temporary directory and
// returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A flag beats the environment, which beats the file, which beats the
// default; and each value says where it came from.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, "gannet.toml", `# comment
max-inflight = 10
max-sessions = 20
max-subscriptions = 30
sync-interval = "250ms"
proxy-protocol-from = ["10.0.0.0/8", "192.168.1.7"]
`)
	t.Setenv("GANNET_MAX_INFLIGHT", "11")
	t.Setenv("GANNET_MAX_SESSIONS", "21")
	t.Setenv("GANNET_MAX_QUEUED_MESSAGES", "41")
	t.Setenv("GANNET_CONFIG", file)
	st, err := parseFlags([]string{"--max-inflight=12"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	def := server.DefaultConfig()
	for _, c := range []struct {
		got, want  any
		name, from string
	}{
		{st.cfg.MaxInflight, 12, "max-inflight", "flag"},
		{st.cfg.MaxSessions, 21, "max-sessions", "GANNET_MAX_SESSIONS"},
		{st.cfg.MaxQueuedMessages, 41, "max-queued-messages", "GANNET_MAX_QUEUED_MESSAGES"},
		{st.cfg.MaxSubscriptions, 30, "max-subscriptions", file + ":4"},
		{st.cfg.SyncInterval, 250 * time.Millisecond, "sync-interval", file + ":5"},
		{len(st.cfg.ProxyProtocolFrom), 2, "proxy-protocol-from", file + ":6"},
		{st.cfg.ReceiveMaximum, def.ReceiveMaximum, "receive-maximum", ""},
		{st.file, file, "config", "GANNET_CONFIG"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
		if from := st.value(c.name).from; from != c.from {
			t.Errorf("%s comes from %q, want %q", c.name, from, c.from)
		}
	}
}

// The authentication sources are asked in a stated order: the command
// line's, then the file's, then the environment's alone by name; a value
// from the environment that replaces the file's keeps the file's place.
func TestConfigAuthOrder(t *testing.T) {
	file := writeFile(t, "gannet.toml", `auth-redis-url = "redis://file:6379/0"
password-file = "/etc/gannet/passwd"
`)
	t.Setenv("GANNET_AUTH_REDIS_URL", "redis://env:6379/1")
	t.Setenv("GANNET_AUTH_JWT_KEY", "/etc/gannet/jwt.pem")
	t.Setenv("GANNET_AUTH_CERT", "cn")
	st, err := parseFlags([]string{"--auth-postgres-url=postgres://db/mqtt", "--config", file, "--auth-http-url=http://auth/"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"postgres", "http", "redis", "password-file", "cert", "jwt"}
	if !slices.Equal(st.af.order, want) {
		t.Errorf("sources asked in the order %q, want %q", st.af.order, want)
	}
	if st.af.redisURL != "redis://env:6379/1" {
		t.Errorf("Redis URL %q, want the environment's", st.af.redisURL)
	}
}

// A bad setting from the file or the environment stops the broker with
// exit code 2 and a message that says where it was set.
func TestConfigErrors(t *testing.T) {
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir()}
	for _, c := range []struct {
		name string
		file string   // the config file's content; none when empty
		env  []string // KEY=VALUE
		want []string // each must appear in the output; FILE stands for the file's path
	}{
		{name: "unknown key", file: "max-inflight = 5\n\nmax-inflightt = 3\n",
			want: []string{`gannet: FILE:3: unknown setting "max-inflightt" (did you mean max-inflight?)`}},
		{name: "bad number", file: "# the window\nmax-inflight = \"many\"\n",
			want: []string{`gannet: FILE:2: invalid value "many" for max-inflight`}},
		{name: "duration without unit", file: "connect-timeout = 10\n",
			want: []string{`gannet: FILE:1: invalid value "10" for connect-timeout`, `"90s"`}},
		{name: "out of range", file: "listen = \"127.0.0.1:0\"\nmax-inflight = 0\n",
			want: []string{"gannet: FILE:2: --max-inflight must be between 1 and 65535, got 0"}},
		{name: "section", file: "max-inflight = 5\n[auth]\ncache-ttl = \"1m\"\n",
			want: []string{"gannet: FILE:2: [auth]: the file has no sections"}},
		{name: "dotted key", file: "auth.cache-ttl = \"1m\"\n",
			want: []string{`gannet: FILE:1: unknown setting "auth.cache-ttl"`}},
		{name: "array for one value", file: "\nlisten = [\":1883\"]\n",
			want: []string{"gannet: FILE:2: listen takes one value, not an array"}},
		{name: "twice", file: "max-inflight = 5\nmax-inflight = 6\n",
			want: []string{"gannet: FILE:2: not valid TOML", "already defined"}},
		{name: "syntax", file: "max-inflight = 5\nmax-sessions = = 1\n",
			want: []string{"gannet: FILE:2: not valid TOML"}},
		{name: "config in the file", file: "config = \"/etc/other.toml\"\n",
			want: []string{"gannet: FILE:1: config cannot be set in the config file"}},
		{name: "missing file", env: []string{"GANNET_CONFIG=/nonexistent/gannet.toml"},
			want: []string{"gannet: cannot read the config file (GANNET_CONFIG)", "/nonexistent/gannet.toml"}},
		{name: "misspelt variable", env: []string{"GANNET_MAX_INFLIGT=3"},
			want: []string{"gannet: GANNET_MAX_INFLIGT: unknown environment variable", "did you mean GANNET_MAX_INFLIGHT?"}},
		{name: "bad variable", env: []string{"GANNET_MAX_INFLIGHT=many"},
			want: []string{`gannet: GANNET_MAX_INFLIGHT: invalid value "many" for max-inflight`}},
		{name: "variable out of range", env: []string{"GANNET_MAX_INFLIGHT=0"},
			want: []string{"gannet: GANNET_MAX_INFLIGHT: --max-inflight must be between 1 and 65535"}},
		{name: "command in the environment", env: []string{"GANNET_PRINT_CONFIG=true"},
			want: []string{"gannet: GANNET_PRINT_CONFIG: --print-config is given on the command line only"}},
		{name: "file named by a setting", file: "password-file = \"/nonexistent/passwd\"\n",
			want: []string{"gannet: FILE:1: ", "/nonexistent/passwd"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := slices.Clone(safe)
			path := ""
			if c.file != "" {
				path = writeFile(t, "gannet.toml", c.file)
				args = append(args, "--config="+path)
			}
			for _, kv := range c.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			code, out := exitCode(t, args...)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
			}
			for _, w := range c.want {
				if w = strings.ReplaceAll(w, "FILE", path); !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "gannet started") {
				t.Errorf("the broker started:\n%s", out)
			}
		})
	}
}

// --print-config prints every setting with where it came from, masks
// secrets, and prints a file that loads back to the same settings.
func TestPrintConfig(t *testing.T) {
	const (
		redisPass = "redis-pass-1234"
		pgPass    = "pg-pass-5678"
		httpPass  = "http-pass-9012"
		secret    = "cluster-secret-0123456789"
	)
	file := writeFile(t, "gannet.toml", `max-inflight = 64
auth-redis-url = "redis://gannet:`+redisPass+`@127.0.0.1:6379/0"
auth-postgres-url = "host=db user=gannet password=`+pgPass+` dbname=mqtt"
auth-http-url = "https://gannet:`+httpPass+`@auth.internal/mqtt?token=`+httpPass+`"
`)
	t.Setenv("GANNET_MAX_SESSIONS", "99")
	t.Setenv("GANNET_CLUSTER_SECRET", secret)
	t.Setenv("GANNET_SERVICE_HOST", "10.0.0.9") // a Kubernetes service link: warned about
	code, out := exitCode(t, "--config", file, "--log-level=debug", "--cluster-listen=127.0.0.1:0", "--print-config")
	if code != 0 {
		t.Fatalf("exit code %d, want 0; output:\n%s", code, out)
	}
	for _, s := range []string{redisPass, pgPass, httpPass, secret} {
		if strings.Contains(out, s) {
			t.Errorf("the output shows the secret %q:\n%s", s, out)
		}
	}
	for _, re := range []string{
		`(?m)^max-inflight = 64 +# file ` + regexp.QuoteMeta(file) + `:1$`,
		`(?m)^auth-redis-url = "redis://gannet:xxxxx@127.0.0.1:6379/0" +# file .*:2$`,
		`(?m)^auth-postgres-url = "host=db user=gannet password=xxxxx dbname=mqtt" +# file .*:3$`,
		`(?m)^auth-http-url = "https://gannet:xxxxx@auth.internal/mqtt\?token=xxxxx" +# file .*:4$`,
		`(?m)^max-sessions = 99 +# environment GANNET_MAX_SESSIONS$`,
		`(?m)^log-level = "debug" +# flag --log-level$`,
		`(?m)^receive-maximum = 1024 +# default$`,
		`(?m)^connect-timeout = "10s" +# default$`,
		`(?m)^# cluster secret: 25 bytes from GANNET_CLUSTER_SECRET`,
		`(?m)^# authentication sources, in the order they are asked: redis, postgres, http$`,
		`warning: ignoring the environment variable GANNET_SERVICE_HOST`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("output does not match %s:\n%s", re, out)
		}
	}

	// Without secrets, the output is a config file that gives the same
	// settings.
	t.Setenv("GANNET_CLUSTER_SECRET", "")
	t.Setenv("GANNET_SERVICE_HOST", "")
	file = writeFile(t, "gannet.toml", "max-inflight = 64\nwrite-delay = \"2ms\"\nproxy-protocol-from = [\"10.0.0.0/8\"]\n"+
		"auth-redis-acl-command = \"HGETALL \\\"acl\\\":${username}\"\nmemory-limit = \"1GiB\"\n")
	code, first := exitCode(t, "--config", file, "--print-config")
	if code != 0 {
		t.Fatalf("exit code %d; output:\n%s", code, first)
	}
	again := writeFile(t, "printed.toml", first)
	code, second := exitCode(t, "--config", again, "--print-config")
	if code != 0 {
		t.Fatalf("the printed configuration does not load: exit code %d; output:\n%s", code, second)
	}
	values := func(out string) []string {
		var vs []string
		for _, line := range strings.Split(out, "\n") {
			if k, _, ok := strings.Cut(line, " # "); ok && !strings.HasPrefix(line, "#") {
				vs = append(vs, strings.TrimSpace(k))
			}
		}
		return vs
	}
	if a, b := values(first), values(second); !slices.Equal(a, b) || len(a) < 50 {
		t.Errorf("the printed configuration loads to other settings:\n%s\nthen:\n%s", first, second)
	}
	if !strings.Contains(second, `memory-limit = 1073741824`) || !strings.Contains(second, `auth-redis-acl-command = "HGETALL \"acl\":${username}"`) {
		t.Errorf("values not kept:\n%s", second)
	}
}

// deploy/gannet.toml has a line for every setting, loads as it is to the
// defaults, and with every setting uncommented to the defaults too, but
// for the placeholders it documents.
func TestExampleConfig(t *testing.T) {
	const path = "../../deploy/gannet.toml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	def, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^# ([a-z0-9-]+) = `)
	listed := map[string]bool{}
	for _, m := range line.FindAllStringSubmatch(string(data), -1) {
		if listed[m[1]] {
			t.Errorf("%s: %s is listed twice", path, m[1])
		}
		listed[m[1]] = true
	}
	for _, s := range def.values {
		switch {
		case notInFile[s.name]:
			if !strings.Contains(string(data), "--"+s.name) && !strings.Contains(string(data), "gannet --"+s.name) {
				t.Errorf("%s does not mention --%s", path, s.name)
			}
		case !listed[s.name]:
			t.Errorf("%s lacks the setting %s (add it, commented out with its default and a description)", path, s.name)
		}
	}
	if len(def.values) < 50 {
		t.Fatalf("only %d flags", len(def.values))
	}

	asIs, err := parseFlags([]string{"--config", path}, io.Discard)
	if err != nil {
		t.Fatalf("%s does not load: %v", path, err)
	}
	placeholders := map[string]bool{"node-name": true} // the host name by default
	uncommented := writeFile(t, "gannet.toml", line.ReplaceAllString(string(data), "$1 = "))
	all, err := parseFlags([]string{"--config", uncommented}, io.Discard)
	if err != nil {
		t.Fatalf("%s with every setting uncommented does not load: %v", path, err)
	}
	for _, d := range def.values {
		if d.name == "config" {
			continue
		}
		if s := asIs.value(d.name); s.value != d.value || s.from != d.from {
			t.Errorf("%s as it is: %s = %q from %q, want the default %q", path, d.name, s.value, s.from, d.value)
		}
		if notInFile[d.name] {
			continue
		}
		s := all.value(d.name)
		if !strings.HasPrefix(s.from, uncommented+":") {
			t.Errorf("uncommented, %s comes from %q, not the file", d.name, s.from)
		}
		if s.value != d.value && !placeholders[d.name] {
			t.Errorf("%s shows %s = %q, but the default is %q", path, d.name, s.value, d.value)
		}
	}
}

// Every limit the server can reload is a flag.
func TestReloadableFlagsExist(t *testing.T) {
	def, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range server.ReloadableFlags() {
		if !slices.ContainsFunc(def.values, func(s setting) bool { return s.name == name }) {
			t.Errorf("server.ReloadableFlags names %q, which is no flag", name)
		}
	}
}

// connectCode sends a CONNECT and returns the CONNACK's reason code and
// the connection's local address.
func connectCode(t *testing.T, addr, id string) (codec.ReasonCode, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	mc := &mqttConn{t: t, c: c, r: bufio.NewReader(c), v: codec.V5}
	mc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, CleanStart: true, KeepAlive: 30, ClientID: []byte(id)})
	p, err := mc.read()
	ca, ok := p.(*codec.Connack)
	if err != nil || !ok {
		t.Fatalf("%s: got %+v, %v; want CONNACK", id, p, err)
	}
	return ca.Code, c.LocalAddr().String()
}

// waitLog waits until the broker's log, past offset from, holds want, and
// returns the log's length then.
func waitLog(t *testing.T, b *broker, from int, want string) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := b.stderr.String()
		if i := strings.Index(s[from:], want); i >= 0 {
			return len(s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log within 20s:\n%s", want, s[from:])
		}
		select {
		case <-b.exited:
			t.Fatalf("the broker exited (%v):\n%s", b.waitErr, s)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// SIGHUP rereads the config file: a new log level and connection limit
// apply at once, to the clients already connected too; a change that
// needs a restart, or a file that does not load, refuses the whole
// reload and the running configuration stays.
func TestReloadOnSIGHUP(t *testing.T) {
	file := writeFile(t, "gannet.toml", "log-level = \"info\"\nmax-connections = 0\n")
	b := startGannet(t, "--config", file)
	dialMQTT(t, b.mqtt, codec.V5, "first")
	if strings.Contains(b.stderr.String(), "client connected") {
		t.Fatalf("a debug line at log level info:\n%s", b.stderr.String())
	}
	hup := func() {
		t.Helper()
		if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	rewrite := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	rewrite("log-level = \"debug\"\nmax-connections = 2\n")
	mark := len(b.stderr.String())
	hup()
	end := waitLog(t, b, mark, "msg=reloaded signal=hangup")
	logs := b.stderr.String()[mark:end]
	for _, want := range []string{
		`msg="setting changed" setting=log-level from=info to=debug source=` + file + ":1",
		`msg="setting changed" setting=max-connections from=0 to=2 source=` + file + ":2",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the reload log lacks %q:\n%s", want, logs)
		}
	}
	dialMQTT(t, b.mqtt, codec.V5, "second")
	waitLog(t, b, end, `level=DEBUG msg="client connected" client=second`)
	// first and second hold the two places.
	if code, _ := connectCode(t, b.mqtt, "third"); code != codec.QuotaExceeded {
		t.Fatalf("a third client got CONNACK %v, want 0x97 quota exceeded", code)
	}

	// event-loops needs a restart: nothing of this file applies.
	rewrite("log-level = \"info\"\nmax-connections = 5\nevent-loops = 3\n")
	mark = len(b.stderr.String())
	hup()
	end = waitLog(t, b, mark, "reload failed: the running configuration is kept")
	logs = b.stderr.String()[mark:end]
	if !strings.Contains(logs, `only a restart can change event-loops (\"0\" to \"3\")`) {
		t.Errorf("the refusal does not name event-loops:\n%s", logs)
	}
	if strings.Contains(logs, "setting changed") {
		t.Errorf("settings changed by a refused reload:\n%s", logs)
	}
	code, local := connectCode(t, b.mqtt, "fourth")
	if code != codec.QuotaExceeded {
		t.Fatalf("after the refused reload a third client got CONNACK %v, want 0x97 still", code)
	}
	waitLog(t, b, end, `level=DEBUG msg="closing connection" remote=`+local) // still at debug

	// A file that does not load is refused with its line.
	rewrite("log-level = \"info\"\nmax-connections = = 5\n")
	mark = len(b.stderr.String())
	hup()
	end = waitLog(t, b, mark, "reload failed: the running configuration is kept")
	if logs = b.stderr.String()[mark:end]; !strings.Contains(logs, file+":2: not valid TOML") {
		t.Errorf("the refusal does not name the line:\n%s", logs)
	}

	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.wait(t); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; stderr:\n%s", code, b.stderr.String())
	}
}

// A reload that changes nothing says so and still rereads the files.
func TestReloadUnchanged(t *testing.T) {
	file := writeFile(t, "gannet.toml", fmt.Sprintf("max-sessions = %d\n", 10))
	b := startGannet(t, "--config", file)
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	end := waitLog(t, b, 0, "msg=reloaded")
	if logs := b.stderr.String()[:end]; strings.Contains(logs, "setting changed") || strings.Contains(logs, "failed") {
		t.Errorf("an unchanged reload changed or failed something:\n%s", logs)
	}
}
