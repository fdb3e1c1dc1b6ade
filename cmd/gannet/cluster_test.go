package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/codec"
)

// clusterNode is one gannet process of a test cluster. Its cluster and
// gossip addresses and its data directory outlive restarts.
type clusterNode struct {
	name      string
	cluster   string
	gossip    string
	advertise string // defaults to cluster
	data      string
	secret    []string // how the node gets the cluster secret
	extra     []string
	b         *broker
}

// clusterSecret is the test clusters' secret.
const clusterSecret = "cluster test secret"

// secretFile writes the cluster secret to a file only its owner reads.
func secretFile(t *testing.T, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newClusterNodes(t *testing.T, n int, extra ...string) []*clusterNode {
	var nodes []*clusterNode
	secret := []string{"--cluster-secret-file=" + secretFile(t, clusterSecret)}
	for i := range n {
		nodes = append(nodes, &clusterNode{name: fmt.Sprintf("n%d", i+1), cluster: freeAddr(t), gossip: freeUDPTCP(t),
			data: t.TempDir(), secret: secret, extra: extra})
	}
	return nodes
}

// freeUDPTCP finds a loopback port free for both TCP and UDP (gossip uses
// both).
func freeUDPTCP(t *testing.T) string {
	t.Helper()
	for range 50 {
		addr := freeAddr(t)
		pc, err := net.ListenPacket("udp", addr)
		if err == nil {
			_ = pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for TCP and UDP")
	return ""
}

// start runs the node, joining the others' gossip addresses.
func (cn *clusterNode) start(t *testing.T, all []*clusterNode) {
	t.Helper()
	var seeds []string
	for _, o := range all {
		if o != cn {
			seeds = append(seeds, "gossip="+o.gossip)
		}
	}
	cn.b = startGannetArgs(t, func(attempt int) []string {
		if attempt > 0 && cn.advertise == "" { // a port was taken since it was picked
			cn.cluster, cn.gossip = freeAddr(t), freeUDPTCP(t)
		}
		args := []string{"--node-name=" + cn.name, "--cluster-listen=" + cn.cluster, "--gossip-listen=" + cn.gossip,
			"--join=" + strings.Join(seeds, ","), "--cluster-failure-timeout=1s",
			"--data-dir=" + cn.data, "--log-level=warn"}
		if cn.advertise != "" {
			args = append(args, "--cluster-advertise="+cn.advertise)
		}
		args = append(args, cn.secret...)
		return append(args, cn.extra...)
	})
}

func startClusterNodes(t *testing.T, nodes []*clusterNode) {
	t.Helper()
	for _, n := range nodes {
		n.start(t, nodes)
	}
	// Registered after the processes', so it runs before they are killed:
	// a failing test shows each node's log and counters.
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				if n.b != nil {
					t.Logf("%s log:\n%s", n.name, n.b.stderr.String())
					if resp, err := http.Get("http://" + n.b.http + "/metrics"); err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						for _, l := range strings.Split(string(b), "\n") {
							if strings.Contains(l, "interlink_messages") || strings.Contains(l, "forwarded") ||
								strings.Contains(l, "dropped") || strings.Contains(l, "duplicates") || strings.Contains(l, "messages_") {
								t.Logf("%s %s", n.name, l)
							}
						}
					}
				}
			}
		}
	})
	waitMesh(t, nodes)
}

type memberView struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	LanesUp int    `json:"lanes_up"`
	Queued  int    `json:"queued"`
}

