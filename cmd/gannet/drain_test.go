package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// renderHAProxy returns deploy/haproxy.cfg pointed at this test's front
// address and nodes, the servers the file names beyond them dropped. As
// for renderHAProxyTLS, the shipped file is what is tested: a line the
// test rewrites must be in it as often as expected.
func renderHAProxy(t *testing.T, nodes []*clusterNode, front string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			lines = append(lines, l)
		}
	}
	cfg := strings.Join(lines, "\n")
	type subst struct {
		old, new string
		n        int
	}
	substs := []subst{
		{"maxconn 500000", "maxconn 1000", 1}, // a test runs without a raised file limit
		{"bind :1883\n", "bind " + front + "\n", 1},
		{"inter 2s", "inter 200ms", 1},
	}
	for i := range 3 {
		old := fmt.Sprintf("server n%d 127.0.0.1:%d check port %d", i+1, 1884+i, 8081+i)
		repl := ""
		if i < len(nodes) {
			_, hport, _ := net.SplitHostPort(nodes[i].b.http)
			repl = fmt.Sprintf("server %s %s check port %s", nodes[i].name, nodes[i].b.mqtt, hport)
		}
		substs = append(substs, subst{old, repl, 1})
	}
	for _, s := range substs {
		if c := strings.Count(cfg, s.old); c != s.n {
			t.Fatalf("deploy/haproxy.cfg has %q %d times, want %d: update the test with the file", s.old, c, s.n)
		}
		cfg = strings.ReplaceAll(cfg, s.old, s.new)
	}
	return cfg
}

// startHAProxy runs haproxy on the configuration render makes for a front
// address and returns that address once it accepts connections. A port
// taken between choosing and binding is chosen again.
func startHAProxy(t *testing.T, bin string, render func(front string) string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		front := freeAddr(t)
		path := filepath.Join(t.TempDir(), "haproxy.cfg")
		if err := os.WriteFile(path, []byte(render(front)), 0o644); err != nil {
			t.Fatal(err)
		}
		hp := exec.Command(bin, "-f", path, "-db")
		out := &lockedBuffer{}
		hp.Stdout, hp.Stderr = out, out
		if err := hp.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = hp.Wait(); close(exited) }()
		t.Cleanup(func() { _ = hp.Process.Kill(); <-exited })
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("haproxy output:\n%s", out.String())
			}
		})
		deadline := time.Now().Add(20 * time.Second)
		for {
			select {
			case <-exited:
			default:
				if c, err := net.Dial("tcp", front); err == nil {
					_ = c.Close()
					return front
				}
				if time.Now().After(deadline) {
					t.Fatalf("HAProxy not listening on %s within 20s:\n%s", front, out.String())
				}
				time.Sleep(20 * time.Millisecond)
				continue
			}
			break
		}
		if attempt == 2 || !strings.Contains(out.String(), "cannot bind") {
			t.Fatalf("haproxy exited:\n%s", out.String())
		}
	}
}

// dialPahoProxied connects a clean paho client straight to a node that
// expects PROXY headers, sending one of its own: a client pinned to that
// node, past the load balancer.
func dialPahoProxied(t *testing.T, addr, id string) *pahoClient {
	t.Helper()
	pc := &pahoClient{msgs: make(chan paho3.Message, 1000)}
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(true).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetCustomOpenConnectionFn(func(*url.URL, paho3.ClientOptions) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return nil, err
			}
			if _, err := c.Write([]byte("PROXY TCP4 192.0.2.1 127.0.0.1 40000 1883\r\n")); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		}).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { pc.msgs <- m })
	pc.Client = paho3.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect to %s: %v", id, addr, tok.Error())
	}
	t.Cleanup(func() { pc.Disconnect(50) })
	return pc
}

// movingClient is a paho client with a persistent session that
// reconnects by itself, as devices do, counting what happens to it.
type movingClient struct {
	*pahoClient
	id       string
	connects atomic.Int32 // CONNACKs accepted
	lost     atomic.Int32 // connections lost
	attempts atomic.Int32 // reconnection attempts
}

