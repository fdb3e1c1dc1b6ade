package main

// Configuration from three places besides the defaults.
//
// Every flag can be given on the command line (--max-inflight=64), as the
// environment variable GANNET_<FLAG> (upper case, dashes as underscores:
// GANNET_MAX_INFLIGHT=64), and as the key of its name in the TOML file
// --config (or GANNET_CONFIG) names (max-inflight = 64). A flag beats the
// environment, which beats the file, which beats the default. Values are
// what the flag takes, written as TOML: a number, true or false, or a
// string ("10s", "2GiB", ":1883"); the comma-separated lists (--join,
// --proxy-protocol-from) can also be TOML arrays of strings. An empty
// environment variable counts as unset.
//
// github.com/peterbourgon/ff/v3 does the layering: it sets each flag
// through the FlagSet, from the environment and then from the file unless
// a layer above set it, so every flag's own parsing and checks apply to
// every layer. The file is read by our parser on github.com/pelletier/go-toml/v2
// (its unstable.Parser gives the line of every key), so that an unknown
// key or a bad value is reported as FILE:LINE; ff's own TOML parser knows
// no lines. A bad value from the environment names the variable. Where a
// setting is checked against others after parsing (server.Config.Validate
// names flags as --name), the message is prefixed with where each named
// flag that did not come from the command line was set.
//
// The authentication sources (--password-file, --auth-http-url, ...) are
// asked in the order they were given: those on the command line first, in
// its order; then those the file names, in its order (a source whose value
// the environment replaces keeps the file's place); then those only the
// environment names, in the order of their names (as --help lists them).
//
// An environment variable that starts with GANNET_ but names no setting
// is an error, so that a misspelt one does not leave a default quietly in
// place, except for the variables Kubernetes makes for a Service whose
// name starts with "gannet" (GANNET_SERVICE_HOST, GANNET_PORT_1883_TCP,
// ...), which are ignored with a warning: a Service named gannet in the
// broker's namespace is the usual setup. GANNET_CLUSTER_SECRET holds the
// cluster secret and is not a flag.
//
// A reload (SIGHUP, or Config.Reload for POST /api/v1/reload) parses all
// three again, compares every setting with the running ones and applies
// the changes only if each can change without a restart: --log-level,
// and the limits server.Reloadable names; any other change refuses the
// whole reload, naming the settings, and the running configuration stays.
// The files that settings name (certificates, password and ACL files, JWT
// keys) are read again in any case. The process's environment does not
// change while it runs, so in practice a reload picks up the config file.

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"math"
	"net/url"
	"os"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/peterbourgon/ff/v3"

	"github.com/gannetmq/gannet/server"
)

// envPrefix starts the environment variable of every flag.
const envPrefix = "GANNET_"

// envName is the environment variable that sets the flag name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// commandOnly are the flags that are commands to this run of gannet, not
// settings: neither the environment nor the file may give them.
var commandOnly = map[string]bool{"print-config": true}

// notInFile are the flags the config file cannot set.
var notInFile = map[string]bool{"print-config": true, "config": true}

// listSettings take a comma-separated list, which the file may also give
// as an array of strings.
var listSettings = map[string]bool{"join": true, "proxy-protocol-from": true}

// settings is the broker's configuration as parsed, with where each value
// came from.
type settings struct {
	cfg         server.Config
	level       slog.Level
	format      string
	af          *authFlags
	printConfig bool
	*layers
}

// setting is one flag's effective value.
type setting struct {
	name  string
	value string // as the flag prints it (flag.Value.String)
	bare  bool   // a number or a boolean, unquoted in TOML
	from  string // "flag", GANNET_X, FILE:LINE, or "" for the default
}

// layers loads the environment and the config file over the command line
// and remembers where each value came from.
type layers struct {
	fs       *flag.FlagSet
	file     string            // the config file; "" when there is none
	from     map[string]string // flag -> "flag", GANNET_X or FILE:LINE; absent: default
	fileLine map[string]int    // flag -> the line of its key in the file
	values   []setting         // every flag, in name order
	warnings []string          // to log once the logger exists

	// While loading: the layer being read (envPrefix or "file") and, in
	// the file, the line of the key being set.
	phase string
	line  int
}

