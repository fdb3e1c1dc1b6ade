package interlink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// stubResolver answers lookups from a table the test changes as it goes;
// a name not in it does not exist, as a headless Service with no pod yet.
type stubResolver struct {
	mu    sync.Mutex
	hosts map[string][]string
	calls map[string]int
}

func newStubResolver() *stubResolver {
	return &stubResolver{hosts: make(map[string][]string), calls: make(map[string]int)}
}

func (r *stubResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[host]++
	if a, ok := r.hosts[host]; ok {
		return slices.Clone(a), nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *stubResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	r.hosts[host] = addrs
	r.mu.Unlock()
}

func (r *stubResolver) count(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[host]
}

func TestResolveSeeds(t *testing.T) {
	r := newStubResolver()
	r.set("peers", "10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::7", "10.0.0.1", "::ffff:10.0.0.4")
	r.set("gossip.example", "10.1.0.1")
	self := netip.MustParseAddrPort("10.0.0.3:7947")
	member := netip.MustParseAddrPort("10.0.0.2:7947")
	for _, c := range []struct {
		name    string
		join    []string
		skip    []netip.AddrPort
		want    []string
		wantErr string // in the error; empty: no error
	}{
		{name: "every address of a name, gossip port = interlink port + 1, self left out",
			join: []string{"peers:7946"}, skip: []netip.AddrPort{self},
			want: []string{"10.0.0.1:7947", "10.0.0.2:7947", "[fd00::7]:7947", "10.0.0.4:7947"}},
		{name: "members left out too",
			join: []string{"peers:7946"}, skip: []netip.AddrPort{self, member},
			want: []string{"10.0.0.1:7947", "[fd00::7]:7947", "10.0.0.4:7947"}},
		{name: "addresses as given, names looked up, explicit gossip ports, duplicates once",
			join: []string{"10.0.0.9:7946", "gossip=gossip.example:9000", "gossip=[fd00::9]:9000", "10.0.0.9:7946", "peers:7946"},
			skip: []netip.AddrPort{self},
			want: []string{"10.0.0.9:7947", "10.1.0.1:9000", "[fd00::9]:9000",
				"10.0.0.1:7947", "10.0.0.2:7947", "[fd00::7]:7947", "10.0.0.4:7947"}},
		{name: "a name that does not resolve is reported, the others still taken",
			join: []string{"missing:7946", "10.0.0.9:7946"},
			want: []string{"10.0.0.9:7947"}, wantErr: "--join missing:7946: lookup missing: no such host"},
		{name: "nothing but ourselves",
			join: []string{"self:7946"}, skip: []netip.AddrPort{self}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r.set("self", "10.0.0.3")
			skip := make(map[netip.AddrPort]bool)
			for _, a := range c.skip {
				skip[a] = true
			}
			got, err := resolveSeeds(context.Background(), r, c.join, skip)
			if !slices.Equal(got, c.want) {
				t.Errorf("seeds %q, want %q", got, c.want)
			}
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("error %v, want one saying %q", err, c.wantErr)
			}
		})
	}
}

func TestPickHostAddr(t *testing.T) {
	const (
		up      = net.FlagUp | net.FlagRunning | net.FlagBroadcast
		upOnly  = net.FlagUp | net.FlagBroadcast
		loop    = net.FlagUp | net.FlagRunning | net.FlagLoopback
		down    = net.FlagBroadcast
		anyIPv4 = "0.0.0.0"
		anyIPv6 = "::"
	)
	a := func(iface string, flags net.Flags, ip string) hostAddr {
		return hostAddr{iface: iface, flags: flags, ip: netip.MustParseAddr(ip)}
	}
	lo := []hostAddr{a("lo", loop, "127.0.0.1"), a("lo", loop, "::1")}
	for _, c := range []struct {
		name  string
		bind  string
		addrs []hostAddr
		want  string // empty: none
	}{
		{"pod: loopback and eth0", anyIPv4, append(slices.Clone(lo), a("eth0", up, "10.244.1.7"), a("eth0", up, "fe80::1")), "10.244.1.7"},
		{"interface that is down or not running comes after", anyIPv4,
			append(slices.Clone(lo), a("eth1", down, "10.9.9.9"), a("docker0", upOnly, "172.17.0.1"), a("eth0", up, "192.168.1.5")), "192.168.1.5"},
		{"up but not running, when nothing else", anyIPv4, append(slices.Clone(lo), a("docker0", upOnly, "172.17.0.1")), "172.17.0.1"},
		{"link-local only: none", anyIPv4, append(slices.Clone(lo), a("eth0", up, "169.254.3.4"), a("eth0", up, "fe80::1")), ""},
		{"0.0.0.0 takes no IPv6", anyIPv4, append(slices.Clone(lo), a("eth0", up, "fd00::5")), ""},
		{":: takes IPv6", anyIPv6, append(slices.Clone(lo), a("eth0", up, "fe80::1"), a("eth0", up, "fd00::5")), "fd00::5"},
		{":: prefers IPv4", anyIPv6, append(slices.Clone(lo), a("eth0", up, "fd00::5"), a("eth0", up, "10.0.0.5")), "10.0.0.5"},
		{"first interface wins", anyIPv4, []hostAddr{a("eth0", up, "10.0.0.5"), a("eth1", up, "10.0.1.5")}, "10.0.0.5"},
		{"loopback only: none", anyIPv6, lo, ""},
		{"no interfaces: none", anyIPv4, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, ok := pickHostAddr(netip.MustParseAddr(c.bind), c.addrs)
			got := ""
			if ok {
				got = h.ip.String()
			}
			if got != c.want {
				t.Errorf("picked %q, want %q", got, c.want)
			}
		})
	}
}

