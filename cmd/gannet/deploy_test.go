package main

import (
	"bufio"
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The container image (Dockerfile) and the Kubernetes manifests
// (deploy/kubernetes/) are checked here against the broker they run: the
// flags they pass exist, and the names, ports, paths and users that must
// agree between them do. Neither Docker nor a Kubernetes cluster is needed.

const (
	dockerfilePath = "../../Dockerfile"
	k8sDir         = "../../deploy/kubernetes"
)

// dockerfile is what the checks need of the Dockerfile: the instructions
// of its final stage, and the build command of any stage.
type dockerfile struct {
	from       string
	user       string
	volumes    []string
	exposed    []string
	entrypoint []string
	cmd        []string
	copies     []string // COPY instructions of the final stage
	build      string   // the RUN instruction that runs go build
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(dockerfilePath)
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	var inst string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && inst == "") {
			continue
		}
		if more, ok := strings.CutSuffix(line, `\`); ok {
			inst += more + " "
			continue
		}
		inst += line
		word, rest, _ := strings.Cut(inst, " ")
		rest = strings.TrimSpace(rest)
		inst = ""
		list := func() []string {
			var v []string
			if json.Unmarshal([]byte(rest), &v) != nil {
				v = strings.Fields(rest)
			}
			return v
		}
		switch strings.ToUpper(word) {
		case "FROM":
			d = dockerfile{from: strings.Fields(rest)[len(strings.Fields(rest))-1], build: d.build}
			if f := strings.Fields(rest); len(f) >= 3 && strings.EqualFold(f[len(f)-2], "AS") {
				d.from = f[len(f)-3]
			}
		case "USER":
			d.user = rest
		case "VOLUME":
			d.volumes = append(d.volumes, list()...)
		case "EXPOSE":
			d.exposed = append(d.exposed, strings.Fields(rest)...)
		case "ENTRYPOINT":
			d.entrypoint = list()
		case "CMD":
			d.cmd = list()
		case "COPY":
			d.copies = append(d.copies, rest)
		case "RUN":
			if strings.Contains(rest, "go build") {
				d.build = rest
			}
		}
	}
	return d
}

// k8sDoc is one manifest, decoded far enough for the checks.
type k8sDoc struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Resources []string `yaml:"resources"` // Kustomization
	Spec      struct {
		// Service
		ClusterIP                string             `yaml:"clusterIP"`
		PublishNotReadyAddresses bool               `yaml:"publishNotReadyAddresses"`
		Ports                    []k8sServicePort   `yaml:"ports"`
		Selector                 yaml.Node          `yaml:"selector"` // a map for a Service, matchLabels for the others
		MaxUnavailable           *int               `yaml:"maxUnavailable"`
		ServiceName              string             `yaml:"serviceName"`
		Replicas                 int                `yaml:"replicas"`
		Template                 k8sPodTemplate     `yaml:"template"`
		VolumeClaimTemplates     []k8sClaimTemplate `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type k8sServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
	Protocol   string `yaml:"protocol"`
}

type k8sClaimTemplate struct {
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
}

type k8sPodTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds int   `yaml:"terminationGracePeriodSeconds"`
		EnableServiceLinks            *bool `yaml:"enableServiceLinks"`
		SecurityContext               struct {
			RunAsNonRoot bool   `yaml:"runAsNonRoot"`
			RunAsUser    *int64 `yaml:"runAsUser"`
			FSGroup      *int64 `yaml:"fsGroup"`
		} `yaml:"securityContext"`
		Containers []k8sContainer `yaml:"containers"`
		Volumes    []struct {
			Name   string `yaml:"name"`
			Secret *struct {
				SecretName string `yaml:"secretName"`
			} `yaml:"secret"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name string   `yaml:"name"`
	Args []string `yaml:"args"`
	Env  []struct {
		Name      string `yaml:"name"`
		ValueFrom struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	StartupProbe   *k8sProbe `yaml:"startupProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	Lifecycle      struct {
		PreStop *yaml.Node `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

// readManifests decodes every document of every YAML file in k8sDir,
// refusing a field the structs above do not know only where they are
// complete enough to say so (not here: they hold what is checked).
func readManifests(t *testing.T) (docs []k8sDoc, files []string) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s (%v)", k8sDir, err)
	}
	for _, p := range paths {
		files = append(files, filepath.Base(p))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var d k8sDoc
			err := dec.Decode(&d)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if d.Kind == "" {
				t.Fatalf("%s: a document without a kind", p)
			}
			docs = append(docs, d)
		}
	}
	return docs, files
}

// selectorLabels reads a Service's selector or another kind's
// selector.matchLabels.
func selectorLabels(t *testing.T, d k8sDoc) map[string]string {
	t.Helper()
	var m map[string]string
	var ml struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	if d.Kind == "Service" {
		if err := d.Spec.Selector.Decode(&m); err != nil {
			t.Fatalf("%s %s: selector: %v", d.Kind, d.Metadata.Name, err)
		}
		return m
	}
	if err := d.Spec.Selector.Decode(&ml); err != nil {
		t.Fatalf("%s %s: selector: %v", d.Kind, d.Metadata.Name, err)
	}
	return ml.MatchLabels
}

// argValues maps each --name=value argument to its value.
func argValues(t *testing.T, args []string) map[string]string {
	t.Helper()
	v := make(map[string]string)
	for _, a := range args {
		name, val, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("argument %q is not --name=value", a)
			continue
		}
		v[name] = val
	}
	return v
}

func portOfAddr(t *testing.T, flag, addr string) (string, int) {
	t.Helper()
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("--%s=%s: %v", flag, addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("--%s=%s: %v", flag, addr, err)
	}
	return host, port
}

// k8sBytes reads a Kubernetes memory quantity with a binary suffix.
func k8sBytes(t *testing.T, q string) int64 {
	t.Helper()
	for _, s := range []string{"Ki", "Mi", "Gi", "Ti"} {
		if strings.HasSuffix(q, s) {
			q += "B"
			break
		}
	}
	n, err := parseSize(q)
	if err != nil {
		t.Fatalf("memory quantity %q: %v", q, err)
	}
	return n
}

func TestKubernetesManifests(t *testing.T) {
	docs, files := readManifests(t)
	byKind := make(map[string][]k8sDoc)
	for _, d := range docs {
		byKind[d.Kind] = append(byKind[d.Kind], d)
	}
	// kubectl apply -k takes every manifest.
	if k := byKind["Kustomization"]; len(k) != 1 {
		t.Fatalf("%d kustomization.yaml documents, want 1", len(k))
	}
	want := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == "kustomization.yaml" })
	if got := slices.Sorted(slices.Values(byKind["Kustomization"][0].Resources)); !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml lists %q, want every manifest %q", got, want)
	}
	if len(byKind["StatefulSet"]) != 1 || len(byKind["Service"]) != 2 || len(byKind["PodDisruptionBudget"]) != 1 {
		t.Fatalf("want a StatefulSet, two Services and a PodDisruptionBudget; have %d, %d, %d",
			len(byKind["StatefulSet"]), len(byKind["Service"]), len(byKind["PodDisruptionBudget"]))
	}
	sts := byKind["StatefulSet"][0]
	pod := sts.Spec.Template
	labels := pod.Metadata.Labels
	var headless, clients k8sDoc
	for _, s := range byKind["Service"] {
		if s.Spec.ClusterIP == "None" {
			headless = s
		} else {
			clients = s
		}
	}
	if headless.Kind == "" || clients.Kind == "" {
		t.Fatal("want one headless Service (clusterIP: None) and one for clients")
	}
	if len(labels) == 0 {
		t.Fatal("the pod template has no labels")
	}
	for _, d := range []k8sDoc{sts, headless, clients, byKind["PodDisruptionBudget"][0]} {
		sel := selectorLabels(t, d)
		if len(sel) == 0 {
			t.Errorf("%s %s selects nothing", d.Kind, d.Metadata.Name)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s %s selects %s=%s, which the pods do not carry (%v)", d.Kind, d.Metadata.Name, k, v, labels)
			}
		}
	}

	if sts.Spec.ServiceName != headless.Metadata.Name {
		t.Errorf("the StatefulSet's serviceName is %q, want the headless Service %q", sts.Spec.ServiceName, headless.Metadata.Name)
	}
	if !headless.Spec.PublishNotReadyAddresses {
		t.Error("the headless Service must publish pods before they are ready, or the first nodes cannot find each other")
	}
	if pdb := byKind["PodDisruptionBudget"][0]; pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != 1 {
		t.Errorf("the PodDisruptionBudget allows %v nodes down at once, want 1", pdb.Spec.MaxUnavailable)
	}

	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	args := argValues(t, c.Args)
	known := flagNames(t)
	for name := range args {
		if !slices.Contains(known, name) {
			t.Errorf("the StatefulSet passes --%s, which gannet does not have", name)
		}
	}
	env := make(map[string]string) // name -> fieldPath
	for _, e := range c.Env {
		env[e.Name] = e.ValueFrom.FieldRef.FieldPath
	}
	ports := make(map[string]int) // name/protocol -> port
	for _, p := range c.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "TCP"
		}
		ports[p.Name+"/"+proto] = p.ContainerPort
	}
	portNamed := func(name string) (int, bool) {
		for k, v := range ports {
			if strings.HasPrefix(k, name+"/") {
				return v, true
			}
		}
		return 0, false
	}

	// The cluster forms: --join names the headless Service on the
	// --cluster-listen port, the listener binds every address, and the
	// pod's own address, from the downward API, is what it advertises.
	clusterHost, clusterPort := portOfAddr(t, "cluster-listen", args["cluster-listen"])
	joinHost, joinPort := portOfAddr(t, "join", args["join"])
	if joinHost != headless.Metadata.Name && !strings.HasPrefix(joinHost, headless.Metadata.Name+".") {
		t.Errorf("--join=%s does not name the headless Service %q", args["join"], headless.Metadata.Name)
	}
	if joinPort != clusterPort {
		t.Errorf("--join port %d, but the nodes listen on %d", joinPort, clusterPort)
	}
	if clusterHost != "" && clusterHost != "0.0.0.0" && clusterHost != "::" {
		t.Errorf("--cluster-listen=%s binds one address; a pod's is not known in advance", args["cluster-listen"])
	}
	if _, ok := args["cluster-advertise"]; ok {
		t.Error("--cluster-advertise is set; the pod's address comes from POD_IP")
	}
	if env[podIPEnv] != "status.podIP" {
		t.Errorf("%s comes from %q, want the downward API's status.podIP", podIPEnv, env[podIPEnv])
	}
	if args["node-name"] != "$(POD_NAME)" || env["POD_NAME"] != "metadata.name" {
		t.Errorf("--node-name=%s with POD_NAME from %q: want the pod's stable name", args["node-name"], env["POD_NAME"])
	}
	gossip := clusterPort + 1
	if ports["cluster/TCP"] != clusterPort || ports["gossip/TCP"] != gossip || ports["gossip-udp/UDP"] != gossip {
		t.Errorf("container ports %v, want cluster %d and gossip %d (TCP and UDP)", ports, clusterPort, gossip)
	}
	for _, sp := range headless.Spec.Ports {
		if want := ports[sp.TargetPort+"/"+cmp.Or(sp.Protocol, "TCP")]; want == 0 || want != sp.Port {
			t.Errorf("headless Service port %+v does not match a container port %v", sp, ports)
		}
	}

	// Clients reach the MQTT port, and only it.
	_, mqttPort := portOfAddr(t, "listen", args["listen"])
	if len(clients.Spec.Ports) != 1 || clients.Spec.Ports[0].TargetPort != "mqtt" || ports["mqtt/TCP"] != mqttPort {
		t.Errorf("the clients' Service ports %+v, container ports %v: want the MQTT port %d alone", clients.Spec.Ports, ports, mqttPort)
	}

	// Probes ask the HTTP listener for /healthz and /readyz.
	_, httpPort := portOfAddr(t, "http-listen", args["http-listen"])
	for _, p := range []struct {
		what  string
		probe *k8sProbe
		path  string
	}{{"startup", c.StartupProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s probe over HTTP", p.what)
			continue
		}
		port, ok := portNamed(p.probe.HTTPGet.Port)
		if n, err := strconv.Atoi(p.probe.HTTPGet.Port); err == nil {
			port, ok = n, true
		}
		if p.probe.HTTPGet.Path != p.path || !ok || port != httpPort {
			t.Errorf("%s probe asks %s on port %s (%d), want %s on the --http-listen port %d",
				p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, port, p.path, httpPort)
		}
	}

	// Non-root, as the image's user; data on the claimed volume at
	// --data-dir, the directory the image declares a volume.
	d := readDockerfile(t)
	sc := pod.Spec.SecurityContext
	if !sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 || sc.FSGroup == nil {
		t.Errorf("pod security context %+v: want runAsNonRoot, a non-zero runAsUser and an fsGroup for the volume", sc)
	} else if uid, _, _ := strings.Cut(d.user, ":"); uid != strconv.FormatInt(*sc.RunAsUser, 10) {
		t.Errorf("the pod runs as %d, the image as %q", *sc.RunAsUser, d.user)
	}
	if !c.SecurityContext.ReadOnlyRootFilesystem || c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("container security context %+v: want a read-only root and no privilege escalation", c.SecurityContext)
	}
	mounts := make(map[string]string) // volume -> path
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("%d volume claim templates, want 1 for the data", len(sts.Spec.VolumeClaimTemplates))
	}
	data := sts.Spec.VolumeClaimTemplates[0].Metadata.Name
	if mounts[data] == "" || mounts[data] != args["data-dir"] {
		t.Errorf("the claimed volume %q is mounted at %q, --data-dir is %q", data, mounts[data], args["data-dir"])
	}
	if !slices.Contains(d.volumes, args["data-dir"]) || !slices.Contains(d.cmd, "--data-dir="+args["data-dir"]) {
		t.Errorf("the image declares volumes %q and runs %q; want both on --data-dir %s", d.volumes, d.cmd, args["data-dir"])
	}
	secretOK := false
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil && mounts[v.Name] != "" && filepath.Dir(args["cluster-secret-file"]) == mounts[v.Name] {
			secretOK = true
		}
	}
	if !secretOK {
		t.Errorf("--cluster-secret-file=%s is not in a mounted Secret", args["cluster-secret-file"])
	}

	// Resources requested; the broker refuses clients before the memory
	// limit is reached.
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("no %s request", r)
		}
	}
	if lim, ok := c.Resources.Limits["memory"]; !ok {
		t.Error("no memory limit")
	} else if ml, err := parseSize(args["memory-limit"]); err != nil || ml == 0 || ml >= k8sBytes(t, lim) {
		t.Errorf("--memory-limit=%s, want it below the container's limit %s", args["memory-limit"], lim)
	}
	if n, err := strconv.Atoi(args["event-loops"]); err != nil || strconv.Itoa(n) != c.Resources.Requests["cpu"] {
		t.Errorf("--event-loops=%s, want the CPUs requested (%s)", args["event-loops"], c.Resources.Requests["cpu"])
	}

	// Stopping: SIGTERM drains for --drain-timeout at most, then the
	// broker takes up to 10 s to stop (main.go); the grace period must
	// cover both, or the drain is cut short by SIGKILL.
	if dt, err := time.ParseDuration(args["drain-timeout"]); err != nil || dt <= 0 {
		t.Errorf("--drain-timeout=%q: want the drain that SIGTERM starts bounded explicitly", args["drain-timeout"])
	} else if g := time.Duration(pod.Spec.TerminationGracePeriodSeconds) * time.Second; g < dt+10*time.Second+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %s leaves no room for --drain-timeout=%s and the broker's stop", g, dt)
	}
	if c.Lifecycle.PreStop != nil {
		t.Error("a preStop hook: the image has nothing to run in it, and SIGTERM starts the drain")
	}
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		t.Error("enableServiceLinks is not false: the gannet Service's variables would look like GANNET_ settings")
	}

	// The image exposes the ports the pod declares.
	for k, p := range ports {
		want := strconv.Itoa(p)
		if strings.HasSuffix(k, "/UDP") {
			want += "/udp"
		}
		if !slices.Contains(d.exposed, want) {
			t.Errorf("the image does not expose %s (%s); it does %q", want, k, d.exposed)
		}
	}
}

// shellWords splits a shell command line into words, as sh would for
// the simple quoting a Dockerfile's RUN uses.
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, w.String())
	}
	return words
}

// The image: a static binary built with cgo off, on a base that is not the
// build's, run as a user that is not root, with --data-dir on its volume.
// The build command is run here as the Dockerfile runs it, and the binary
// checked for a dynamic loader or shared libraries.
func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)
	if strings.Contains(d.from, "golang") || d.from == "" {
		t.Errorf("the final stage is FROM %q; want a base without the toolchain", d.from)
	}
	if uid, _, _ := strings.Cut(d.user, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("USER %q: the broker must not run as root", d.user)
	}
	if len(d.entrypoint) != 1 || !slices.ContainsFunc(d.copies, func(c string) bool { return strings.HasSuffix(c, " "+d.entrypoint[0]) }) {
		t.Errorf("ENTRYPOINT %q is not a file the final stage copies in (%q)", d.entrypoint, d.copies)
	}
	if len(d.volumes) != 1 || !slices.Contains(d.cmd, "--data-dir="+d.volumes[0]) {
		t.Errorf("VOLUME %q, CMD %q: want --data-dir on the volume", d.volumes, d.cmd)
	}

	// The build: environment assignments, then go build and its flags.
	f := shellWords(d.build)
	i := slices.Index(f, "go")
	if i < 0 || i+1 >= len(f) || f[i+1] != "build" {
		t.Fatalf("no go build in %q", d.build)
	}
	var env []string
	for _, w := range f[:i] {
		if k, v, ok := strings.Cut(w, "="); ok && !strings.HasPrefix(w, "--") && !strings.Contains(v, "$") {
			env = append(env, k+"="+v)
		}
	}
	if !slices.Contains(env, "CGO_ENABLED=0") {
		t.Errorf("the build runs with %q, not CGO_ENABLED=0", env)
	}
	var flags []string
	pkg := ""
	for j := i + 2; j < len(f); j++ {
		switch w := f[j]; {
		case w == "&&":
			j = len(f)
		case w == "-o":
			j++
		case strings.HasPrefix(w, "./"):
			pkg = w
		default:
			flags = append(flags, w)
		}
	}
	if pkg != "./cmd/gannet" {
		t.Fatalf("the image builds %q, want ./cmd/gannet", pkg)
	}
	if testing.Short() {
		t.Skip("the static build is skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "gannet")
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", out, ".")...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v with %q: %v\n%s", cmd.Args, env, err, b)
	}
	ef, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the image's binary is dynamically linked (program header %v)", p.Type)
		}
	}
	if libs, _ := ef.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the image's binary needs %q", libs)
	}
}
