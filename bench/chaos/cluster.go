package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// cluster is the nodes of a run, each behind its interlink proxy.
type cluster struct {
	nodes          []*node
	h              *History
	api            *admin
	failureTimeout time.Duration
	lanes          int
	log            io.Writer
}

// clusterConfig is how newCluster sets the nodes up.
type clusterConfig struct {
	bin   string
	dir   string
	nodes int
	disk  bool // mount a tmpfs per node for disk faults
	extra []string
}

// Broker settings every node runs with. The failure timeout is the
// tests' 1 s, so that faults longer than it are cheap; queues are far
// larger than a run fills, so that nothing is dropped for room.
const (
	failureTimeout = time.Second
	tmpfsSize      = 320 << 20
)

// newCluster prepares the nodes (ports, proxies, data volumes, secret and
// API key) without starting them. It returns what it could not set up
// for disk faults as skipped (the run goes on without them).
func newCluster(cfg clusterConfig, h *History, log io.Writer) (c *cluster, skipped string, err error) {
	secret := filepath.Join(cfg.dir, "cluster.secret")
	if err := os.WriteFile(secret, []byte("chaos cluster secret, not for use\n"), 0o600); err != nil {
		return nil, "", err
	}
	keyFile, key, err := adminKey(cfg.bin, cfg.dir)
	if err != nil {
		return nil, "", err
	}
	c = &cluster{h: h, api: newAdmin(key), failureTimeout: failureTimeout, lanes: 3, log: log}
	common := []string{"--cluster-secret-file=" + secret, "--api-key-file=" + keyFile,
		"--cluster-failure-timeout=" + failureTimeout.String(), "--sys-interval=0",
		"--durability=sync", "--max-queued-messages=1000000", "--max-inflight=100",
		"--drain-lb-grace=0s", "--drain-rate=0", "--drain-timeout=30s"}
	common = append(common, cfg.extra...)
	disk := cfg.disk
	for i := range cfg.nodes {
		n := &node{name: "n" + strconv.Itoa(i+1), bin: cfg.bin, h: h, args: common}
		n.logPath = filepath.Join(cfg.dir, n.name+".log")
		n.data = filepath.Join(cfg.dir, n.name+"-data")
		for _, p := range []*string{&n.mqtt, &n.http, &n.cluster} {
			if *p, err = freeAddr(false); err != nil {
				c.close()
				return nil, "", err
			}
		}
		if n.gossip, err = freeAddr(true); err != nil {
			c.close()
			return nil, "", err
		}
		if n.proxy, err = startProxy(n.cluster); err != nil {
			c.close()
			return nil, "", err
		}
		c.nodes = append(c.nodes, n)
		if disk {
			if err := mountTmpfs(n.data, tmpfsSize); err != nil {
				disk = false
				skipped = fmt.Sprintf("disk faults skipped: cannot mount a tmpfs (%v)", err)
				continue
			}
			n.mounted = true
		} else if err := os.MkdirAll(n.data, 0o755); err != nil {
			c.close()
			return nil, "", err
		}
	}
	if cfg.disk && !disk {
		for _, n := range c.nodes {
			if n.mounted {
				_ = unmount(n.data)
				n.mounted = false
			}
			_ = os.MkdirAll(n.data, 0o755)
		}
	}
	return c, skipped, nil
}

// start starts every node and waits for the full mesh.
func (c *cluster) start(ctx context.Context) error {
	for _, n := range c.nodes {
		if err := n.start(ctx, c.nodes); err != nil {
			return err
		}
	}
	return c.waitMesh(ctx, time.Minute)
}

func (c *cluster) startNode(ctx context.Context, n *node) error { return n.start(ctx, c.nodes) }

// others are the nodes but n.
func (c *cluster) others(n *node) []*node {
	var out []*node
	for _, o := range c.nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// restartCrashed starts again the nodes that exited on their own.
func (c *cluster) restartCrashed(ctx context.Context) {
	for _, n := range c.nodes {
		if !n.running() {
			if err := c.startNode(context.WithoutCancel(ctx), n); err != nil {
				c.h.Add(Op{Kind: OpNode, Node: n.name, Note: "cannot restart: " + err.Error()})
			}
		}
	}
}

// healAll undoes whatever fault is left: links restored and undelayed,
// paused nodes resumed, disks freed, stopped nodes started.
func (c *cluster) healAll(ctx context.Context) {
	for _, n := range c.nodes {
		n.proxy.setCut("*", false)
		n.proxy.setDelay("*", 0)
		for _, o := range c.nodes {
			n.proxy.setCut(o.name, false)
			n.proxy.setDelay(o.name, 0)
		}
		n.mu.Lock()
		paused := n.paused
		n.mu.Unlock()
		if paused {
			n.resume()
		}
		if n.mounted {
			_ = n.freeDisk()
		}
	}
	c.restartCrashed(ctx)
}

// waitMesh waits until every node sees every other alive with all its
// lanes up.
func (c *cluster) waitMesh(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ok := true
		for _, n := range c.nodes {
			ms, err := c.api.members(ctx, n)
			if err != nil || len(ms) != len(c.nodes) {
				ok = false
				break
			}
			for _, m := range ms {
				if m.State != "alive" || (m.Name != n.name && m.LanesUp != c.lanes) {
					ok = false
				}
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no full mesh within %v", limit)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// close kills every node, stops the proxies and unmounts the volumes.
func (c *cluster) close() error {
	var errs []error
	for _, n := range c.nodes {
		n.kill()
		if n.proxy != nil {
			n.proxy.close()
		}
		if n.mounted {
			if err := unmount(n.data); err != nil {
				errs = append(errs, err)
			}
			n.mounted = false
		}
	}
	return errors.Join(errs...)
}

// snapshot reads every node's clients, subscriptions and retained
// messages through the admin API.
func (c *cluster) snapshot(ctx context.Context) Snapshot {
	s := Snapshot{Clients: map[string][]apiClient{}, Subscriptions: map[string][]apiSubscription{}, Retained: map[string][]apiRetained{}}
	for _, n := range c.nodes {
		cs, err := c.api.clients(ctx, n)
		if err == nil {
			s.Clients[n.name] = cs
			var subs []apiSubscription
			if subs, err = c.api.subscriptions(ctx, n); err == nil {
				s.Subscriptions[n.name] = subs
				var rs []apiRetained
				if rs, err = c.api.retained(ctx, n); err == nil {
					s.Retained[n.name] = rs
				}
			}
		}
		if err != nil {
			s.Errors = append(s.Errors, err.Error())
		}
	}
	return s
}