func members(t *testing.T, n *clusterNode) []memberView {
	t.Helper()
	resp, err := http.Get("http://" + n.b.http + "/api/v1/cluster")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var v struct {
		Members []memberView `json:"members"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("GET /api/v1/cluster: %v", err)
	}
	return v.Members
}

// waitMesh waits until every node lists every other as alive with all its
// lanes up.
func waitMesh(t *testing.T, nodes []*clusterNode) {
	t.Helper()
	waitUntil(t, 30*time.Second, "a full mesh", func() bool {
		for _, n := range nodes {
			ms := members(t, n)
			if len(ms) != len(nodes) {
				return false
			}
			for _, m := range ms {
				if m.State != "alive" || m.LanesUp != lanesOf(n) {
					return false
				}
			}
		}
		return true
	})
}

// lanesOf is the --interlink-lanes a node runs with.
func lanesOf(n *clusterNode) int {
	for _, a := range n.extra {
		if v, ok := strings.CutPrefix(a, "--interlink-lanes="); ok {
			k, _ := strconv.Atoi(v)
			return k
		}
	}
	return 3
}

func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// paho connects a paho.mqtt.golang client; every message lands on msgs.
type pahoClient struct {
	paho3.Client
	msgs chan paho3.Message
}

func dialPaho(t *testing.T, addr, id string, clean bool) *pahoClient {
	t.Helper()
	pc := &pahoClient{msgs: make(chan paho3.Message, 10000)}
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { pc.msgs <- m })
	pc.Client = paho3.NewClient(o)
	tok := pc.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect to %s: %v", id, addr, tok.Error())
	}
	t.Cleanup(func() { pc.Disconnect(50) })
	return pc
}

func (pc *pahoClient) sub(t *testing.T, filter string, qos byte) {
	t.Helper()
	tok := pc.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (pc *pahoClient) pub(t *testing.T, topic string, qos byte, retained bool, payload string) {
	t.Helper()
	tok := pc.Publish(topic, qos, retained, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// probe publishes QoS 0 probes on topic from pub until sub receives one:
// the route from sub's node has reached pub's node.
func probe(t *testing.T, pub, sub *pahoClient, topic string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pub.Publish(topic, 0, false, "probe")
		select {
		case m := <-sub.msgs:
			if string(m.Payload()) != "probe" {
				t.Fatalf("got %q while probing", m.Payload())
			}
			// Drain probes still in flight.
			for {
				select {
				case <-sub.msgs:
				case <-time.After(200 * time.Millisecond):
					return
				}
			}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no route for %s in 20s", topic)
		}
	}
}

// collect takes n messages from pc, failing after a while.
func collect(t *testing.T, pc *pahoClient, n int) []paho3.Message {
	t.Helper()
	var out []paho3.Message
	for len(out) < n {
		select {
		case m := <-pc.msgs:
			out = append(out, m)
		case <-time.After(15 * time.Second):
			t.Fatalf("got %d of %d messages", len(out), n)
		}
	}
	return out
}

// Publishes on one node reach subscribers on the others at QoS 0, 1 and 2,
// through wildcards, and a shared group spread over two nodes gets each
// message exactly once.
func TestClusterCrossNodeDelivery(t *testing.T) {
	nodes := newClusterNodes(t, 3)
	startClusterNodes(t, nodes)
	pub := dialPaho(t, nodes[0].b.mqtt, "pub", true)

	const n = 200
	for qos := byte(0); qos <= 2; qos++ {
		sub := dialPaho(t, nodes[2].b.mqtt, fmt.Sprintf("sub-q%d", qos), true)
		sub.sub(t, "plant/+/temp/#", qos)
		probe(t, pub, sub, "plant/probe/temp")
		for i := range n {
			pub.pub(t, "plant/line"+strconv.Itoa(i%3)+"/temp", qos, false, strconv.Itoa(i))
		}
		got := collect(t, sub, n)
		seen := make(map[string]bool)
		for _, m := range got {
			if seen[string(m.Payload())] {
				t.Fatalf("QoS %d: %s delivered twice", qos, m.Payload())
			}
			seen[string(m.Payload())] = true
			if m.Qos() != qos {
				t.Fatalf("QoS %d subscription got QoS %d", qos, m.Qos())
			}
		}
	}

	// One group, members on n2 and n3; publishes from n1.
	m2 := dialPaho(t, nodes[1].b.mqtt, "worker-2", true)
	m3 := dialPaho(t, nodes[2].b.mqtt, "worker-3", true)
	m2.sub(t, "$share/workers/jobs/#", 1)
	m3.sub(t, "$share/workers/jobs/#", 1)
	watch := dialPaho(t, nodes[1].b.mqtt, "watch", true)
	watch.sub(t, "jobs/#", 1)
	probe(t, pub, watch, "jobs/probe")
	// Both members' routes are in once a publish reaches each of them.
	waitUntil(t, 20*time.Second, "both group members routed", func() bool {
		pub.pub(t, "jobs/warmup", 1, false, "warmup")
		<-watch.msgs
		for {
			select {
			case <-m2.msgs:
				for len(m3.msgs) == 0 {
					pub.pub(t, "jobs/warmup", 1, false, "warmup")
					<-watch.msgs
					select {
					case <-m2.msgs:
					case <-m3.msgs:
						return true
					case <-time.After(time.Second):
						return false
					}
				}
				<-m3.msgs
				return true
			case <-m3.msgs:
			case <-time.After(time.Second):
				return false
			}
		}
	})
	drain := func(pc *pahoClient) {
		for {
			select {
			case <-pc.msgs:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain(m2)
	drain(m3)
	drain(watch)
	const jobs = 100
	for i := range jobs {
		pub.pub(t, "jobs/"+strconv.Itoa(i), 1, false, "job")
	}
	collect(t, watch, jobs) // every job was routed
	got := make(map[string]int)
	var c2, c3 int
	deadline := time.After(15 * time.Second)
	for c2+c3 < jobs {
		select {
		case m := <-m2.msgs:
			got[m.Topic()]++
			c2++
		case m := <-m3.msgs:
			got[m.Topic()]++
			c3++
		case <-deadline:
			t.Fatalf("group members got %d+%d of %d jobs", c2, c3, jobs)
		}
	}
	for topic, k := range got {
		if k != 1 {
			t.Fatalf("%s went to %d group members", topic, k)
		}
	}
	if c2 == 0 || c3 == 0 {
		t.Fatalf("one member got everything (%d, %d): the group did not span the nodes", c2, c3)
	}
}

// A persistent session on n1 with queued QoS 1 messages moves to n3 when its
// client connects there; the connection still on the old node gets
// DISCONNECT 0x8E and its will is not sent.
func TestClusterTakeover(t *testing.T) {
	nodes := newClusterNodes(t, 3, "--interlink-lanes=2")
	startClusterNodes(t, nodes)

	sub := dialPaho(t, nodes[0].b.mqtt, "dev1", false)
	sub.sub(t, "fleet/dev1/cmd", 1)
	sub.Disconnect(50)
	pub := dialPaho(t, nodes[1].b.mqtt, "ctl", true)
	watch := dialPaho(t, nodes[1].b.mqtt, "watch", true)
	watch.sub(t, "fleet/dev1/cmd", 1)
	probe(t, pub, watch, "fleet/dev1/cmd") // the route from n1 is in
	for i := range 20 {
		pub.pub(t, "fleet/dev1/cmd", 1, false, "cmd"+strconv.Itoa(i))
	}
	collect(t, watch, 20)

	// The probes were QoS 0 and the session offline: only the 20 wait.
	moved := dialPaho(t, nodes[2].b.mqtt, "dev1", false)
	got := collect(t, moved, 20)
	for i, m := range got {
		if string(m.Payload()) != "cmd"+strconv.Itoa(i) {
			t.Fatalf("message %d after the takeover: %q", i, m.Payload())
		}
	}

	// Now the session lives on n3 with a connection and a will; connect
	// on n2 as an MQTT 5 client and watch the n3 connection end with 0x8E.
	moved.Disconnect(50)
	old := rawConn(t, nodes[2].b.mqtt)
	cp := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, KeepAlive: 60, ClientID: []byte("dev2"),
		WillFlag: true, WillTopic: []byte("fleet/dev2/will"), WillPayload: []byte("gone"), WillQoS: 1}
	cp.Props.SessionExpiry = 600
	cp.Props.Set(codec.PropSessionExpiry)
	old.send(cp)
	if p, err := old.read(); err != nil || p.Type() != codec.CONNACK {
		t.Fatalf("dev2 on n3: %v %v", p, err)
	}
	willWatch := dialPaho(t, nodes[0].b.mqtt, "will-watch", true)
	willWatch.sub(t, "fleet/dev2/#", 1)
	probe(t, dialPaho(t, nodes[2].b.mqtt, "prober", true), willWatch, "fleet/dev2/probe")

	again := rawConn(t, nodes[1].b.mqtt)
	cp.WillFlag = false
	again.send(cp)
	p, err := again.read()
	if ca, ok := p.(*codec.Connack); err != nil || !ok || !ca.SessionPresent {
		t.Fatalf("dev2 on n2: %+v %v, want CONNACK with the session present", p, err)
	}
	p, err = old.read()
	if d, ok := p.(*codec.Disconnect); err != nil || !ok || d.Code != codec.SessionTakenOver {
		t.Fatalf("old dev2 connection got %+v %v, want DISCONNECT 0x8E", p, err)
	}
	// The will would have been published by n3 before anything a client
	// connected to n3 publishes after the takeover.
	marker := dialPaho(t, nodes[2].b.mqtt, "marker", true)
	marker.pub(t, "fleet/dev2/marker", 1, false, "after")
	m := collect(t, willWatch, 1)[0]
	if m.Topic() != "fleet/dev2/marker" {
		t.Fatalf("got %s %q after the takeover, want only the marker (no will)", m.Topic(), m.Payload())
	}
}

// rawConn dials an MQTT 5 connection that has not sent CONNECT.
func rawConn(t *testing.T, addr string) *mqttConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &mqttConn{t: t, c: c, r: bufio.NewReader(c), v: codec.V5}
}

// Retained messages reach a node that joins late, clearings included.
func TestClusterRetainedOnLateJoin(t *testing.T) {
	nodes := newClusterNodes(t, 3)
	startClusterNodes(t, nodes[:2])
	pub := dialPaho(t, nodes[0].b.mqtt, "pub", true)
	pub.pub(t, "site/a/status", 1, true, "online")
	pub.pub(t, "site/b/status", 1, true, "offline")
	pub.pub(t, "site/c/status", 1, true, "stale")
	pub.pub(t, "site/c/status", 1, true, "") // cleared
	nodes[2].start(t, nodes)
	waitMesh(t, nodes)
	// The retained set arrives with the link; subscribe until it has.
	var got map[string]string
	waitUntil(t, 20*time.Second, "the retained messages on n3", func() bool {
		c := dialPaho(t, nodes[2].b.mqtt, "late-"+strconv.Itoa(int(time.Now().UnixNano())), true)
		defer c.Disconnect(0)
		c.sub(t, "site/#", 1)
		got = make(map[string]string)
		for {
			select {
			case m := <-c.msgs:
				got[m.Topic()] = string(m.Payload())
			case <-time.After(300 * time.Millisecond):
				if len(got) != 2 {
					t.Logf("retained on n3 so far: %v", got)
				}
				return len(got) == 2
			}
		}
	})
	if got["site/a/status"] != "online" || got["site/b/status"] != "offline" {
		t.Fatalf("retained on the late node: %v", got)
	}
}

// kill -9 of the node that holds persistent sessions, under load from
// another node: the survivors keep serving, the killed node comes back on
// its data and rejoins, and every acknowledged QoS 1/2 message reaches
// the sessions (QoS 2 exactly once).
func TestClusterKill9(t *testing.T) {
	nodes := newClusterNodes(t, 3, "--durability=sync", "--max-queued-messages=1000000")
	startClusterNodes(t, nodes)
	victim := nodes[2]
	subscribeSessions(t, victim.b.mqtt)
	// The routes reach n1 before the load starts.
	pubNode := nodes[0]
	watch := dialPaho(t, victim.b.mqtt, "watch", true)
	watch.sub(t, "crash/#", 0)
	probe(t, dialPaho(t, pubNode.b.mqtt, "prober", true), watch, "crash/probe")
	watch.Disconnect(0)

	pubs := loadPublishers()
	_, wait, _ := runLoad(pubs, pubNode.b.mqtt, 1000, 1200, func() { _ = victim.b.cmd.Process.Kill() })
	wait()
	for _, p := range pubs {
		if p.err != nil {
			t.Fatalf("publisher %s on a surviving node: %v", p.id, p.err)
		}
	}
	<-victim.b.exited
	// Survivors keep serving each other meanwhile.
	a := dialPaho(t, nodes[1].b.mqtt, "survivor-sub", true)
	a.sub(t, "alive/#", 1)
	probe(t, dialPaho(t, nodes[0].b.mqtt, "survivor-pub", true), a, "alive/x")

	victim.start(t, nodes)
	waitMesh(t, nodes)
	t.Logf("n1 sees after the restart: %+v", members(t, nodes[0]))
	defer func() {
		t.Logf("n1 sees at the end: %+v", members(t, nodes[0]))
		resp, err := http.Get("http://" + victim.b.http + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "interlink") || strings.Contains(l, "forwarded") || strings.Contains(l, "dropped") {
					t.Log(l)
				}
			}
		}
	}()
	for _, s := range crashSessions {
		checkDelivered(t, s, receiveAll(t, victim.b.mqtt, s.id, pubs), pubs)
	}
}

// kill -9 of the node the publishers are connected to, under load: what
// it acknowledged and had not yet handed to the subscribers' node is kept
// in its store and sent after it restarts, under its first identity, so
// every acknowledged message reaches the persistent sessions on the other
// node, and QoS 2 exactly once.
func TestClusterKill9PublisherNode(t *testing.T) {
	nodes := newClusterNodes(t, 2, "--durability=sync", "--max-queued-messages=1000000")
	startClusterNodes(t, nodes)
	pubNode, subNode := nodes[0], nodes[1]
	subscribeSessions(t, subNode.b.mqtt)
	watch := dialPaho(t, subNode.b.mqtt, "watch", true)
	watch.sub(t, "crash/#", 0)
	probe(t, dialPaho(t, pubNode.b.mqtt, "prober", true), watch, "crash/probe")
	watch.Disconnect(0)

	pubs := loadPublishers()
	_, wait, _ := runLoad(pubs, pubNode.b.mqtt, 20_000, 1500, func() { _ = pubNode.b.cmd.Process.Kill() })
	wait()
	<-pubNode.b.exited
	for _, p := range pubs {
		if p.err != nil && !p.lost {
			t.Fatalf("publisher %s: %v", p.id, p.err)
		}
	}
	pubNode.start(t, nodes)
	waitMesh(t, nodes)
	for _, s := range crashSessions {
		got := receiveAll(t, subNode.b.mqtt, s.id, pubs)
		dups := checkDelivered(t, s, got, pubs)
		t.Logf("%s: %d messages, %d at QoS 1 delivered more than once", s.id, len(got), dups)
	}
}

// tcpProxy forwards connections to target; cut closes every connection and
// refuses new ones until heal. It adds delay to every chunk it forwards.
type tcpProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string, delay time.Duration) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, delay: delay, conns: make(map[net.Conn]struct{})}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *tcpProxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close()
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				time.Sleep(p.delay)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go pipe(up, c)
	pipe(c, up)
}

func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// Links to n2 run through a proxy that delays them, then cuts them. Both
// sides keep serving their own clients; what n1 learns during the cut
// (routes, retained messages, QoS 1 messages for n2's sessions) reaches n2
// once the link heals, and a client id connected on both sides keeps only
// its newest connection.
func TestClusterPartitionHeals(t *testing.T) {
	nodes := newClusterNodes(t, 3)
	realAddr := nodes[1].cluster
	proxy := startProxy(t, realAddr, 2*time.Millisecond)
	nodes[1].advertise = proxy.ln.Addr().String()
	startClusterNodes(t, nodes)

	n1pub := dialPaho(t, nodes[0].b.mqtt, "n1-pub", true)
	n2sub := dialPaho(t, nodes[1].b.mqtt, "n2-sub", false)
	n2sub.sub(t, "orders/#", 1)
	probe(t, n1pub, n2sub, "orders/probe") // through the delaying proxy

	// A client connected to n2 before the cut...
	dupConnect := func(addr string) *mqttConn {
		mc := rawConn(t, addr)
		mc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, KeepAlive: 60, ClientID: []byte("dup")})
		if p, err := mc.read(); err != nil || p.Type() != codec.CONNACK {
			t.Fatalf("dup: %v %v", p, err)
		}
		return mc
	}
	older := dupConnect(nodes[1].b.mqtt)

	proxy.setCut(true)
	waitUntil(t, 20*time.Second, "n1's lanes to n2 down", func() bool {
		for _, m := range members(t, nodes[0]) {
			if m.Name == "n2" {
				return m.LanesUp == 0
			}
		}
		return false
	})
	// n1 side: acknowledged QoS 1 for n2's session, a retained message,
	// and a new subscription whose route n2 cannot hear of yet.
	for i := range 50 {
		n1pub.pub(t, "orders/"+strconv.Itoa(i), 1, false, strconv.Itoa(i))
	}
	n1pub.pub(t, "config/mode", 1, true, "eco")
	n1sub := dialPaho(t, nodes[0].b.mqtt, "n1-sub", true)
	n1sub.sub(t, "alerts/#", 1)
	// n2 side keeps serving its own clients.
	n2pub := dialPaho(t, nodes[1].b.mqtt, "n2-pub", true)
	n2pub.pub(t, "orders/local", 1, false, "local")
	if m := collect(t, n2sub, 1)[0]; string(m.Payload()) != "local" {
		t.Fatalf("n2 during the cut got %q, want its own client's message only", m.Payload())
	}

	// ...and the same client id on n1 during it: n2 cannot be asked.
	newer := dupConnect(nodes[0].b.mqtt)

	proxy.setCut(false)
	// The newest connection wins once the sides hear of each other.
	if p, err := older.read(); err != nil || p.Type() != codec.DISCONNECT || p.(*codec.Disconnect).Code != codec.SessionTakenOver {
		t.Fatalf("older dup connection after the heal: %+v %v, want DISCONNECT 0x8E", p, err)
	}
	newer.send(&codec.Pingreq{})
	if p, err := newer.read(); err != nil || p.Type() != codec.PINGRESP {
		t.Fatalf("newer dup connection after the heal: %+v %v, want it still served", p, err)
	}
	got := collect(t, n2sub, 50)
	for i, m := range got {
		if string(m.Payload()) != strconv.Itoa(i) {
			t.Fatalf("after the heal, message %d is %q", i, m.Payload())
		}
	}
	// Routes converged: n2's publish reaches n1's new subscription.
	probe(t, n2pub, n1sub, "alerts/probe")
	late := dialPaho(t, nodes[1].b.mqtt, "n2-late", true)
	late.sub(t, "config/#", 1)
	if m := collect(t, late, 1)[0]; string(m.Payload()) != "eco" {
		t.Fatalf("retained after the heal: %q", m.Payload())
	}
}

// Clients connect through real HAProxy (leastconn, health checks on
// /readyz, PROXY protocol v2) to three nodes and exchange messages across
// them; each node sees the clients' own addresses.
func TestClusterBehindHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (.ci/run installs it)")
	}
	nodes := newClusterNodes(t, 3, "--proxy-protocol", "--log-level=debug")
	startClusterNodes(t, nodes)
	front := freeAddr(t)
	var servers strings.Builder
	for _, n := range nodes {
		_, hport, _ := net.SplitHostPort(n.b.http)
		fmt.Fprintf(&servers, "    server %s %s send-proxy-v2 check port %s inter 200ms\n", n.name, n.b.mqtt, hport)
	}
	cfg := fmt.Sprintf(`global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend mqtt
    bind %s
    default_backend gannet
backend gannet
    balance leastconn
    option httpchk GET /readyz
%s`, front, servers.String())
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	hp := exec.Command(bin, "-f", path, "-db")
	out := &lockedBuffer{}
	hp.Stdout, hp.Stderr = out, out
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hp.Process.Kill(); _ = hp.Wait() })
	waitUntil(t, 20*time.Second, "HAProxy listening", func() bool {
		c, err := net.Dial("tcp", front)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	// leastconn with every connection held open spreads them over the
	// nodes; find a subscriber and a publisher that landed on different
	// ones.
	var clients []*pahoClient
	for i := range 6 {
		clients = append(clients, dialPaho(t, front, "lb-"+strconv.Itoa(i), true))
	}
	home := func(id string) string {
		for _, n := range nodes {
			if strings.Contains(n.b.stderr.String(), "client="+id+" remote=127.0.0.1:") {
				return n.name
			}
		}
		return ""
	}
	homes := make(map[string]bool)
	waitUntil(t, 10*time.Second, "every client's home known", func() bool {
		clear(homes)
		for i := range clients {
			h := home("lb-" + strconv.Itoa(i))
			if h == "" {
				return false
			}
			homes[h] = true
		}
		return true
	})
	if len(homes) < 2 {
		t.Fatalf("HAProxy put every client on %v", homes)
	}
	sub, pub := clients[0], clients[0]
	for i, c := range clients {
		if home("lb-"+strconv.Itoa(i)) != home("lb-0") {
			pub = c
			break
		}
	}
	sub.sub(t, "lb/#", 1)
	probe(t, pub, sub, "lb/probe")
	for i := range 20 {
		pub.pub(t, "lb/"+strconv.Itoa(i), 1, false, strconv.Itoa(i))
	}
	collect(t, sub, 20)
	// The nodes logged the clients' addresses, not HAProxy's: with
	// PROXY v2 the source port is the client's own ephemeral port, which
	// HAProxy's outbound connection does not share.
	for _, n := range nodes {
		if strings.Contains(n.b.stderr.String(), "bad PROXY protocol header") {
			t.Fatalf("%s refused a HAProxy connection:\n%s", n.name, n.b.stderr.String())
		}
	}
	_, _ = io.Discard.Write([]byte(out.String()))
}

// exitCodeEnv is exitCode with env added to the child's environment.
func exitCodeEnv(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, gannetBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("gannet %q still running after 20s; output:\n%s", args, out)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("gannet %q: %v", args, err)
	return 0, ""
}

// A cluster node does not start without a secret of at least 16 bytes,
// given one way, unless --cluster-insecure says so: exit code 2 and a
// message that names the ways.
func TestClusterSecretRequired(t *testing.T) {
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir()}
	node := slices.Concat(safe, []string{"--cluster-listen=127.0.0.1:0", "--gossip-listen=127.0.0.1:0"})
	with := func(base []string, more ...string) []string { return slices.Concat(base, more) }
	good, short := secretFile(t, clusterSecret), secretFile(t, "fifteen bytes!!")
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"no secret", nil, node, []string{"--cluster-secret-file", "GANNET_CLUSTER_SECRET", "--cluster-insecure", "16 bytes"}},
		{"short file", nil, with(node, "--cluster-secret-file="+short), []string{short, "15 bytes", "at least 16"}},
		{"short env", []string{"GANNET_CLUSTER_SECRET=fifteen bytes!!"}, node, []string{"GANNET_CLUSTER_SECRET", "15 bytes", "at least 16"}},
		{"empty file", nil, with(node, "--cluster-secret-file="+empty), []string{empty, "empty"}},
		{"missing file", nil, with(node, "--cluster-secret-file=/nonexistent/secret"), []string{"--cluster-secret-file", "/nonexistent/secret"}},
		{"file and env", []string{"GANNET_CLUSTER_SECRET=" + clusterSecret}, with(node, "--cluster-secret-file="+good),
			[]string{"--cluster-secret-file", "GANNET_CLUSTER_SECRET", "one way"}},
		{"secret and insecure", nil, with(node, "--cluster-secret-file="+good, "--cluster-insecure"), []string{"--cluster-insecure", "one or the other"}},
		{"on the command line", nil, with(node, "--cluster-secret", clusterSecret), []string{"--cluster-secret is gone", "--cluster-secret-file", "GANNET_CLUSTER_SECRET"}},
		{"on the command line with =", nil, with(node, "-cluster-secret="+clusterSecret), []string{"--cluster-secret is gone"}},
		{"file without a cluster", nil, with(safe, "--cluster-secret-file="+good), []string{"--cluster-secret-file needs --cluster-listen"}},
		{"insecure without a cluster", nil, with(safe, "--cluster-insecure"), []string{"--cluster-insecure needs --cluster-listen"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out := exitCodeEnv(t, c.env, c.args...)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not name %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, clusterSecret) {
				t.Errorf("the output repeats the secret:\n%s", out)
			}
		})
	}
}

// The secret from --cluster-secret-file on one node and from
// GANNET_CLUSTER_SECRET on the other: the two form a cluster and a message
// crosses it.
func TestClusterSecretFromFileAndEnv(t *testing.T) {
	nodes := newClusterNodes(t, 2)
	nodes[0].start(t, nodes)
	nodes[1].secret = nil
	t.Setenv("GANNET_CLUSTER_SECRET", clusterSecret) // only n2 starts from here on
	nodes[1].start(t, nodes)
	waitMesh(t, nodes)
	pub := dialPaho(t, nodes[0].b.mqtt, "pub", true)
	sub := dialPaho(t, nodes[1].b.mqtt, "sub", true)
	sub.sub(t, "sealed/#", 1)
	probe(t, pub, sub, "sealed/probe")
	for _, n := range nodes {
		if logs := n.b.stderr.String(); strings.Contains(logs, "without a secret") || strings.Contains(logs, clusterSecret) {
			t.Errorf("%s log:\n%s", n.name, logs)
		}
	}
}

// --cluster-insecure nodes form a cluster, each saying once at start that
// it runs without a secret.
func TestClusterInsecure(t *testing.T) {
	nodes := newClusterNodes(t, 2)
	for _, n := range nodes {
		n.secret = []string{"--cluster-insecure"}
	}
	startClusterNodes(t, nodes)
	pub := dialPaho(t, nodes[0].b.mqtt, "pub", true)
	sub := dialPaho(t, nodes[1].b.mqtt, "sub", true)
	sub.sub(t, "open/#", 1)
	probe(t, pub, sub, "open/probe")
	for _, n := range nodes {
		if got := strings.Count(n.b.stderr.String(), "cluster running without a secret"); got != 1 {
			t.Errorf("%s warned %d times about running without a secret, want once:\n%s", n.name, got, n.b.stderr.String())
		}
	}
}

// issueNode writes a cluster node's certificate and key (name.pem,
// name.key), usable both to dial and to accept. It names no address:
// nodes check each other's chain against the cluster CA, not host names.
func (ca *testCA) issueNode(name string, serial int64) (certFile, keyFile string) {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.write(name+".pem", "CERTIFICATE", der), ca.write(name+".key", "PRIVATE KEY", kder)
}

// Two real nodes with --cluster-tls-* link over TLS: a message published
// on one reaches a subscriber on the other, each logs that its links are
// TLS, no handshake fails, and SIGHUP reloads the certificates.
func TestClusterTLS(t *testing.T) {
	ca := newTestCA(t)
	nodes := newClusterNodes(t, 2)
	for i, n := range nodes {
		cert, key := ca.issueNode(n.name, int64(100+i))
		n.extra = []string{"--cluster-tls-cert=" + cert, "--cluster-tls-key=" + key, "--cluster-tls-ca=" + ca.file,
			"--log-level=info"}
	}
	startClusterNodes(t, nodes)
	pub := dialPaho(t, nodes[0].b.mqtt, "pub", true)
	sub := dialPaho(t, nodes[1].b.mqtt, "sub", true)
	sub.sub(t, "linked/#", 1)
	probe(t, pub, sub, "linked/probe")
	pub.pub(t, "linked/over-tls", 1, false, "hello over TLS")
	if m := collect(t, sub, 1)[0]; m.Topic() != "linked/over-tls" || string(m.Payload()) != "hello over TLS" || m.Qos() != 1 {
		t.Fatalf("subscriber got %s %q QoS %d", m.Topic(), m.Payload(), m.Qos())
	}
	for _, n := range nodes {
		logs := n.b.stderr.String()
		if !strings.Contains(logs, "links=tls") || !strings.Contains(logs, "gossip_encrypted=true") || strings.Contains(logs, "without a secret") {
			t.Errorf("%s does not log TLS links and encrypted gossip:\n%s", n.name, logs)
		}
		for _, r := range []string{"untrusted_certificate", "no_certificate", "not_tls", "other"} {
			if v := metric(t, n.b, `gannet_interlink_tls_handshake_failures_total{reason="`+r+`"}`); v != "0" {
				t.Errorf("%s: %s TLS handshake failures (%s), want 0", n.name, v, r)
			}
		}
		if v := metric(t, n.b, "gannet_interlink_tls_certificate_expiry_timestamp_seconds"); v == "" || v == "0" {
			t.Errorf("%s: certificate expiry metric %q", n.name, v)
		}
	}
	b := nodes[0].b
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "a reload", func() bool {
		return strings.Contains(b.stderr.String(), "cluster TLS certificate loaded") && strings.Contains(b.stderr.String(), "msg=reloaded")
	})
	pub.pub(t, "linked/after-reload", 1, false, "still linked")
	if m := collect(t, sub, 1)[0]; string(m.Payload()) != "still linked" {
		t.Fatalf("after the reload the subscriber got %q", m.Payload())
	}
}

// Bad --cluster-tls-* settings stop the binary with exit code 2 and a
// message naming the flag or file.
func TestClusterTLSBadFlagsExitTwo(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	cert, key := ca.issueNode("n1", 100)
	ocert, okey := other.issueNode("o1", 100)
	safe := []string{"--listen=127.0.0.1:0", "--http-listen=", "--data-dir=" + t.TempDir()}
	node := slices.Concat(safe, []string{"--cluster-listen=127.0.0.1:0", "--gossip-listen=127.0.0.1:0",
		"--cluster-secret-file=" + secretFile(t, clusterSecret)})
	with := func(base []string, more ...string) []string { return slices.Concat(base, more) }
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"cert only", with(node, "--cluster-tls-cert="+cert), []string{"--cluster-tls-key and --cluster-tls-ca missing"}},
		{"no CA", with(node, "--cluster-tls-cert="+cert, "--cluster-tls-key="+key), []string{"--cluster-tls-ca missing"}},
		{"CA only", with(node, "--cluster-tls-ca="+ca.file), []string{"--cluster-tls-cert and --cluster-tls-key missing"}},
		{"unreadable cert", with(node, "--cluster-tls-cert=/nonexistent/node.pem", "--cluster-tls-key="+key, "--cluster-tls-ca="+ca.file),
			[]string{"--cluster-tls-cert", "/nonexistent/node.pem"}},
		{"unreadable CA", with(node, "--cluster-tls-cert="+cert, "--cluster-tls-key="+key, "--cluster-tls-ca=/nonexistent/ca.pem"),
			[]string{"--cluster-tls-ca", "/nonexistent/ca.pem"}},
		{"certificate of another CA", with(node, "--cluster-tls-cert="+ocert, "--cluster-tls-key="+okey, "--cluster-tls-ca="+ca.file),
			[]string{ocert, "does not verify against --cluster-tls-ca"}},
		{"without a cluster", with(safe, "--cluster-tls-cert="+cert, "--cluster-tls-key="+key, "--cluster-tls-ca="+ca.file),
			[]string{"--cluster-tls-cert needs --cluster-listen"}},
		{"no secret", with(safe, "--cluster-listen=127.0.0.1:0", "--gossip-listen=127.0.0.1:0",
			"--cluster-tls-cert="+cert, "--cluster-tls-key="+key, "--cluster-tls-ca="+ca.file),
			[]string{"needs a secret", "the secret keys gossip", "--cluster-insecure"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out := exitCode(t, c.args...)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not name %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "gannet started") {
				t.Errorf("broker started despite the bad flag:\n%s", out)
			}
		})
	}
}

// --cluster-insecure with --cluster-tls-*: the links are TLS, gossip is
// plain, and each node says so in its one warning at start.
func TestClusterTLSInsecureGossip(t *testing.T) {
	ca := newTestCA(t)
	nodes := newClusterNodes(t, 2)
	for i, n := range nodes {
		cert, key := ca.issueNode(n.name, int64(100+i))
		n.secret = []string{"--cluster-insecure"}
		n.extra = []string{"--cluster-tls-cert=" + cert, "--cluster-tls-key=" + key, "--cluster-tls-ca=" + ca.file}
	}
	startClusterNodes(t, nodes)
	pub := dialPaho(t, nodes[0].b.mqtt, "pub", true)
	sub := dialPaho(t, nodes[1].b.mqtt, "sub", true)
	sub.sub(t, "tls-links/#", 1)
	probe(t, pub, sub, "tls-links/probe")
	for _, n := range nodes {
		logs := n.b.stderr.String()
		if got := strings.Count(logs, "cluster running without a secret"); got != 1 ||
			!strings.Contains(logs, "links between nodes are TLS") || !strings.Contains(logs, "gossip travels in the clear") {
			t.Errorf("%s: want one warning that the links are TLS and gossip is plain:\n%s", n.name, logs)
		}
	}
}