// settingError is a bad setting, said where it was set.
type settingError struct {
	where, msg string
}

func (e *settingError) Error() string { return e.where + ": " + e.msg }

// tracked wraps a flag's value while the environment and the file are
// read, to note where each value came from and to say so when one is bad.
type tracked struct {
	flag.Value
	name string
	ly   *layers
}

func (t *tracked) Set(v string) error {
	if err := t.Value.Set(v); err != nil {
		msg := fmt.Sprintf("invalid value %q for %s: %v", v, t.name, err)
		if g, ok := t.Value.(flag.Getter); ok {
			if _, ok := g.Get().(time.Duration); ok {
				msg += ` (a duration such as "90s", "5m" or "1h30m")`
			}
		}
		return &settingError{where: t.ly.where(t.name), msg: msg}
	}
	t.ly.from[t.name] = t.ly.where(t.name)
	return nil
}

// where says where a value set now comes from.
func (ly *layers) where(name string) string {
	if ly.phase == "file" {
		return fmt.Sprintf("%s:%d", ly.file, ly.line)
	}
	return envName(name)
}

// k8sServiceLink matches the variables Kubernetes makes for a Service
// named gannet or gannet-*: GANNET_SERVICE_HOST, GANNET_SERVICE_PORT[_NAME],
// GANNET_PORT and GANNET_PORT_<port>_<proto>[_PROTO|_PORT|_ADDR].
var k8sServiceLink = regexp.MustCompile(`^GANNET(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$`)

// loadLayers sets the flags that fs.Parse left alone from environ
// (os.Environ) and from the config file, and orders af's sources.
func loadLayers(fs *flag.FlagSet, af *authFlags, environ []string) (*layers, error) {
	ly := &layers{fs: fs, from: map[string]string{}, fileLine: map[string]int{}}
	fs.Visit(func(f *flag.Flag) { ly.from[f.Name] = "flag" })
	cmdOrder := slices.Clone(af.order)

	if err := ly.checkEnv(environ); err != nil {
		return nil, err
	}
	fs.VisitAll(func(f *flag.Flag) { f.Value = &tracked{Value: f.Value, name: f.Name, ly: ly} })
	ly.phase = envPrefix
	err := ff.Parse(fs, nil, ff.WithEnvVarPrefix(strings.TrimSuffix(envPrefix, "_")),
		ff.WithConfigFileFlag("config"), ff.WithConfigFileParser(ly.parseTOML))
	fs.VisitAll(func(f *flag.Flag) { f.Value = f.Value.(*tracked).Value })
	if err != nil {
		var se *settingError
		var pe *iofs.PathError
		switch {
		case errors.As(err, &se):
			return nil, se
		case errors.As(err, &pe):
			how := "--config"
			if ly.from["config"] != "flag" {
				how = envName("config")
			}
			return nil, fmt.Errorf("cannot read the config file (%s): %w", how, pe)
		}
		return nil, err
	}
	ly.orderSources(af, cmdOrder)
	fs.VisitAll(func(f *flag.Flag) {
		s := setting{name: f.Name, value: f.Value.String(), from: ly.from[f.Name]}
		if g, ok := f.Value.(flag.Getter); ok {
			switch v := g.Get().(type) {
			case bool, int, int64, uint, uint64:
				s.bare = true
			case float64:
				s.bare = !math.IsInf(v, 0) && !math.IsNaN(v)
			}
		}
		ly.values = append(ly.values, s)
	})
	return ly, nil
}

