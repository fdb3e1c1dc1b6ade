package server

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// grafanaDashboard is deploy/grafana/gannet.json, from this package's
// directory.
const grafanaDashboard = "../deploy/grafana/gannet.json"

// dashboardQueries reads the dashboard, checks the shape Grafana needs
// (panels on the ${DS_PROMETHEUS} data source, unique ids, a query in
// every panel) and returns every query in it: the panels' expressions and
// the template variables' queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(grafanaDashboard)
	if err != nil {
		t.Fatal(err)
	}
	type datasource struct{ Type, UID string }
	type target struct {
		Datasource datasource
		Expr       string
		RefID      string
	}
	type panel struct {
		ID         int
		Type       string
		Title      string
		Datasource *datasource
		GridPos    struct{ H, W, X, Y int }
		Targets    []target
	}
	var d struct {
		SchemaVersion int
		UID           string
		Title         string
		Panels        []panel
		Templating    struct {
			List []struct {
				Name, Type string
				Query      any
				Definition string
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", grafanaDashboard, err)
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("dashboard schemaVersion %d, uid %q, title %q: want a schemaVersion of 36 or more, a uid and a title",
			d.SchemaVersion, d.UID, d.Title)
	}
	var queries []string
	hasDS := false
	for _, v := range d.Templating.List {
		switch {
		case v.Name == "DS_PROMETHEUS":
			hasDS = v.Type == "datasource" && v.Query == "prometheus"
		case v.Type == "query":
			q, ok := v.Query.(map[string]any)
			if !ok || q["query"] != v.Definition {
				t.Errorf("variable %s: query %v does not match its definition %q", v.Name, v.Query, v.Definition)
			}
			queries = append(queries, v.Definition)
		}
	}
	if !hasDS {
		t.Error("the dashboard has no DS_PROMETHEUS variable of type datasource for Prometheus")
	}
	ds := datasource{Type: "prometheus", UID: "${DS_PROMETHEUS}"}
	ids := map[int]string{}
	for _, p := range d.Panels {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q have one id, %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is outside Grafana's 24 columns", p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != ds {
			t.Errorf("panel %q: data source %v, want %v", p.Title, p.Datasource, ds)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource != ds || tg.RefID == "" || strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: query %+v lacks the data source, a refId or an expression", p.Title, tg)
			}
			queries = append(queries, tg.Expr)
		}
	}
	return queries
}

var (
	// dashboardMetric is a metric name of the broker's in a query.
	dashboardMetric = regexp.MustCompile(`\bgannet_[a-zA-Z0-9_]*`)
	// dashboardQuantile is a quantile taken from a histogram's buckets:
	// it must group by le, Prometheus' bucket label.
	dashboardQuantile = regexp.MustCompile(`histogram_quantile\(\s*[0-9.]+\s*,\s*sum by \(([^)]*)\) \((?:rate|increase)\((gannet_[a-z_]+)_bucket\{`)
)

// Every metric that deploy/grafana/gannet.json queries is one that the
// broker serves at /metrics, once a cluster of two with a store has
// carried QoS 1 traffic to a persistent session; and the latency
// histograms it reads are Prometheus histograms (le buckets), which
// histogram_quantile reads in Prometheus and VictoriaMetrics alike, with
// observations in each.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	queries := dashboardQueries(t)
	want := map[string]bool{}
	histograms := map[string]bool{}
	for _, q := range queries {
		for _, name := range dashboardMetric.FindAllString(q, -1) {
			want[name] = true
		}
		n := strings.Count(q, "histogram_quantile(")
		ms := dashboardQuantile.FindAllStringSubmatch(q, -1)
		if len(ms) != n {
			t.Errorf("query %q: a histogram_quantile not of the form histogram_quantile(q, sum by (..., le) (rate(x_bucket{...}[...])))", q)
		}
		for _, m := range ms {
			by := strings.Split(m[1], ",")
			for i := range by {
				by[i] = strings.TrimSpace(by[i])
			}
			if !slices.Contains(by, "le") {
				t.Errorf("query %q: histogram_quantile over sums that drop le", q)
			}
			histograms[m[2]] = true
		}
	}
	if len(want) < 20 || len(histograms) < 5 {
		t.Fatalf("the dashboard queries %d metrics and %d histograms; expected the broker's main ones", len(want), len(histograms))
	}

	nodes := startCluster(t, 2, nil) // with the default store (--durability sync)
	s := nodes[0]
	sub, _ := persistentV5(t, s, "dash-sub")
	sub.subscribe("dash/#", 1)
	remote := dialRaw(t, nodes[1], codec.V5)
	remote.connect("dash-remote", nil)
	remote.subscribe("dash/#", 0)
	waitRoutes(t, s, 1)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("dash-pub", nil)
	for i := range 20 {
		pub.publishAcked("dash/t", fmt.Sprint(i), 1, false)
		p, ok := sub.expect().(*codec.Publish)
		if !ok || string(p.Payload) != fmt.Sprint(i) {
			t.Fatalf("subscriber got %+v, want message %d", p, i)
		}
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}

	// The histograms fill as the traffic's timings come in: the loops'
	// lag at their next sweep, the round trip at lane 0's next ping.
	counted := []string{"gannet_delivery_latency_seconds_count", "gannet_publish_ack_latency_seconds_count",
		"gannet_store_commit_seconds_count", "gannet_event_loop_lag_seconds_count",
		`gannet_interlink_round_trip_seconds_count{peer="n2"}`}
	var got map[string]float64
	waitFor(t, "observations in every latency histogram", func() bool {
		got = opsScrape(t, s)
		for _, name := range counted {
			if got[name] == 0 {
				return false
			}
		}
		return true
	})

	families := map[string]bool{}
	leBuckets := map[string]bool{}
	for key := range got {
		name, labels, _ := strings.Cut(key, "{")
		families[name] = true
		if base, ok := strings.CutSuffix(name, "_bucket"); ok && strings.Contains(labels, `le="+Inf"`) {
			leBuckets[base] = true
		}
	}
	var missing []string
	for name := range want {
		if !families[name] {
			missing = append(missing, name)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics that /metrics does not serve: %s", strings.Join(missing, ", "))
	}
	for h := range histograms {
		if !leBuckets[h] {
			t.Errorf("the dashboard reads %s as a histogram, but /metrics serves no %s_bucket{le=\"+Inf\"}", h, h)
		}
	}
}
