package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Results are the JSON results of a comparison, by broker and run key:
// files named <broker>-<key>.json in one directory.
type Results map[string]map[string]*Result

// LoadResults reads every <broker>-<key>.json in dir.
func LoadResults(dir string) (Results, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	rs := Results{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		broker, key, ok := strings.Cut(name, "-")
		if !ok {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var r Result
		if len(b) == 0 || json.Unmarshal(b, &r) != nil {
			continue // a run that failed before printing
		}
		if rs[broker] == nil {
			rs[broker] = map[string]*Result{}
		}
		rs[broker][key] = &r
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("no results in %s", dir)
	}
	return rs, nil
}

// brokers lists the brokers with Gannet first, the one the ratios are of.
func (rs Results) brokers() []string {
	var bs []string
	for b := range rs {
		if b != "gannet" {
			bs = append(bs, b)
		}
	}
	slices.Sort(bs)
	return append([]string{"gannet"}, bs...)
}

func ratio(a, b float64) string {
	if b == 0 || a == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64)
}

// Table writes a Markdown table per figure for the runs named in keys:
// each broker's value and Gannet's ratio to it.
func (rs Results) Table(w io.Writer, keys []string) {
	bs := rs.brokers()
	figures := []struct {
		title string
		get   func(*Result) float64
		unit  string
	}{
		{"Broker CPU per delivered message (µs); ratio Gannet/other", func(r *Result) float64 { return r.BrokerUsPer }, "%.2f"},
		{"Messages received per second; ratio Gannet/other", func(r *Result) float64 { return r.RecvRate }, "%.0f"},
		{"p99 latency (ms); ratio Gannet/other", p99ms, "%.2f"},
		{"Messages lost (QoS 0: dropped by the broker)", func(r *Result) float64 { return float64(r.Lost) }, "%.0f"},
	}
	for _, f := range figures {
		fmt.Fprintf(w, "\n%s\n\n| run |", f.title)
		for _, b := range bs {
			fmt.Fprintf(w, " %s |", b)
		}
		for _, b := range bs[1:] {
			fmt.Fprintf(w, " vs %s |", b)
		}
		fmt.Fprint(w, "\n|---|")
		for range 2*len(bs) - 1 {
			fmt.Fprint(w, "---:|")
		}
		fmt.Fprintln(w)
		for _, k := range keys {
			fmt.Fprintf(w, "| %s |", k)
			vals := make([]float64, len(bs))
			for i, b := range bs {
				if r := rs[b][k]; r != nil {
					vals[i] = f.get(r)
					fmt.Fprintf(w, " "+f.unit+" |", vals[i])
				} else {
					fmt.Fprint(w, " - |")
				}
			}
			for i := range bs[1:] {
				fmt.Fprintf(w, " %s |", ratio(vals[0], vals[i+1]))
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprint(w, "\nIdle connections (scenario conn: conn idle, conn-sub one subscription each, conn-persist persistent sessions, online then offline)\n\n"+
		"| run | broker | clients | RSS per connection (B) | RSS per offline session (B) | connects/s |\n|---|---|---:|---:|---:|---:|\n")
	for _, k := range []string{"conn", "conn-sub", "conn-persist"} {
		for _, b := range bs {
			r := rs[b][k]
			if r == nil {
				continue
			}
			offline := "-"
			if r.RSSPerOffline != 0 {
				offline = fmt.Sprintf("%.0f", r.RSSPerOffline)
			}
			fmt.Fprintf(w, "| %s | %s | %d | %.0f | %s | %.0f |\n", k, b, r.Clients, r.RSSPerConn, offline, r.ConnectRate)
		}
	}
}

// p99ms is a result's p99 latency in milliseconds.
func p99ms(r *Result) float64 { return float64(r.P99) / 1e6 }

// Plot draws the comparison's curves as PNG files in out:
// throughput.png (received/s against clients, from runs "clients-<n>"),
// latency.png (p99 against offered load, from runs "load-<rate>"),
// memory.png (RSS against connections, from run "conn"), and
// latency-<scenario>.png (p99, log scale, against offered load, from runs
// "<scenario>-load-<rate>", as bench/latency.sh names them) for p2p, fanin
// and fanout.
func (rs Results) Plot(out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	curve := func(prefix string, y func(*Result) float64) map[string]plotter.XYs {
		lines := map[string]plotter.XYs{}
		for b, runs := range rs {
			var xys plotter.XYs
			for k, r := range runs {
				if x, ok := strings.CutPrefix(k, prefix); ok {
					xv, err := strconv.ParseFloat(x, 64)
					if err == nil {
						xys = append(xys, plotter.XY{X: xv, Y: y(r)})
					}
				}
			}
			slices.SortFunc(xys, func(a, b plotter.XY) int { return int(a.X - b.X) })
			if len(xys) > 0 {
				lines[b] = xys
			}
		}
		return lines
	}
	mem := map[string]plotter.XYs{}
	for b, runs := range rs {
		if r := runs["conn"]; r != nil {
			for _, p := range r.RSSCurve {
				mem[b] = append(mem[b], plotter.XY{X: float64(p.Conns), Y: float64(p.RSS) / (1 << 20)})
			}
		}
	}
	type chart struct {
		file, title, x, y string
		lines             map[string]plotter.XYs
		log               bool
	}
	charts := []chart{
		{"throughput.png", "p2p, QoS 1, 64 B: throughput against clients", "client pairs", "messages received per second",
			curve("clients-", func(r *Result) float64 { return r.RecvRate }), false},
		{"latency.png", "fan-in, QoS 1, 64 B: p99 latency against offered load", "offered messages per second", "p99 latency (ms)",
			curve("load-", p99ms), false},
		{"memory.png", "idle connections: broker RSS", "connections", "RSS (MiB)", mem, false},
	}
	for _, sc := range []struct{ name, title string }{
		{"p2p", "p2p (100 pairs)"}, {"fanin", "fan-in (100 publishers, 1 subscriber)"}, {"fanout", "fan-out (1 publisher, 100 subscribers)"},
	} {
		charts = append(charts, chart{"latency-" + sc.name + ".png", sc.title + ", QoS 1, 64 B: p99 latency against offered load",
			"offered messages per second (deliveries)", "p99 latency (ms, log scale)",
			curve(sc.name+"-load-", p99ms), true})
	}
	for _, c := range charts {
		if len(c.lines) == 0 {
			continue
		}
		p := plot.New()
		p.Title.Text, p.X.Label.Text, p.Y.Label.Text = c.title, c.x, c.y
		if c.log {
			p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		}
		var args []any
		for _, b := range rs.brokers() {
			if xys, ok := c.lines[b]; ok {
				args = append(args, b, xys)
			}
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return err
		}
		p.Legend.Top = true
		if err := p.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(out, c.file)); err != nil {
			return fmt.Errorf("cannot save %s: %w", c.file, err)
		}
	}
	return nil
}
