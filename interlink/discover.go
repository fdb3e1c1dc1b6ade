package interlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Resolver looks up the addresses of a host name given in Config.Join.
// *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// lookupTimeout bounds one round of seed lookups, so that a DNS server
// that does not answer holds up neither Start nor maintain for long.
const lookupTimeout = 5 * time.Second

// rediscoverEvery is how often a node that has peers looks its seed names
// up again and joins the addresses that are not members yet. A node alone
// does it on every maintain tick; one with peers learns of new nodes from
// gossip, but two groups that formed apart (each started before the
// other's addresses were in DNS) would never hear of each other without
// it.
const rediscoverEvery = 30 * time.Second

// resolveSeeds turns Join entries into the gossip addresses to join. A
// host name is looked up and every address it has is taken: a Kubernetes
// headless Service, say, has one for every pod of a StatefulSet. The
// addresses in skip (this node's own, and its members') are left out, and
// so are duplicates. The entries whose names did not resolve are reported
// in the error, beside the addresses of those that did.
func resolveSeeds(ctx context.Context, r Resolver, join []string, skip map[netip.AddrPort]bool) ([]string, error) {
	var out []string
	var errs []error
	seen := make(map[netip.AddrPort]bool)
	add := func(ip netip.Addr, port int) {
		a := netip.AddrPortFrom(ip.Unmap(), uint16(port))
		if !skip[a] && !seen[a] {
			seen[a] = true
			out = append(out, a.String())
		}
	}
	for _, j := range join {
		host, port, err := seedGossip(j)
		if err != nil {
			continue // Validate refuses it
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			add(ip, port)
			continue
		}
		hosts, err := r.LookupHost(ctx, host)
		if err != nil {
			errs = append(errs, fmt.Errorf("--join %s: %w", j, err))
			continue
		}
		for _, h := range hosts {
			if ip, err := netip.ParseAddr(h); err == nil {
				add(ip, port)
			}
		}
	}
	return out, errors.Join(errs...)
}

// lookupSeeds resolves Config.Join, leaving out the addresses in skip.
func (n *Node) lookupSeeds(skip map[netip.AddrPort]bool) ([]string, error) {
	r := n.cfg.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	// Stop ends a lookup in progress.
	ctx, cancel := context.WithTimeout(n.ctx, lookupTimeout)
	defer cancel()
	return resolveSeeds(ctx, r, n.cfg.Join, skip)
}

// knownGossip is the gossip addresses of this node and of its live
// members: seeds found there need no join.
func (n *Node) knownGossip() map[netip.AddrPort]bool {
	known := make(map[netip.AddrPort]bool)
	add := func(s string) {
		if a, err := netip.ParseAddrPort(s); err == nil {
			known[netip.AddrPortFrom(a.Addr().Unmap(), a.Port())] = true
		}
	}
	add(n.gossipAddr)
	// memberlist rewrites its members' addresses in place as gossip
	// arrives; only their names are safe to read here (Members). The
	// address comes from the join or update event instead.
	live := make(map[string]bool)
	for _, m := range n.ml.Members() {
		live[m.Name] = true
	}
	n.mu.Lock()
	peers := make([]*peer, 0, len(n.peers))
	for name, p := range n.peers {
		if live[name] {
			peers = append(peers, p)
		}
	}
	n.mu.Unlock()
	for _, p := range peers {
		add(p.gossipAddr())
	}
	return known
}