// checkEnv refuses a GANNET_ variable that names no setting.
func (ly *layers) checkEnv(environ []string) error {
	known := map[string]string{} // variable -> flag
	ly.fs.VisitAll(func(f *flag.Flag) { known[envName(f.Name)] = f.Name })
	var errs []error
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, envPrefix) || k == secretEnv || v == "" {
			continue
		}
		name, ok := known[k]
		switch {
		case ok && commandOnly[name]:
			errs = append(errs, fmt.Errorf("%s: --%s is given on the command line only", k, name))
		case ok:
		case k8sServiceLink.MatchString(k):
			ly.warnings = append(ly.warnings, fmt.Sprintf("ignoring the environment variable %s: no setting is called that "+
				"(Kubernetes makes such variables for a Service named gannet; enableServiceLinks: false in the pod spec stops them)", k))
		default:
			msg := fmt.Sprintf("%s: unknown environment variable: no setting is called that", k)
			if near := nearest(strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, envPrefix), "_", "-")), ly.fs); near != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", envName(near))
			}
			errs = append(errs, errors.New(msg))
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return cmp.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// parseTOML is ff's ConfigFileParser for the config file: it calls set for
// every top-level key, in the file's order, and reports every problem at
// its line.
func (ly *layers) parseTOML(r io.Reader, set func(name, value string) error) error {
	ly.file = ly.fs.Lookup("config").Value.String()
	ly.phase = "file"
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("cannot read the config file %s: %w", ly.file, err)
	}
	// Unmarshal first: it finds what the syntax alone allows but TOML does
	// not, a key given twice say, and names the line.
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			line, _ := de.Position()
			return &settingError{where: fmt.Sprintf("%s:%d", ly.file, line),
				msg: "not valid TOML: " + strings.TrimPrefix(de.Error(), "toml: ")}
		}
		return fmt.Errorf("%s: not valid TOML: %w", ly.file, err)
	}
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		var parts []string
		line := 0
		for it := e.Key(); it.Next(); {
			k := it.Node()
			if line == 0 {
				line = p.Shape(k.Raw).Start.Line
			}
			parts = append(parts, string(k.Data))
		}
		key := strings.Join(parts, ".")
		ly.line = line
		bad := func(format string, args ...any) error {
			return &settingError{where: fmt.Sprintf("%s:%d", ly.file, line), msg: fmt.Sprintf(format, args...)}
		}
		if e.Kind != unstable.KeyValue {
			return bad("[%s]: the file has no sections: every setting is a top-level key named as its flag (max-inflight = 64)", key)
		}
		if len(parts) > 1 || ly.fs.Lookup(key) == nil {
			msg := fmt.Sprintf("unknown setting %q", key)
			if near := nearest(key, ly.fs); near != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", near)
			}
			return bad("%s", msg)
		}
		if notInFile[key] {
			return bad("%s cannot be set in the config file, only on the command line", key)
		}
		v, err := tomlText(key, doc[key])
		if err != nil {
			return bad("%v", err)
		}
		ly.fileLine[key] = line
		if err := set(key, v); err != nil {
			return err // a settingError from tracked.Set, wrapped by ff
		}
	}
	if err := p.Error(); err != nil {
		return fmt.Errorf("%s: not valid TOML: %w", ly.file, err)
	}
	return nil
}

// tomlText turns a value from the file into the text its flag takes.
func tomlText(name string, v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case []any:
		if !listSettings[name] {
			return "", fmt.Errorf("%s takes one value, not an array", name)
		}
		items := make([]string, len(v))
		for i, it := range v {
			s, ok := it.(string)
			if !ok {
				return "", fmt.Errorf("%s: every item of the array must be a string", name)
			}
			items[i] = s
		}
		return strings.Join(items, ","), nil
	case map[string]any:
		return "", fmt.Errorf("%s takes a value, not a table", name)
	}
	return "", fmt.Errorf("%s takes a number, a boolean or a string, not a %T", name, v)
}

