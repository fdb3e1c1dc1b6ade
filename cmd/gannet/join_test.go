package main

import (
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// dnsServer is a DNS server on a loopback UDP port that knows one name:
// it answers A queries for it with the addresses the test sets, AAAA
// queries with none, and every other name with NXDOMAIN, as does the
// cluster DNS of Kubernetes for a headless Service with no pod yet.
type dnsServer struct {
	pc      net.PacketConn
	name    string // lower case, with the final dot
	mu      sync.Mutex
	addrs   []netip.Addr // nil: the name does not exist
	queries atomic.Int32 // for name
}

func startDNS(t *testing.T, name string) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{pc: pc, name: strings.ToLower(name)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := d.answer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	t.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
	return d
}

func (d *dnsServer) addr() string { return d.pc.LocalAddr().String() }

// set makes the name resolve to addrs.
func (d *dnsServer) set(addrs ...string) {
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	d.mu.Lock()
	d.addrs = as
	d.mu.Unlock()
}

// answer builds the response to one query (RFC 1035 section 4.1), or nil
// for a packet it cannot read.
func (d *dnsServer) answer(q []byte) []byte {
	const (
		typeA    = 1
		typeAAAA = 28
	)
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	// The question: labels up to the root, then type and class.
	var name strings.Builder
	i := 12
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return nil
		}
		name.WriteString(strings.ToLower(string(q[i : i+l])))
		name.WriteByte('.')
		i += l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i:])
	question := q[12 : i+4]

	rcode := uint16(0)
	var rdata [][]byte
	if name.String() != d.name {
		rcode = 3 // NXDOMAIN
	} else {
		d.queries.Add(1)
		d.mu.Lock()
		if d.addrs == nil {
			rcode = 3
		}
		for _, a := range d.addrs {
			if (qtype == typeA && a.Is4()) || (qtype == typeAAAA && a.Is6()) {
				rdata = append(rdata, a.AsSlice())
			}
		}
		d.mu.Unlock()
	}
	// Header: the query's id and RD bit; QR, AA and RA set.
	flags := 0x8000 | 0x0400 | 0x0080 | binary.BigEndian.Uint16(q[2:])&0x0100 | rcode
	r := binary.BigEndian.AppendUint16(nil, binary.BigEndian.Uint16(q))
	r = binary.BigEndian.AppendUint16(r, flags)
	r = binary.BigEndian.AppendUint16(r, 1)
	r = binary.BigEndian.AppendUint16(r, uint16(len(rdata)))
	r = binary.BigEndian.AppendUint16(r, 0)
	r = binary.BigEndian.AppendUint16(r, 0)
	r = append(r, question...)
	for _, rd := range rdata {
		r = append(r, 0xC0, 12) // the name, by pointer to the question's
		r = binary.BigEndian.AppendUint16(r, qtype)
		r = binary.BigEndian.AppendUint16(r, 1) // class IN
		r = binary.BigEndian.AppendUint32(r, 0) // TTL
		r = binary.BigEndian.AppendUint16(r, uint16(len(rd)))
		r = append(r, rd...)
	}
	return r
}

// clusterPortPair finds a port that is free, with the next one for gossip
// (TCP and UDP), on each of hosts ("" for every address). Every pod of a
// StatefulSet listens on the same port of its own address, and --join
// names that one port, so the port cannot be left to the kernel. It is
// drawn from below the ephemeral range, where the kernel hands out ports
// for outgoing connections and ":0" listeners: on a busy host (or one
// where other tests run) a port from that range may be taken again by the
// time the broker binds it, and a wildcard bind fails on a port that any
// address uses.
func clusterPortPair(t *testing.T, hosts ...string) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				low = n
			}
		}
	}
	free := func(network, addr string) bool {
		if network == "udp" {
			pc, err := net.ListenPacket(network, addr)
			if err == nil {
				_ = pc.Close()
			}
			return err == nil
		}
		ln, err := net.Listen(network, addr)
		if err == nil {
			_ = ln.Close()
		}
		return err == nil
	}
next:
	for range 200 {
		port := 10000 + rand.IntN(low-10000-2)
		for _, h := range hosts {
			c, g := net.JoinHostPort(h, strconv.Itoa(port)), net.JoinHostPort(h, strconv.Itoa(port+1))
			if !free("tcp", c) || !free("tcp", g) || !free("udp", g) {
				continue next
			}
		}
		return port
	}
	t.Fatalf("no port pair free on %q", hosts)
	return 0
}

// clusterMember is a member as GET /api/v1/cluster lists it.
type clusterMember struct {
	Name      string `json:"name"`
	Interlink string `json:"interlink"`
	Gossip    string `json:"gossip"`
	State     string `json:"state"`
}

