package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// chromiumPath is Debian's chromium package's launcher.
const chromiumPath = "/usr/bin/chromium"

// browserDir holds the test page and MQTT.js's package files; npm ci
// installs MQTT.js into its node_modules.
var browserDir = filepath.Join("testdata", "browser")

// browserMsg is a message as the page received it.
type browserMsg struct {
	Topic   string `json:"topic"`
	Payload string `json:"payload"` // hex
	QoS     int    `json:"qos"`
	Retain  bool   `json:"retain"`
}

func (m browserMsg) String() string {
	p, _ := hex.DecodeString(m.Payload)
	if len(p) > 40 {
		return fmt.Sprintf("%s qos %d retain %v: %d bytes", m.Topic, m.QoS, m.Retain, len(p))
	}
	return fmt.Sprintf("%s qos %d retain %v: %q", m.Topic, m.QoS, m.Retain, p)
}

// browserMissing skips the test when what it needs is not installed, and
// fails it under CI, whose .ci/run installs both.
func browserMissing(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (.ci/run installs it)", args...)
	}
	t.Skipf(format, args...)
}

// syncBuffer collects Chromium's output, written from chromedp's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A real browser speaks MQTT over WebSocket: headless Chromium runs MQTT.js
// (its browser build) against the broker's ws:// listener with MQTT 3.1
// (subprotocol mqttv3.1), 3.1.1 and 5 (subprotocol mqtt). The page
// subscribes, publishes and receives its own message; a Go client on plain
// TCP receives the page's message and publishes two of its own to the
// page, a short text and a 70 kB binary payload that takes a WebSocket
// frame with a 64-bit length.
func TestBrowserWebSocket(t *testing.T) {
	lib, err := os.ReadFile(filepath.Join(browserDir, "node_modules", "mqtt", "dist", "mqtt.min.js"))
	if err != nil {
		browserMissing(t, "MQTT.js is not installed (%v): run `npm ci --prefix server/testdata/browser` at the repository root", err)
	}
	page, err := os.ReadFile(filepath.Join(browserDir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	exe := chromium(t)

	s := startBroker(t, func(c *Config) { c.WSListen = "127.0.0.1:0" })
	wsURL := "ws://" + s.WSAddr() + "/mqtt"

	// The page and the script come from loopback; the policy lets the page
	// load nothing else and connect to the broker alone (MQTT.js runs its
	// timers in a worker made from a blob).
	csp := "default-src 'none'; script-src 'self' 'unsafe-inline'; worker-src blob:; connect-src " + wsURL
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", csp)
		w.Header().Set("Cache-Control", "no-store")
		switch r.URL.Path {
		case "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(page)
		case "/mqtt.min.js":
			w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
			_, _ = w.Write(lib)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(ts.Close)

	// One browser for the test, a tab for each protocol version.
	alloc, chromeOut := startChromium(t, exe, 30*time.Second)
	browser, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf))
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser); err != nil { // starts Chromium
		t.Fatalf("starting Chromium: %v\n%s", err, chromeOut.String())
	}

	bin := make([]byte, 70_000)
	for i := range bin {
		bin[i] = byte(i * 7)
	}
	for _, v := range []int{3, 4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			prefix := fmt.Sprintf("browser/v%d/", v)
			pagePayload := fmt.Sprintf("hello from MQTT.js, protocol %d", v)

			// The Go client on plain TCP.
			fromPage := make(chan string, 10)
			tcp := dialV3(t, s, fmt.Sprintf("tcp-v%d", v), true, nil)
			wait(t, tcp.Subscribe(prefix+"page", 1, func(_ paho3.Client, m paho3.Message) {
				fromPage <- string(m.Payload())
			}))

			tab, cancelTab := chromedp.NewContext(browser)
			defer cancelTab()
			q := url.Values{"ws": {wsURL}, "v": {fmt.Sprint(v)}, "prefix": {prefix}, "want": {"3"}}
			if err := chromedp.Do(tab, chromedp.Navigate(ts.URL+"/?"+q.Encode())); err != nil {
				t.Fatalf("loading the page: %v", err)
			}

			// The page subscribed, published and received its message.
			if title := pageTitle(t, tab, `t === "echoed"`); title != "echoed" {
				t.Fatalf("page: %s", title)
			}
			select {
			case got := <-fromPage:
				if got != pagePayload {
					t.Fatalf("the TCP client got %q, want %q", got, pagePayload)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the TCP client did not get the page's message")
			}

			// Messages from TCP to the page, in order: one publisher.
			wait(t, tcp.Publish(prefix+"tcp", 0, false, "hello from tcp"))
			wait(t, tcp.Publish(prefix+"tcp/bin", 1, false, bin))
			if title := pageTitle(t, tab, `t.startsWith("ok:")`); title != "ok:3" {
				t.Fatalf("page: %s", title)
			}
			got, err := chromedp.Run(tab, chromedp.Evaluate[[]browserMsg](`window.received`))
			if err != nil {
				t.Fatalf("reading the page's messages: %v", err)
			}
			want := []browserMsg{
				{Topic: prefix + "page", Payload: hex.EncodeToString([]byte(pagePayload)), QoS: 1},
				{Topic: prefix + "tcp", Payload: hex.EncodeToString([]byte("hello from tcp")), QoS: 0},
				{Topic: prefix + "tcp/bin", Payload: hex.EncodeToString(bin), QoS: 1},
			}
			if len(got) != len(want) {
				t.Fatalf("the page received %v, want %v", got, want)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("message %d: the page received %v, want %v", i, got[i], want[i])
				}
			}
			select {
			case extra := <-fromPage:
				t.Errorf("the TCP client got a second message: %q", extra)
			default:
			}
		})
	}
}

// pageTitle waits until the page's title t satisfies cond or reports an
// error, and returns it.
func pageTitle(t *testing.T, tab context.Context, cond string) string {
	t.Helper()
	title, err := chromedp.Run(tab, chromedp.Poll[string](
		`(t => (`+cond+` || t.startsWith("error:")) && t)(document.title)`,
		chromedp.WithPollingInterval(10*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
	if err != nil {
		cur, _ := chromedp.Run(tab, chromedp.Title())
		t.Fatalf("waiting for the page (%s): %v; title %q", cond, err, cur)
	}
	return strings.TrimSpace(title)
}

// chromium finds Debian's Chromium, skipping the test when it is missing
// outside CI.
func chromium(t *testing.T) string {
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		browserMissing(t, "Chromium is not installed (%v): run `apt-get install -y chromium`", err)
	}
	return chromiumPath
}

// startChromium starts headless Chromium (exe) for a test, set up for a
// container and to fetch or update nothing, and returns the allocator to
// open tabs from and Chromium's output, which is logged when the test
// fails.
func startChromium(t *testing.T, exe string, timeout time.Duration, opts ...chromedp.ExecAllocatorOption) (context.Context, *syncBuffer) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	out := new(syncBuffer)
	opts = append([]chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox, // root in a container
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.CombinedOutput(out),
	}, opts...)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Chromium's output:\n%s", out.String())
		}
	})
	return alloc, out
}