// nearest returns the flag whose name is closest to name, if it is close
// enough to be a likely misspelling.
func nearest(name string, fs *flag.FlagSet) string {
	best, dist := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		if d := editDistance(name, f.Name); d < dist {
			best, dist = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, sub)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// orderSources puts af's sources in the order the package comment states.
// cmdOrder is their order after the command line alone.
func (ly *layers) orderSources(af *authFlags, cmdOrder []string) {
	flagOf := map[string]string{} // source -> its flag
	ly.fs.VisitAll(func(f *flag.Flag) {
		if sf, ok := f.Value.(*sourceFlag); ok {
			flagOf[sf.name] = f.Name
		}
	})
	rank := func(src string) (int, int, string) {
		if i := slices.Index(cmdOrder, src); i >= 0 {
			return 0, i, ""
		}
		if line, ok := ly.fileLine[flagOf[src]]; ok {
			return 1, line, ""
		}
		return 2, 0, flagOf[src]
	}
	slices.SortStableFunc(af.order, func(a, b string) int {
		ga, ia, na := rank(a)
		gb, ib, nb := rank(b)
		return cmp.Or(cmp.Compare(ga, gb), cmp.Compare(ia, ib), cmp.Compare(na, nb))
	})
}

// value returns the setting of the flag name.
func (ly *layers) value(name string) setting {
	for _, s := range ly.values {
		if s.name == name {
			return s
		}
	}
	return setting{name: name}
}

// flagRef matches a flag named in a message.
var flagRef = regexp.MustCompile(`--([a-z0-9]+(?:-[a-z0-9]+)*)`)

// annotate prefixes each line of err that names a flag (as --name) or the
// value (a path or URL) of a setting from the environment or the file
// with where that setting was given.
func (ly *layers) annotate(err error) error {
	if err == nil || ly == nil {
		return err
	}
	lines := strings.Split(err.Error(), "\n")
	changed := false
	for i, line := range lines {
		var where []string
		note := func(name string) {
			if w := ly.from[name]; w != "" && w != "flag" && !slices.Contains(where, w) {
				where = append(where, w)
			}
		}
		for _, m := range flagRef.FindAllStringSubmatch(line, -1) {
			note(m[1])
		}
		for _, s := range ly.values {
			if strings.Contains(s.value, "/") && len(s.value) > 1 && strings.Contains(line, s.value) {
				note(s.name)
			}
		}
		if len(where) > 0 {
			lines[i] = strings.Join(where, ", ") + ": " + line
			changed = true
		}
	}
	if !changed {
		return err
	}
	return errors.New(strings.Join(lines, "\n"))
}

// sizeFlag is a size in bytes given as parseSize reads it (2GiB).
type sizeFlag struct{ n *int64 }

func (f sizeFlag) String() string {
	if f.n == nil {
		return "0"
	}
	return strconv.FormatInt(*f.n, 10)
}

func (f sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*f.n = n
	return nil
}

func (f sizeFlag) Get() any { return *f.n }

// Masking secrets for --print-config and the reload log.

// secretName matches a flag whose value is a secret itself (not the name
// of a file that holds one).
var secretName = regexp.MustCompile(`(secret|password|token|credential)`)

// dsnSecret matches a password in a key=value connection string
// (PostgreSQL's host=db password=... form).
var dsnSecret = regexp.MustCompile(`(?i)\b((?:ssl)?password|secret|token)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

// masked returns s's value with secrets replaced by xxxxx.
func masked(s setting) string {
	v := s.value
	if v == "" {
		return v
	}
	if secretName.MatchString(s.name) && !strings.HasSuffix(s.name, "-file") {
		return "xxxxx"
	}
	if strings.Contains(v, "://") {
		if u, err := url.Parse(v); err == nil {
			q := u.Query()
			hid := false
			for k := range q {
				if secretName.MatchString(strings.ToLower(k)) {
					q.Set(k, "xxxxx")
					hid = true
				}
			}
			if hid {
				u.RawQuery = q.Encode()
			}
			return u.Redacted()
		}
		return "xxxxx" // not a URL we can take apart: hide it whole
	}
	if strings.HasSuffix(s.name, "-url") {
		return dsnSecret.ReplaceAllString(v, "${1}=xxxxx")
	}
	return v
}

// tomlQuote writes s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// print writes the effective configuration as a TOML file, each setting
// with where its value came from; secrets are masked.
func (st *settings) print(w io.Writer) {
	fmt.Fprintln(w, "# gannet's effective configuration: every setting, and where its value came from")
	fmt.Fprintln(w, "# (default, flag, environment variable or config file line); secrets are masked.")
	if st.file != "" {
		fmt.Fprintf(w, "# config file: %s\n", st.file)
	}
	if ic := st.cfg.Cluster; ic != nil && ic.Secret != "" {
		from := secretEnv + " (environment)"
		if f := st.value("cluster-secret-file"); f.value != "" {
			from = "--cluster-secret-file " + f.value
		}
		fmt.Fprintf(w, "# cluster secret: %d bytes from %s\n", len(ic.Secret), from)
	}
	if len(st.af.order) > 1 {
		fmt.Fprintf(w, "# authentication sources, in the order they are asked: %s\n", strings.Join(st.af.order, ", "))
	}
	for _, s := range st.values {
		if notInFile[s.name] {
			continue
		}
		v := masked(s)
		if !s.bare {
			v = tomlQuote(v)
		}
		from := "default"
		switch {
		case s.from == "flag":
			from = "flag --" + s.name
		case strings.HasPrefix(s.from, envPrefix):
			from = "environment " + s.from
		case s.from != "":
			from = "file " + s.from
		}
		line := s.name + " = " + v
		fmt.Fprintf(w, "%-50s # %s\n", line, from)
	}
}

// reloader reloads the configuration, on SIGHUP and through Config.Reload.
type reloader struct {
	args  []string
	srv   *server.Server
	level *slog.LevelVar
	log   *slog.Logger

	mu  sync.Mutex
	cur *settings // as running
}

// reload reloads what can change without a restart and reads the files
// the settings name again, logging what it did (with attrs saying what
// asked for it). It returns what failed.
func (r *reloader) reload(attrs ...any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	serr := r.reloadSettings()
	if serr != nil {
		r.log.Error("reload failed: the running configuration is kept", append(attrs, "err", serr)...)
	}
	ferr := errors.Join(r.srv.RefreshAuth(), r.srv.ReloadTLS(), r.srv.ReloadClusterTLS(), r.srv.ReloadAPIKeys())
	if ferr != nil {
		r.log.Error("reload failed; what did not load keeps its old contents", append(attrs, "err", ferr)...)
	}
	if serr == nil && ferr == nil {
		r.log.Info("reloaded", attrs...)
	}
	return errors.Join(serr, ferr)
}

// reloadSettings parses the configuration again and applies what changed,
// or nothing.
func (r *reloader) reloadSettings() error {
	next, err := parseFlags(r.args, io.Discard)
	if err != nil {
		return err
	}
	old := r.cur
	var changed []setting
	var restart []string
	for _, n := range next.values {
		o := old.value(n.name)
		if n.value == o.value {
			continue
		}
		changed = append(changed, n)
		if n.name != "log-level" && !server.Reloadable(n.name) {
			restart = append(restart, fmt.Sprintf("%s (%s to %s)", n.name, tomlQuote(masked(o)), tomlQuote(masked(n))))
		}
	}
	if secret(old) != secret(next) {
		restart = append(restart, "the cluster secret")
	}
	if len(restart) > 0 {
		return fmt.Errorf("only a restart can change %s", strings.Join(restart, ", "))
	}
	if _, err := r.srv.Reload(next.cfg); err != nil {
		return err
	}
	r.level.Set(next.level)
	if next.cfg.MemoryLimit != old.cfg.MemoryLimit && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(next.cfg.MemoryLimit)
	}
	for _, n := range changed {
		from := n.from
		if from == "" {
			from = "default"
		}
		r.log.Info("setting changed", "setting", n.name, "from", masked(old.value(n.name)), "to", masked(n), "source", from)
	}
	r.cur = next
	return nil
}

// secret is the cluster secret st runs with, "" for none.
func secret(st *settings) string {
	if st.cfg.Cluster == nil {
		return ""
	}
	return st.cfg.Cluster.Secret
}
