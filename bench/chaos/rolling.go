package chaos

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// rolling drains and restarts every node in turn, under the load already
// running: POST /api/v1/node/drain (every client at once, no wait for a
// load balancer), wait until the drain says every session has moved,
// SIGTERM, start again on the same data, wait for the full mesh and two
// seconds of traffic. It returns each node's window for the checker.
func rolling(ctx context.Context, c *cluster, logf func(string, ...any)) ([]Restart, error) {
	var out []Restart
	for _, n := range c.nodes {
		sleep(ctx, 2*time.Second)
		w := Restart{Node: n.name, From: time.Since(c.h.start)}
		if cs, err := c.api.clients(ctx, n); err == nil {
			for _, cl := range cs {
				w.OnNode = append(w.OnNode, cl.ClientID)
			}
		}
		c.h.Add(Op{Kind: OpFault, Node: n.name, Note: fmt.Sprintf("drain (%d clients connected: %s)", len(w.OnNode), strings.Join(w.OnNode, " "))})
		if err := c.api.drain(ctx, n); err != nil {
			return out, err
		}
		if err := waitDrained(ctx, c, n, 30*time.Second); err != nil {
			return out, err
		}
		c.h.Add(Op{Kind: OpNode, Node: n.name, Note: "drained; SIGTERM"})
		if !n.stop(30 * time.Second) {
			c.h.Add(Op{Kind: OpNode, Node: n.name, Note: "did not stop within 30s of SIGTERM: killed"})
		}
		if err := c.startNode(ctx, n); err != nil {
			return out, err
		}
		if err := c.waitMesh(ctx, time.Minute); err != nil {
			return out, fmt.Errorf("after restarting %s: %w", n.name, err)
		}
		c.h.Add(Op{Kind: OpHeal, Node: n.name, Note: "restarted, mesh whole"})
		sleep(ctx, time.Second)
		w.To = time.Since(c.h.start)
		out = append(out, w)
		logf("%s drained and restarted (%d clients were on it)", n.name, len(w.OnNode))
	}
	return out, nil
}

// waitDrained polls the drain's status until it says drained.
func waitDrained(ctx context.Context, c *cluster, n *node, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		d, err := c.api.drainStatus(ctx, n)
		if err == nil && d.Phase == "drained" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not drained within %v: %+v %v", n.name, limit, d, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var probeIDs atomic.Uint32

// probePublish is one QoS 1 route probe published on node.
func probePublish(node, note string) *codec.Publish {
	id := uint16(probeIDs.Add(1)%65535 + 1)
	return &codec.Publish{QoS: 1, Topic: []byte(probeTopic(node)), PacketID: id, Payload: []byte(note)}
}
