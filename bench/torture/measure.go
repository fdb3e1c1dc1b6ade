package torture

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/gannetmq/gannet/bench"
	"github.com/gannetmq/gannet/codec"
)

// latency is a histogram of durations, safe for several goroutines.
type latency struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newLatency() *latency { return &latency{h: hdrhistogram.New(1, 600_000_000, 3)} } // µs, up to 10 min

func (l *latency) record(d time.Duration) {
	l.mu.Lock()
	_ = l.h.RecordValue(max(d.Microseconds(), 1))
	l.mu.Unlock()
}

// at returns the q-th percentile.
func (l *latency) at(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.h.ValueAtQuantile(q)) * time.Microsecond
}

func (l *latency) max() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.h.Max()) * time.Microsecond
}

// ledger is a set of sequence numbers, safe for several goroutines: the
// messages a publisher had acknowledged, or those that arrived.
type ledger struct {
	mu     sync.Mutex
	bits   []uint64
	unique int64
	dups   int64
}

// add records seq and reports whether it was new.
func (l *ledger) add(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := int(seq / 64)
	for w >= len(l.bits) {
		l.bits = append(l.bits, 0)
	}
	bit := uint64(1) << (seq % 64)
	if l.bits[w]&bit != 0 {
		l.dups++
		return false
	}
	l.bits[w] |= bit
	l.unique++
	return true
}

func (l *ledger) len() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unique
}

func (l *ledger) duplicates() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dups
}

// missing counts the members of l that are not in other.
func (l *ledger) missing(other *ledger) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	other.mu.Lock()
	defer other.mu.Unlock()
	var n int64
	for i, w := range l.bits {
		var o uint64
		if i < len(other.bits) {
			o = other.bits[i]
		}
		for x := w &^ o; x != 0; x &= x - 1 {
			n++
		}
	}
	return n
}

// rssWatch samples a broker's resident memory every interval until
// stopped, keeping the peak and every sample.
type rssWatch struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	peak    int64
	samples []rssSample
}

type rssSample struct {
	at  time.Time
	rss int64
}

func watchRSS(b *Broker, every time.Duration) *rssWatch {
	w := &rssWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if s, err := b.Sample(); err == nil {
				w.mu.Lock()
				w.peak = max(w.peak, s.RSS)
				w.samples = append(w.samples, rssSample{time.Now(), s.RSS})
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// end stops sampling and returns the peak.
func (w *rssWatch) end() int64 {
	w.stopOnce()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

// stopOnce stops sampling; later calls do nothing.
func (w *rssWatch) stopOnce() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// peakBetween is the highest sample taken in [from, to); a zero to: no
// end.
func (w *rssWatch) peakBetween(from, to time.Time) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var p int64
	for _, s := range w.samples {
		if !s.at.Before(from) && (to.IsZero() || s.at.Before(to)) {
			p = max(p, s.rss)
		}
	}
	return p
}

// sysWatcher keeps the latest $SYS/broker values Mosquitto publishes,
// which is where its counters are.
type sysWatcher struct {
	c *client

	mu     sync.Mutex
	vals   map[string]float64
	rounds int       // $SYS/broker/uptime messages seen: one per round
	tick   chan bool // signalled at each round
}

func watchSys(ctx context.Context, addr string) (*sysWatcher, error) {
	c, _, err := connect(ctx, addr, clientConfig{id: "torture-sys", cleanStart: true})
	if err != nil {
		return nil, fmt.Errorf("cannot watch $SYS: %w", err)
	}
	w := &sysWatcher{c: c, vals: map[string]float64{}, tick: make(chan bool, 1)}
	c.onPublish = func(p *codec.Publish) {
		topic := string(p.Topic)
		f := strings.Fields(string(p.Payload))
		if len(f) == 0 {
			return
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return
		}
		w.mu.Lock()
		w.vals[topic] = v
		if topic == "$SYS/broker/uptime" {
			w.rounds++
			select {
			case w.tick <- true:
			default:
			}
		}
		w.mu.Unlock()
	}
	c.serve()
	if _, err := c.subscribe(ctx, codec.Subscription{Filter: []byte("$SYS/broker/#")}); err != nil {
		c.close()
		return nil, err
	}
	return w, nil
}

// fresh waits for two more rounds of $SYS (a round that began after the
// call ended within them) and returns a copy of the values.
func (w *sysWatcher) fresh(ctx context.Context) (map[string]float64, error) {
	w.mu.Lock()
	target := w.rounds + 2
	w.mu.Unlock()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		if w.rounds >= target {
			m := make(map[string]float64, len(w.vals))
			for k, v := range w.vals {
				m[k] = v
			}
			w.mu.Unlock()
			return m, nil
		}
		w.mu.Unlock()
		select {
		case <-w.tick:
		case <-w.c.done:
			return nil, fmt.Errorf("$SYS watcher disconnected: %v", w.c.err)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("no $SYS round within 10s")
		}
	}
}

func (w *sysWatcher) close() { w.c.close() }

// cpuShare is the broker's CPU time over a bench run's window, in cores.
func cpuShare(r *bench.Result) string {
	return fmt.Sprintf("%.0f%%", 100*r.BrokerCPU.Seconds()/r.Window.Seconds())
}

// toolShare is this process's CPU time over a bench run's window: the
// load generator and whatever else runs here meanwhile.
func toolShare(r *bench.Result) string {
	return fmt.Sprintf("%.0f%%", 100*r.ToolCPU.Seconds()/r.Window.Seconds())
}

// histQuantile is quantile q of the samples a Prometheus histogram of
// Gannet's metrics (name, cumulative le buckets) took between two
// readings, as the upper bound of the bucket it falls in; false when
// there were none.
func histQuantile(before, after map[string]float64, name string, q float64) (time.Duration, bool) {
	type bucket struct{ le, n float64 }
	var bs []bucket
	prefix := name + `_bucket{le="`
	for k, v := range after {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(rest, `"}`), 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{le, v - before[k]})
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	if len(bs) == 0 || bs[len(bs)-1].n <= 0 {
		return 0, false
	}
	want := q * bs[len(bs)-1].n
	for _, b := range bs {
		if b.n >= want && !math.IsInf(b.le, 1) {
			return time.Duration(b.le * float64(time.Second)), true
		}
	}
	return 0, false // past the last bound
}

// brokerLatency describes the p99s of Gannet's own latency histograms
// between two readings of its metrics: a sampled publish to its
// subscriber's write, and how late tasks handed to an event loop ran.
func brokerLatency(before, after map[string]float64) string {
	var parts []string
	for _, h := range []struct{ name, what string }{
		{"gannet_delivery_latency_seconds", "delivery"},
		{"gannet_event_loop_lag_seconds", "event loop lag"},
	} {
		if d, ok := histQuantile(before, after, h.name, 0.99); ok {
			parts = append(parts, fmt.Sprintf("%s p99 at most %s", h.what, ms(d)))
		} else {
			parts = append(parts, h.what+" p99 unknown")
		}
	}
	return strings.Join(parts, ", ")
}