// dialMoving connects a movingClient through the load balancer at front.
// Before its first reconnection attempt it has pub publish a QoS 1
// message to it ("gap-ID" on moving/ID) and waits for the PUBACK: a
// message published while the client is between nodes. Failures of that
// publish go to errs.
func dialMoving(t *testing.T, front, id string, pub *pahoClient, errs chan<- error) *movingClient {
	t.Helper()
	mc := &movingClient{id: id, pahoClient: &pahoClient{msgs: make(chan paho3.Message, 1000)}}
	o := paho3.NewClientOptions().AddBroker("tcp://" + front).SetClientID(id).SetCleanSession(false).SetProtocolVersion(4).
		SetAutoReconnect(true).SetConnectRetry(false).SetMaxReconnectInterval(time.Second).SetResumeSubs(false).
		SetOnConnectHandler(func(paho3.Client) { mc.connects.Add(1) }).
		SetConnectionLostHandler(func(paho3.Client, error) { mc.lost.Add(1) }).
		SetReconnectingHandler(func(paho3.Client, *paho3.ClientOptions) {
			if mc.attempts.Add(1) != 1 {
				return
			}
			tok := pub.Publish("moving/"+id, 1, false, "gap-"+id)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("publishing to %s while it moved: %v", id, tok.Error())
			}
		}).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { mc.msgs <- m })
	mc.Client = paho3.NewClient(o)
	if tok := mc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect through HAProxy: %v", id, tok.Error())
	}
	t.Cleanup(func() { mc.Disconnect(50) })
	return mc
}

// await takes messages from pc until one has payload want.
func await(t *testing.T, pc *pahoClient, want string) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case m := <-pc.msgs:
			if string(m.Payload()) == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %q within 15s", want)
		}
	}
}

