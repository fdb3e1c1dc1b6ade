package main

import (
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// A flood of connections up to the open-file limit does not stop the
// listener (it once did: the acceptor ended on EMFILE): connections past
// the broker's budget are closed and counted, and once the flood ends new
// clients are served.
func TestConnectionFloodAtOpenFileLimit(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) is not installed")
	}
	const limit = 1400 // 1024 kept free: about 370 connections
	b := startGannetUnder(t, []string{prlimit, "--nofile=" + strconv.Itoa(limit) + ":" + strconv.Itoa(limit)},
		func(int) []string { return nil })

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range 2 * limit {
		c, err := net.DialTimeout("tcp", b.mqtt, 5*time.Second)
		if err != nil {
			t.Fatalf("dial after %d connections: %v\n%s", len(conns), err, b.stderr.String())
		}
		conns = append(conns, c)
	}
	// Every connection past the budget is closed by the broker.
	closed := 0
	for _, c := range conns[limit:] {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed != limit {
		t.Fatalf("%d of the last %d connections closed by the broker, want all", closed, limit)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	conns = nil

	// Still serving, and the refusals counted.
	mc := dialMQTT(t, b.mqtt, codec.V5, "after-the-flood")
	mc.send(&codec.Pingreq{})
	if p, err := mc.read(); err != nil || p.Type() != codec.PINGRESP {
		t.Fatalf("after the flood: %v, %v", p, err)
	}
	resp, err := http.Get("http://" + b.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	var refused int
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, `gannet_connections_refused_total{reason="open_file_limit"} `); ok {
			refused, _ = strconv.Atoi(v)
		}
	}
	if refused < limit {
		t.Errorf("gannet_connections_refused_total{reason=open_file_limit} = %d, want at least %d", refused, limit)
	}
	if !strings.Contains(b.stderr.String(), "refusing connection: open_file_limit") {
		t.Errorf("no log line for the refusals:\n%s", b.stderr.String())
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
