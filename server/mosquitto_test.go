package server

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Debian's mosquitto-clients against the broker: what mosquitto_pub sends
// at each QoS, mosquitto_sub receives, in 3.1.1 and 5.0, and a retained
// message reaches a later subscriber.
func TestMosquittoClients(t *testing.T) {
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian package mosquitto-clients)", tool)
		}
	}
	s := startBroker(t, nil)
	host, port, _ := net.SplitHostPort(s.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(name string, args ...string) *exec.Cmd {
		args = append([]string{"-h", host, "-p", port}, args...)
		return exec.CommandContext(ctx, name, args...)
	}
	for _, v := range []string{"mqttv311", "mqttv5"} {
		for qos := 0; qos <= 2; qos++ {
			topic := fmt.Sprintf("smoke/%s/%d", v, qos)
			// -C 3: exit after three messages; -W: give up after 10 s.
			subCmd := run("mosquitto_sub", "-V", v, "-q", fmt.Sprint(qos), "-t", topic, "-C", "3", "-W", "10", "-i", "sub-"+topic)
			out := &strings.Builder{}
			subCmd.Stdout = out
			stderr, err := subCmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := subCmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The subscription exists once the broker counts it.
			want := s.subs.Count() + 1
			waitFor(t, "mosquitto_sub to subscribe", func() bool { return s.subs.Count() >= want })
			for i := range 3 {
				pub := run("mosquitto_pub", "-V", v, "-q", fmt.Sprint(qos), "-t", topic, "-m", fmt.Sprintf("m%d", i))
				if b, err := pub.CombinedOutput(); err != nil {
					t.Fatalf("mosquitto_pub %s QoS %d: %v: %s", v, qos, err, b)
				}
			}
			if err := subCmd.Wait(); err != nil {
				buf := make([]byte, 4096)
				n, _ := stderr.Read(buf)
				t.Fatalf("mosquitto_sub %s QoS %d: %v: %s", v, qos, err, buf[:n])
			}
			if got := out.String(); got != "m0\nm1\nm2\n" {
				t.Fatalf("mosquitto_sub %s QoS %d got %q", v, qos, got)
			}
		}
	}
	// Retained, then a new subscriber.
	if b, err := run("mosquitto_pub", "-q", "1", "-r", "-t", "smoke/retained", "-m", "kept").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub -r: %v: %s", err, b)
	}
	b, err := run("mosquitto_sub", "-V", "mqttv5", "-t", "smoke/#", "-C", "1", "-W", "10", "-v").Output()
	if err != nil || string(b) != "smoke/retained kept\n" {
		t.Fatalf("retained: %q, %v", b, err)
	}
}
