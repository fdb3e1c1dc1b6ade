package auth

import (
	"strings"

	"github.com/VictoriaMetrics/metrics"
)

// The chain's metrics, one series per backend and label value. A backend
// is a source name: a Source and an ACLSource with the same name (an HTTP
// service that answers both questions) are one backend and share these
// series, like they share a circuit breaker and a concurrency bound.
//
//	gannet_auth_lookups_total{source}        questions asked of the
//	                                          source: cache hits, answerCache
//	                                          misses and calls refused by
//	                                          an open circuit breaker
//	gannet_auth_results_total{source,result} how each lookup ended:
//	                                          allow, deny, ignore (an
//	                                          authentication answer),
//	                                          rules (an ACL answer),
//	                                          error, timeout; the results
//	                                          add up to the lookups
//	gannet_auth_cache_hits_total{source}     lookups answered from the
//	                                          answerCache
//	gannet_auth_cache_misses_total{source}   lookups the cache could not
//	                                          answer (all of them when
//	                                          caching is off)
//	gannet_auth_backend_up{source}           1 while the circuit breaker
//	                                          is closed, 0 while the source
//	                                          is down
//	gannet_auth_lookup_duration_seconds{source}
//	                                          time of each backend call,
//	                                          from the end of the wait for
//	                                          a call slot to the answer
//	                                          (cache hits are not timed)
//	gannet_auth_inflight{source}             backend calls under way
//
// Lookups merged into one call are each counted as a lookup, a miss and
// a result; the call is timed once.
type sourceMetrics struct {
	lookups *metrics.Counter
	hits    *metrics.Counter
	misses  *metrics.Counter

	allow    *metrics.Counter
	deny     *metrics.Counter
	ignore   *metrics.Counter
	rules    *metrics.Counter
	errors   *metrics.Counter
	timeouts *metrics.Counter

	up       *metrics.Gauge
	inflight *metrics.Gauge
	duration *metrics.Histogram
}

// newSourceMetrics registers, or finds when another chain on the same set
// already did, the series of the backend called source.
func newSourceMetrics(set *metrics.Set, source string) *sourceMetrics {
	l := `source="` + escapeLabelValue(source) + `"`
	result := func(r string) *metrics.Counter {
		return set.GetOrCreateCounter(`gannet_auth_results_total{` + l + `,result="` + r + `"}`)
	}
	m := &sourceMetrics{
		lookups:  set.GetOrCreateCounter(`gannet_auth_lookups_total{` + l + `}`),
		hits:     set.GetOrCreateCounter(`gannet_auth_cache_hits_total{` + l + `}`),
		misses:   set.GetOrCreateCounter(`gannet_auth_cache_misses_total{` + l + `}`),
		allow:    result("allow"),
		deny:     result("deny"),
		ignore:   result("ignore"),
		rules:    result("rules"),
		errors:   result("error"),
		timeouts: result("timeout"),
		up:       set.GetOrCreateGauge(`gannet_auth_backend_up{`+l+`}`, nil),
		inflight: set.GetOrCreateGauge(`gannet_auth_inflight{`+l+`}`, nil),
		duration: set.GetOrCreateHistogram(`gannet_auth_lookup_duration_seconds{` + l + `}`),
	}
	m.up.Set(1)
	return m
}

// countValue counts a lookup that got an answer.
func (m *sourceMetrics) countValue(kind uint8, v *cacheValue) {
	if kind == kindACL {
		m.rules.Inc()
		return
	}
	switch v.answer.Verdict {
	case Allow:
		m.allow.Inc()
	case Deny:
		m.deny.Inc()
	default:
		m.ignore.Inc()
	}
}

// countError counts a lookup that got no answer.
func (m *sourceMetrics) countError(err error) {
	if timedOut(err) {
		m.timeouts.Inc()
	} else {
		m.errors.Inc()
	}
}

// escapeLabel escapes a label value as the Prometheus text format wants
// it: backslash, double quote and line feed.
func escapeLabelValue(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