// A listener on every address advertises POD_IP, else this host's own
// address, else 127.0.0.1 with a warning, and says which; one on a single
// address advertises that address.
func TestAdvertiseFor(t *testing.T) {
	pod := []hostAddr{{"lo", net.FlagUp | net.FlagLoopback | net.FlagRunning, netip.MustParseAddr("127.0.0.1")},
		{"eth0", net.FlagUp | net.FlagRunning, netip.MustParseAddr("10.244.1.7")}}
	for _, c := range []struct {
		name        string
		advertiseIP string
		listen      string
		addrs       []hostAddr
		listErr     error
		want        string
		wantLog     []string // each must be in the log
	}{
		{"specific address", "10.9.9.9", "127.0.0.2:7946", pod, nil, "127.0.0.2:7946", nil},
		{"POD_IP", "10.244.1.8", "0.0.0.0:7946", pod, nil, "10.244.1.8:7946",
			[]string{"level=INFO", "POD_IP", "advertise=10.244.1.8:7946"}},
		{"POD_IP IPv6", "fd00::8", "[::]:7946", pod, nil, "[fd00::8]:7946", []string{"advertise=[fd00::8]:7946"}},
		{"interface", "", "[::]:7946", pod, nil, "10.244.1.7:7946",
			[]string{"level=INFO", "eth0", "advertise=10.244.1.7:7946", "--cluster-advertise"}},
		{"loopback fallback", "", "0.0.0.0:7946", pod[:1], nil, "127.0.0.1:7946",
			[]string{"level=WARN", "only nodes on this host can reach", "advertise=127.0.0.1:7946"}},
		{"interfaces not listed", "", "0.0.0.0:7946", nil, errors.New("netlink refused"), "127.0.0.1:7946",
			[]string{"level=WARN", "netlink refused", "only nodes on this host can reach"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			cfg := testConfig("a")
			cfg.AdvertiseIP = c.advertiseIP
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			n, err := New(cfg, newRecorder())
			if err != nil {
				t.Fatal(err)
			}
			got := n.advertiseFor(c.listen, func() ([]hostAddr, error) { return c.addrs, c.listErr })
			if got != c.want {
				t.Errorf("advertise %q, want %q", got, c.want)
			}
			for _, w := range c.wantLog {
				if !strings.Contains(logs.String(), w) {
					t.Errorf("log lacks %q:\n%s", w, logs.String())
				}
			}
			if c.wantLog == nil && logs.Len() > 0 {
				t.Errorf("logged for a listener on one address:\n%s", logs.String())
			}
		})
	}
}

func TestAdvertiseIPValidated(t *testing.T) {
	for _, bad := range []string{"pod", "0.0.0.0", "10.0.0.1:7946"} {
		cfg := testConfig("a")
		cfg.AdvertiseIP = bad
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "POD_IP") {
			t.Errorf("AdvertiseIP %q: error %v, want one naming POD_IP", bad, err)
		}
	}
}

// sharedPort finds a port that is free, with the next one (gossip, TCP
// and UDP), on each of hosts, as every pod of a StatefulSet listens on the
// same port of its own address. It is drawn from below the ephemeral
// range, where the kernel hands out ports for outgoing connections and
// ":0" listeners, which on a busy host could take it again before the
// nodes bind it.
func sharedPort(t *testing.T, hosts ...string) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				low = n
			}
		}
	}