// join asks gossip to join every address at once: an address where
// nothing answers costs a TCP timeout, and the others need not wait for
// it. It returns how many answered.
func (n *Node) join(addrs []string) (int, error) {
	addrs = slices.Compact(slices.Sorted(slices.Values(addrs)))
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ok   int
		errs []error
	)
	for _, a := range addrs {
		wg.Go(func() {
			k, err := n.ml.Join([]string{a})
			mu.Lock()
			ok += k
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if ok > 0 {
		return ok, nil
	}
	return 0, errors.Join(errs...)
}

// hostAddr is one address of one of this host's network interfaces.
type hostAddr struct {
	iface string
	flags net.Flags
	ip    netip.Addr
}

// hostAddrs lists the addresses of this host's interfaces.
func hostAddrs() ([]hostAddr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []hostAddr
	for _, i := range ifs {
		as, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range as {
			if pn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(pn.IP); ok {
					out = append(out, hostAddr{iface: i.Name, flags: i.Flags, ip: ip.Unmap()})
				}
			}
		}
	}
	return out, nil
}

// pickHostAddr chooses the address to advertise for a listener bound to
// the wildcard bind: a global unicast address (private ones included) of
// an interface that is up and not a loopback. An interface that is also
// running comes first (a bridge with nothing attached, such as an idle
// docker0, is up but not running), then IPv4 before IPv6, then the order
// of the interfaces. A listener on 0.0.0.0 takes IPv4 only; one on ::
// accepts both families. ok is false when no address fits.
func pickHostAddr(bind netip.Addr, addrs []hostAddr) (best hostAddr, ok bool) {
	bestScore := 0
	for _, a := range addrs {
		ip := a.ip.Unmap()
		if a.flags&net.FlagUp == 0 || a.flags&net.FlagLoopback != 0 || !ip.IsGlobalUnicast() {
			continue
		}
		if bind.Is4() && !ip.Is4() {
			continue
		}
		score := 1
		if ip.Is4() {
			score++
		}
		if a.flags&net.FlagRunning != 0 {
			score += 2
		}
		if score > bestScore {
			best, bestScore = a, score
		}
	}
	return best, bestScore > 0
}

// advertiseFor returns the interlink address to advertise when
// Config.Advertise is empty, for a listener bound to addr. A listener
// bound to one address advertises it. One bound to every address
// (0.0.0.0, ::) used to advertise 127.0.0.1, which no other host can
// reach, so that a cluster never formed: it now advertises
// Config.AdvertiseIP (in Kubernetes the pod's address), or else this
// host's own address as pickHostAddr chooses it from list, and only when
// there is none 127.0.0.1, with a warning. The choice is logged.
func (n *Node) advertiseFor(addr string, list func() ([]hostAddr, error)) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	bind, err := netip.ParseAddr(host)
	if err == nil && !bind.IsUnspecified() {
		return addr
	}
	if n.cfg.AdvertiseIP != "" {
		a := net.JoinHostPort(n.cfg.AdvertiseIP, port)
		n.log.Info("--cluster-listen binds every address: advertising the address given for this node (POD_IP)",
			"advertise", a)
		return a
	}
	addrs, err := list()
	if err != nil {
		n.log.Warn("cannot list this host's network addresses", "err", err)
	}
	if h, ok := pickHostAddr(bind, addrs); ok {
		a := net.JoinHostPort(h.ip.String(), port)
		n.log.Info("--cluster-listen binds every address: advertising this host's address on "+h.iface+
			"; set --cluster-advertise (or POD_IP) to choose another", "advertise", a, "interface", h.iface)
		return a
	}
	a := net.JoinHostPort("127.0.0.1", port)
	n.log.Warn("--cluster-listen binds every address, and this host has no address but loopback ones: advertising "+a+
		", which only nodes on this host can reach; set --cluster-advertise (or POD_IP)", "advertise", a)
	return a
}

// joinSeeds joins the seeds at Start. Neither a name that does not
// resolve nor a seed that does not answer is an error: the node serves
// alone, and maintain keeps looking (in Kubernetes the first pod of a
// StatefulSet finds nobody, and a pod's name may be published after it
// starts).
func (n *Node) joinSeeds() {
	join := strings.Join(n.cfg.Join, ",")
	seeds, err := n.lookupSeeds(n.knownGossip())
	if err != nil {
		n.log.Warn("cannot resolve the seeds yet; retrying", "join", join, "err", err)
	}
	if len(seeds) == 0 {
		if err == nil {
			n.log.Info("no other node among the seeds yet; serving alone and retrying", "join", join)
		}
		return
	}
	if _, err := n.join(seeds); err != nil {
		n.log.Warn("cannot reach the seeds yet; serving alone and retrying", "join", join,
			"seeds", strings.Join(seeds, ","), "err", err)
	}
}