// A rolling upgrade behind real HAProxy, configured by the shipped
// deploy/haproxy.cfg (health checks on /readyz), in front of two nodes of
// the real binary. SIGTERM drains n1: HAProxy sees /readyz fail during
// --drain-lb-grace, so the clients n1 then disconnects reconnect through
// it to n2 at the first attempt and find their persistent sessions there,
// with a QoS 1 message published while they moved; n1 exits 0 once the
// sessions have moved, and clients on n2 never notice. Restarted, n1
// rejoins and takes new clients again. No client is disconnected twice.
func TestRollingUpgradeBehindHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (.ci/run installs it)")
	}
	nodes := newClusterNodes(t, 2, "--proxy-protocol-from=127.0.0.1", "--drain-lb-grace=2s", "--drain-rate=10",
		"--log-level=debug")
	startClusterNodes(t, nodes)
	n1, n2 := nodes[0], nodes[1]
	front := startHAProxy(t, bin, func(front string) string { return renderHAProxy(t, nodes, front) })

	pub := dialPahoProxied(t, n2.b.mqtt, "publisher")
	errs := make(chan error, 100)
	// home is the node whose current process logged id connecting.
	home := func(id string) string {
		for _, n := range nodes {
			if strings.Contains(n.b.stderr.String(), "client="+id+" remote=127.0.0.1:") {
				return n.name
			}
		}
		return ""
	}
	var clients []*movingClient
	for i := range 8 {
		clients = append(clients, dialMoving(t, front, "dev-"+strconv.Itoa(i), pub, errs))
	}
	waitUntil(t, 10*time.Second, "every client's node logging it", func() bool {
		for _, c := range clients {
			if home(c.id) == "" {
				return false
			}
		}
		return true
	})
	var moving, staying []*movingClient
	for _, c := range clients {
		if home(c.id) == n1.name {
			moving = append(moving, c)
		} else {
			staying = append(staying, c)
		}
	}
	if len(moving) < 2 || len(staying) < 2 {
		t.Fatalf("HAProxy put %d clients on n1 and %d on n2; leastconn should spread them", len(moving), len(staying))
	}
	for _, c := range clients {
		c.sub(t, "moving/"+c.id, 1)
		probe(t, pub, c.pahoClient, "moving/"+c.id) // n1's routes are on n2
	}

	if err := n1.b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "n1's clients reconnected", func() bool {
		for _, c := range moving {
			if c.connects.Load() < 2 {
				return false
			}
		}
		return true
	})
	if code := n1.b.wait(t); code != 0 {
		t.Fatalf("n1 exited %d after SIGTERM; log:\n%s", code, n1.b.stderr.String())
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	n1log := n1.b.stderr.String()
	for _, want := range []string{"draining: /readyz fails", "msg=drained", "gannet stopped"} {
		if !strings.Contains(n1log, want) {
			t.Errorf("n1's log lacks %q", want)
		}
	}
	for _, bad := range []string{"did not finish within --drain-timeout", `reason="the node is draining"`} {
		if strings.Contains(n1log, bad) {
			t.Errorf("n1's log has %q: the drain did not go as planned", bad)
		}
	}
	for _, c := range moving {
		await(t, c.pahoClient, "gap-"+c.id)
		if !strings.Contains(n1log, `msg="session handed over" client=`+c.id+" to=n2") {
			t.Errorf("n1 did not hand %s's session to n2", c.id)
		}
		if !strings.Contains(n2.b.stderr.String(), "client="+c.id+" remote=127.0.0.1:") {
			t.Errorf("%s did not reconnect to n2", c.id)
		}
		pub.pub(t, "moving/"+c.id, 1, false, "after-"+c.id)
		await(t, c.pahoClient, "after-"+c.id)
	}

	// The upgraded n1 rejoins, HAProxy sees it ready, and leastconn sends
	// it the next client.
	restartInPlace(t, n1, nodes)
	waitMesh(t, nodes)
	waitUntil(t, 20*time.Second, "a new client on the restarted n1", func() bool {
		p := dialPaho(t, front, "newcomer", true)
		defer p.Disconnect(50)
		// The node logs a connection before it sends the CONNACK.
		return strings.Contains(n1.b.stderr.String(), "client=newcomer remote=127.0.0.1:")
	})

	for _, c := range moving {
		if lost, att, conn := c.lost.Load(), c.attempts.Load(), c.connects.Load(); lost != 1 || att != 1 || conn != 2 {
			t.Errorf("%s (moved): %d connections lost, %d reconnection attempts, %d connects; want 1, 1, 2", c.id, lost, att, conn)
		}
	}
	for _, c := range staying {
		if lost, conn := c.lost.Load(), c.connects.Load(); lost != 0 || conn != 1 {
			t.Errorf("%s (on n2): %d connections lost, %d connects; want 0 and 1", c.id, lost, conn)
		}
	}
}

// restartInPlace runs cn again on the MQTT and HTTP addresses it had, as
// an upgraded node comes back where the load balancer expects it.
func restartInPlace(t *testing.T, cn *clusterNode, all []*clusterNode) {
	t.Helper()
	var seeds []string
	for _, o := range all {
		if o != cn {
			seeds = append(seeds, "gossip="+o.gossip)
		}
	}
	old := cn.b
	b := &broker{mqtt: old.mqtt, http: old.http, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	args := []string{"--listen=" + b.mqtt, "--http-listen=" + b.http, "--node-name=" + cn.name,
		"--cluster-listen=" + cn.cluster, "--gossip-listen=" + cn.gossip, "--join=" + strings.Join(seeds, ","),
		"--cluster-failure-timeout=1s", "--data-dir=" + cn.data}
	args = append(append(args, cn.secret...), cn.extra...)
	b.cmd = exec.Command(gannetBin, args...)
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-b.exited:
		default:
			_ = b.cmd.Process.Kill()
			<-b.exited
		}
	})
	cn.b = b
	if !b.waitReady(t) {
		t.Fatalf("%s did not come back on %s (%v):\n%s", cn.name, b.mqtt, b.waitErr, b.stderr.String())
	}
}