func clusterMembers(t *testing.T, b *broker) []clusterMember {
	t.Helper()
	resp, err := http.Get("http://" + b.http + "/api/v1/cluster")
	if err != nil {
		t.Fatalf("GET /api/v1/cluster: %v", err)
	}
	defer resp.Body.Close()
	var v struct {
		Members []clusterMember `json:"members"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("GET /api/v1/cluster: %v", err)
	}
	return v.Members
}

// A cluster forms the way it does in Kubernetes: the nodes share one
// --join name that resolves to the addresses of all of them (a headless
// Service), served here by a DNS server of the test's own through
// --join-resolver. Nodes that start before the name resolves serve alone
// and find each other once it does; an address where nothing answers is
// passed over; a node that binds every address advertises POD_IP, and the
// others reach it there.
func TestJoinThroughDNSName(t *testing.T) {
	const name = "peers.gannet.test"
	dns := startDNS(t, name+".")
	port := clusterPortPair(t, "127.0.0.2", "127.0.0.3")
	p := strconv.Itoa(port)
	secret := "--cluster-secret-file=" + secretFile(t, clusterSecret)
	args := func(node, listen string) []string {
		return []string{"--node-name=" + node, "--cluster-listen=" + listen, "--join=" + name + ":" + p,
			"--join-resolver=" + dns.addr(), "--cluster-failure-timeout=1s", secret, "--log-level=info"}
	}
	// The name does not exist yet: the first two nodes start and serve
	// alone.
	n1 := &clusterNode{name: "n1", b: startGannet(t, args("n1", "127.0.0.2:"+p)...)}
	n2 := &clusterNode{name: "n2", b: startGannet(t, args("n2", "127.0.0.3:"+p)...)}
	for _, n := range []*clusterNode{n1, n2} {
		if ms := clusterMembers(t, n.b); len(ms) != 1 {
			t.Fatalf("%s lists %v before the name resolves", n.name, ms)
		}
	}
	if dns.queries.Load() == 0 {
		t.Fatal("the nodes did not ask the --join-resolver server")
	}
	// Now the name has both nodes, after an address where nothing
	// listens; each finds the other on a later lookup.
	dns.set("127.0.0.5", "127.0.0.2", "127.0.0.3")
	waitMesh(t, []*clusterNode{n1, n2})

	// A third node binds every address of its own port and is given
	// POD_IP; it joins through the name.
	var q int
	n3 := &clusterNode{name: "n3"}
	n3.b = startGannetUnder(t, []string{"env", podIPEnv + "=127.0.0.6"}, func(int) []string {
		q = clusterPortPair(t, "")
		return args("n3", "0.0.0.0:"+strconv.Itoa(q))
	})
	all := []*clusterNode{n1, n2, n3}
	waitMesh(t, all)
	wantLink, wantGossip := "127.0.0.6:"+strconv.Itoa(q), "127.0.0.6:"+strconv.Itoa(q+1)
	for _, n := range all[:2] {
		ms := clusterMembers(t, n.b)
		i := slices.IndexFunc(ms, func(m clusterMember) bool { return m.Name == "n3" })
		if i < 0 || ms[i].Interlink != wantLink || ms[i].Gossip != wantGossip {
			t.Errorf("%s lists %+v, want n3 at interlink %s and gossip %s", n.name, ms, wantLink, wantGossip)
		}
	}
	if log := n3.b.stderr.String(); !strings.Contains(log, "advertising the address given for this node (POD_IP)") {
		t.Errorf("n3 does not log the address it advertises:\n%s", log)
	}
}

// POD_IP must be an address, and --join-resolver a host:port with --join.
func TestJoinFlagsChecked(t *testing.T) {
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir(),
		"--cluster-listen=127.0.0.1:0", "--gossip-listen=127.0.0.1:0", "--cluster-insecure"}
	for _, c := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--join-resolver=127.0.0.1:53"}, "--join-resolver needs --join"},
		{nil, []string{"--join=peers:7946", "--join-resolver=127.0.0.1"}, "--join-resolver must be a DNS server's host:port"},
		{[]string{podIPEnv + "=gannet-0"}, nil, "the POD_IP environment variable must be this node's IP address"},
		{[]string{podIPEnv + "=0.0.0.0"}, nil, "the POD_IP environment variable must be this node's IP address"},
	} {
		code, out := exitCodeEnv(t, c.env, append(slices.Clone(safe), c.args...)...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%v %v: exit code %d, output:\n%s\nwant 2 and %q", c.env, c.args, code, out, c.want)
		}
	}
	// An explicit --cluster-advertise leaves POD_IP unread.
	code, out := exitCodeEnv(t, []string{podIPEnv + "=gannet-0"},
		append(slices.Clone(safe), "--cluster-advertise=127.0.0.1:1", "--join-resolver=127.0.0.1")...)
	if code != 2 || strings.Contains(out, podIPEnv) {
		t.Errorf("exit code %d, output:\n%s\nwant 2 for --join-resolver alone, not POD_IP", code, out)
	}
}