next:
	for range 200 {
		port := 10000 + rand.IntN(low-10000-2)
		for _, h := range hosts {
			for _, a := range []struct{ net, addr string }{{"tcp", net.JoinHostPort(h, strconv.Itoa(port))},
				{"tcp", net.JoinHostPort(h, strconv.Itoa(port+1))}, {"udp", net.JoinHostPort(h, strconv.Itoa(port+1))}} {
				var err error
				if a.net == "udp" {
					var pc net.PacketConn
					if pc, err = net.ListenPacket("udp", a.addr); err == nil {
						_ = pc.Close()
					}
				} else {
					var l net.Listener
					if l, err = net.Listen("tcp", a.addr); err == nil {
						_ = l.Close()
					}
				}
				if err != nil {
					continue next
				}
			}
		}
		return port
	}
	t.Fatalf("no port free on %v", hosts)
	return 0
}

// Nodes find each other through one name that resolves to all their
// addresses, as pods do through a headless Service: a node that starts
// before the name resolves, or finds only itself there, serves alone and
// looks the name up again until it finds the others; an address where
// nothing answers does not stop it.
func TestJoinByName(t *testing.T) {
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	port := sharedPort(t, hosts...)
	seed := "peers:" + strconv.Itoa(port)
	r := newStubResolver()
	var nodes []*Node
	var recs []*recorder
	for i, h := range hosts[:2] {
		c := testConfig(fmt.Sprintf("n%d", i+1))
		c.Listen = net.JoinHostPort(h, strconv.Itoa(port))
		c.GossipListen = "" // the interlink port + 1, as seed assumes
		c.Join = []string{seed}
		c.Resolver = r
		rec := newRecorder()
		nodes = append(nodes, startNode(t, c, rec))
		recs = append(recs, rec)
	}
	// The name does not resolve yet: each node serves alone.
	for _, n := range nodes {
		if m := n.Members(); len(m) != 1 {
			t.Fatalf("%s has members %v before the name resolves", n.Name(), m)
		}
	}
	// The name now has both nodes and an address where nothing listens;
	// each node finds the other on a later lookup.
	before := r.count("peers")
	r.set("peers", "127.0.0.4", hosts[0], hosts[1])
	waitUp(t, recs[0], "n2")
	waitUp(t, recs[1], "n1")
	if r.count("peers") <= before {
		t.Fatalf("the name was not looked up again (%d lookups)", r.count("peers"))
	}
	// A third node finds both through the name at once; it is among its
	// addresses, and leaves itself out.
	r.set("peers", "127.0.0.4", hosts[0], hosts[1], hosts[2])
	c := testConfig("n3")
	c.Listen = net.JoinHostPort(hosts[2], strconv.Itoa(port))
	c.GossipListen = ""
	c.Join = []string{seed}
	c.Resolver = r
	rec := newRecorder()
	n3 := startNode(t, c, rec)
	nodes = append(nodes, n3)
	waitFor(t, func() bool {
		for _, n := range nodes {
			ms := n.Members()
			if len(ms) != 3 {
				return false
			}
			for _, m := range ms {
				if m.State != "alive" || m.LanesUp != c.Lanes {
					return false
				}
			}
		}
		return true
	})
	for _, m := range nodes[0].Members() {
		if m.Name == "n3" && m.Interlink != c.Listen {
			t.Errorf("n1 reaches n3 at %s, want %s", m.Interlink, c.Listen)
		}
	}
}

// A node bound to every address advertises AdvertiseIP to its peers, and
// they reach it there.
func TestWildcardAdvertisesAdvertiseIP(t *testing.T) {
	ra, rb := newRecorder(), newRecorder()
	a := startNode(t, testConfig("a"), ra)
	cb := testConfig("b")
	cb.Listen = "0.0.0.0:0"
	cb.GossipListen = "0.0.0.0:0"
	cb.AdvertiseIP = "127.0.0.5"
	cb.Join = []string{"gossip=" + a.ml.LocalNode().Address()}
	b := startNode(t, cb, rb)
	waitUp(t, ra, "b")
	waitUp(t, rb, "a")
	_, port, _ := net.SplitHostPort(b.Addr())
	want := net.JoinHostPort("127.0.0.5", port)
	waitFor(t, func() bool { return a.Members()[1].LanesUp == cb.Lanes })
	m := a.Members()[1]
	if m.Interlink != want || !strings.HasPrefix(m.Gossip, "127.0.0.5:") {
		t.Errorf("a knows b at interlink %s, gossip %s; want %s and 127.0.0.5", m.Interlink, m.Gossip, want)
	}
}
