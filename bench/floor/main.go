// Command floor is the least an MQTT broker built on gnet can hold per
// idle connection: a gnet engine configured as Gannet's (multicore, the
// same buffer capacities, a main reactor that accepts) whose handler keeps
// nothing per connection and answers every CONNECT with a fixed CONNACK.
// bench/floor.sh connects the same idle clients to it, to Gannet and to
// Mosquitto, and reports the RSS each adds per connection: what Gannet
// holds above this floor is its own.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/panjf2000/gnet/v2"
)

type handler struct {
	gnet.BuiltinEventEngine
}

// connack is MQTT 3.1.1's CONNACK: session not present, accepted.
var connack = []byte{0x20, 0x02, 0x00, 0x00}

// OnTraffic reads whole packets and answers a CONNECT. It keeps no state:
// a packet split over reads waits in gnet's buffer until it is whole.
func (*handler) OnTraffic(c gnet.Conn) gnet.Action {
	for {
		buf, _ := c.Peek(-1)
		if len(buf) < 2 {
			return gnet.None
		}
		n, size, ok := remaining(buf[1:])
		if !ok {
			return gnet.Close
		}
		if n < 0 || len(buf) < 1+size+n {
			return gnet.None
		}
		if buf[0]&0xf0 == 0x10 {
			if _, err := c.Write(connack); err != nil {
				return gnet.Close
			}
		}
		_, _ = c.Discard(1 + size + n)
	}
}

// remaining decodes a packet's remaining length from b: the length, the
// bytes it took, and false when it is malformed. A length not yet whole
// in b is -1.
func remaining(b []byte) (n, size int, ok bool) {
	mult := 1
	for i := 0; i < 4; i++ {
		if i == len(b) {
			return -1, 0, true
		}
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return n, i + 1, true
		}
		mult <<= 7
	}
	return 0, 0, false
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
