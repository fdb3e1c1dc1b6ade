package server

import (
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/gannetmq/gannet/codec"
)

// Latency histograms, served at /metrics beside the counters.
//
// They are Prometheus histograms (cumulative le buckets) rather than
// VictoriaMetrics' own (vmrange buckets): histogram_quantile reads le
// buckets in Prometheus and in VictoriaMetrics alike, while vmrange
// buckets need VictoriaMetrics' prometheus_buckets() first, so a dashboard
// written for the one would not work with the other. The price is a
// fixed resolution, latencyBuckets, chosen to span what a broker sees:
// from a delivery on loopback to a disk that stalls.
//
// The hot paths pay for them only now and then. Reading the monotonic
// clock costs about 30 ns, as much as a tenth of the broker's own work
// for a publish with one subscriber (BenchmarkFanout), so publishes are
// sampled rather than each timed: on each event loop, the first PUBLISH
// handled in each tick of the broker clock (10 ms) is timed, and the
// others pay one comparison. That is every publish of a quiet loop and
// up to 100 a second of a busy one, enough for the 99th percentile of a
// few minutes. The other histograms are updated once per group commit,
// once per interlink ping and once per part of a loop's sweep (each
// tick).
//
//	gannet_delivery_latency_seconds       a sampled publish taken up to a local subscriber's write
//	gannet_publish_ack_latency_seconds    a sampled QoS 1/2 publish taken up to its PUBACK or PUBREC, with a store
//	gannet_store_commit_seconds           one group commit's write, fsync included in sync mode
//	gannet_event_loop_lag_seconds         how late a task handed to an event loop runs
//
// A sampled publish is timed from when its event loop takes it up (once
// it is decoded) to the writev that hands the bytes of the last of its
// deliveries to a subscriber connected to this node (the one that waited
// for every other to be handed out), so it includes routing, the hop to
// another event loop, the write delay (--write-delay) and any wait for the
// subscriber's own store commits; and, with a store, to the moment its
// PUBACK or PUBREC goes into the publisher's output, which for a publish
// that made writes is when their group commit completed. A subscriber
// written several sampled deliveries at once counts the oldest. Messages
// a subscriber gets later from its queue (offline, or its inflight window
// full), messages forwarded by cluster peers, and the time a publish
// waited in the socket or in the read buffer behind others are not
// counted.

// latencyBuckets are the histograms' upper bounds in seconds: 1-2.5-5
// steps from 10µs to 10s.
var latencyBuckets = []float64{
	10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

// latencies are the broker's latency histograms.
type latencies struct {
	delivery *metrics.PrometheusHistogram
	ack      *metrics.PrometheusHistogram
	commit   *metrics.PrometheusHistogram
	loopLag  *metrics.PrometheusHistogram
}

func newLatencies(set *metrics.Set) latencies {
	h := func(name string) *metrics.PrometheusHistogram {
		return set.NewPrometheusHistogramExt(name, latencyBuckets)
	}
	return latencies{
		delivery: h("gannet_delivery_latency_seconds"),
		ack:      h("gannet_publish_ack_latency_seconds"),
		commit:   h("gannet_store_commit_seconds"),
		loopLag:  h("gannet_event_loop_lag_seconds"),
	}
}

// since observes the time from start (monotime) to now in h.
func since(h *metrics.PrometheusHistogram, start, now int64) {
	h.Update(float64(now-start) / 1e9)
}

// commitTook observes one group commit's write (persist.Options.OnWrite).
func (l *latencies) commitTook(d time.Duration) { l.commit.Update(d.Seconds()) }

// samplePublish decides whether the PUBLISH being handled is timed, at
// tick of the broker clock: the first of each tick on this loop is, and
// ob.sampleAt is when it was taken up; 0 for the others.
func (ob *outbox) samplePublish(tick int64) {
	if ob.sampleTick == tick {
		ob.sampleAt = 0
		return
	}
	ob.sampleTick = tick
	ob.sampleAt = monotime()
}

// sampleDelivery marks the last live delivery of the timed publish just
// routed (ob.last): the subscriber's next write observes it.
func (ob *outbox) sampleDelivery() {
	cl, at := ob.last, ob.sampleAt
	ob.last = nil
	if cl.loop == ob.home {
		if r := cl.rareState(); r.sampleAt == 0 {
			r.sampleAt = at
		}
		return
	}
	if x := ob.remote[cl.loop]; x != nil && x.sampleCl == nil {
		x.sampleCl, x.sampleAt = cl, at
	}
}

// sampleArrived moves x's sample to its client, on the client's loop.
func (x *xfer) sampleArrived() {
	if cl := x.sampleCl; cl != nil && !cl.closed {
		if r := cl.rareState(); r.sampleAt == 0 {
			r.sampleAt = x.sampleAt
		}
	}
}

// mergeSample keeps x's sample, or takes y's when x has none.
func (x *xfer) mergeSample(y *xfer) {
	if x.sampleCl == nil {
		x.sampleCl, x.sampleAt = y.sampleCl, y.sampleAt
	}
}

// wroteSample observes the delivery sample c's write just carried.
func (c *client) wroteSample() {
	since(c.srv.stats.lat.delivery, c.rare.sampleAt, monotime())
	c.rare.sampleAt = 0
}

// ackFrom returns when the timed PUBLISH that an acknowledgement of kind
// answers was taken up, or 0: only PUBACK and PUBREC of sampled publishes
// are timed, and only with a store, where they may wait for the disk.
func (ob *outbox) ackFrom(c *client, kind codec.Type) int64 {
	if ob.sampleAt == 0 || c.srv.store == nil || kind != codec.PUBACK && kind != codec.PUBREC {
		return 0
	}
	return ob.sampleAt
}
