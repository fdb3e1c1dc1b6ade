// Command floor is the least an MQTT broker built on gnet can hold per
// idle connection: a gnet engine configured as Gannet's (multicore, the
// same buffer capacities, a main reactor that accepts) whose handler keeps
// nothing per connection and answers every CONNECT with a fixed CONNACK.
// bench/floor.sh connects the same idle clients to it, to Gannet and to
// Mosquitto, and reports the RSS each adds per connection: what Gannet
// holds above this floor is its own.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/panjf2000/gnet/v2"

	"github.com/gannetmq/gannet/codec"
)

type handler struct {
	gnet.BuiltinEventEngine
}

// connack is MQTT 3.1.1's CONNACK: session not present, accepted.
var connack = (&codec.Connack{Code: codec.V3Accepted}).Append(nil, codec.V311)

// OnTraffic reads whole packets and answers a CONNECT. It keeps no state:
// a packet split over reads waits in gnet's buffer until it is whole.
func (*handler) OnTraffic(c gnet.Conn) gnet.Action {
	for {
		buf, _ := c.Peek(-1)
		h, n, err := codec.DecodeFixedHeader(buf)
		if errors.Is(err, codec.ErrIncomplete) {
			return gnet.None
		}
		if err != nil {
			return gnet.Close
		}
		if len(buf) < n+h.Remaining {
			return gnet.None
		}
		if h.Type == codec.CONNECT {
			if _, err := c.Write(connack); err != nil {
				return gnet.Close
			}
		}
		_, _ = c.Discard(n + h.Remaining)
	}
}

func main() {
	addr := flag.String("listen", "127.0.0.1:21990", "`address` to listen on")
	loops := flag.Int("event-loops", 2, "event loops")
	flag.Parse()
	err := gnet.Run(&handler{}, "tcp://"+*addr,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(*loops),
		gnet.WithReadBufferCap(64<<10),
		gnet.WithWriteBufferCap(64<<10),
		gnet.WithReusePort(false),
		gnet.WithReuseAddr(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLoadBalancing(gnet.RoundRobin),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}
