package bench

import (
	"context"
	"testing"
	"time"
)

// A fixed rate reaches a real broker in full, whether paced by one
// goroutine per tick or by a timer per message, and at about that rate.
func TestFixedRate(t *testing.T) {
	s := startBroker(t, nil)
	for _, tick := range []time.Duration{time.Millisecond, 0} {
		for _, qos := range []byte{0, 1} {
			const pubs, each, rate = 20, 100, 4000 // 2,000 messages: half a second
			start := time.Now()
			res, err := Run(context.Background(), Config{Scenario: "fanin", Addr: s.Addr(), Publishers: pubs,
				QoS: qos, Payload: 64, Rate: rate, Tick: tick, Count: each})
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if res.Sent != pubs*each || res.Received != pubs*each || res.Lost != 0 || res.Duplicates != 0 {
				t.Fatalf("tick %s, QoS %d: sent %d, received %d, lost %d, duplicates %d; want %d each",
					tick, qos, res.Sent, res.Received, res.Lost, res.Duplicates, pubs*each)
			}
			// Not faster than the rate: 2,000 messages at 4,000/s take at
			// least half a second.
			if min := time.Duration(pubs*each) * time.Second / rate; took < min*9/10 {
				t.Fatalf("tick %s, QoS %d: %d messages in %s, faster than %d/s", tick, qos, pubs*each, took, rate)
			}
		}
	}
}
