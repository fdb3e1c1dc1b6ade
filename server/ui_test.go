package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/apikey"
)

// The dashboard's files are served with their content types, a strict
// Content-Security-Policy and revalidation by ETag, without a key even
// when the API asks for one; other paths are not found.
func TestDashboardFiles(t *testing.T) {
	path, _, _ := keyFile(t)
	s := startBroker(t, func(c *Config) { c.APIKeyFile = path })
	for _, c := range []struct{ path, ctype, has string }{
		{"/", "text/html; charset=utf-8", `<script src="/ui/app.js" defer></script>`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "sessionStorage"},
		{"/ui/style.css", "text/css; charset=utf-8", ":root"},
		{"/ui/icon.svg", "image/svg+xml", "<svg"},
	} {
		code, body, hdr := httpDo(t, s, "GET", c.path, "", "")
		if code != http.StatusOK || hdr.Get("Content-Type") != c.ctype || !strings.Contains(body, c.has) {
			t.Errorf("GET %s: %d %s, want 200 %s with %q", c.path, code, hdr.Get("Content-Type"), c.ctype, c.has)
			continue
		}
		if csp := hdr.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: Content-Security-Policy %q", c.path, csp)
		}
		if hdr.Get("Cache-Control") != "no-cache" || hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: Cache-Control %q, X-Content-Type-Options %q", c.path, hdr.Get("Cache-Control"), hdr.Get("X-Content-Type-Options"))
		}
		req, _ := http.NewRequest("GET", "http://"+s.HTTPAddr()+c.path, nil)
		req.Header.Set("If-None-Match", hdr.Get("ETag"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag %s: %d, want 304", c.path, hdr.Get("ETag"), resp.StatusCode)
		}
	}
	for _, p := range []string{"/ui/", "/ui/nothing.js", "/index.html", "/nowhere", "/ui/../api/v1/stats"} {
		if code, _, _ := httpDo(t, s, "GET", p, "", ""); code != http.StatusNotFound && code != http.StatusUnauthorized {
			t.Errorf("GET %s: %d, want 404 (or 401 for an API path)", p, code)
		}
	}
	if code, _, _ := httpDo(t, s, "GET", "/api/v1/stats", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/stats without a key: %d, want 401", code)
	}
	if code, _, _ := httpDo(t, s, "POST", "/", "", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d, want 405", code)
	}
}

// dashboardTab starts headless Chromium for a test and returns a tab,
// and a check that fails the test for every exception the page threw and
// every error the browser logged, a violation of the
// Content-Security-Policy say.
func dashboardTab(t *testing.T, timeout time.Duration) (tab context.Context, checkConsole func()) {
	alloc, _ := startChromium(t, chromium(t), timeout, chromedp.WindowSize(1280, 900))
	var (
		mu       sync.Mutex
		problems []string
	)
	tab, cancelTab := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf), chromedp.WithListener(func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			if d.Exception != nil {
				problems = append(problems, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, d.Exception.Description))
			} else {
				problems = append(problems, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, d.Text))
			}
		case *log.EventEntryAdded:
			// A refused request (the sign-in's probe without a key is
			// answered 401) is logged as a network error; anything else
			// at error level, a policy violation say, is a fault.
			if ev.Entry.Level == log.EntryLevelError && ev.Entry.Source != log.EntrySourceNetwork {
				problems = append(problems, fmt.Sprintf("%s: %s", ev.Entry.Source, ev.Entry.Text))
			}
		}
	}))
	t.Cleanup(cancelTab)
	return tab, func() {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Errorf("browser: %s", p)
		}
	}
}

// The dashboard in a real browser, served by one node of a two-node
// cluster whose API asks for keys: the operator signs in, sees the
// charts fill, finds a client connected to the other node in the
// clients table, disconnects it (confirming in a dialog) and sees it
// gone, while the MQTT client sees its connection closed. The page
// throws no error and the browser reports no violation of the
// Content-Security-Policy. A screenshot of the overview goes to the
// test's directory, or to docs/dashboard.png with UPDATE_SCREENSHOT=1
// (which also waits for half a minute of traffic).
func TestDashboardBrowser(t *testing.T) {
	chromium(t)
	update := os.Getenv("UPDATE_SCREENSHOT") == "1"

	keys := filepath.Join(t.TempDir(), "api-keys")
	key, err := apikey.Add(keys, "ops", apikey.Write)
	if err != nil {
		t.Fatal(err)
	}
	nodes := startCluster(t, 2, func(_ int, c *Config) { c.APIKeyFile = keys })

	// The client to disconnect, on the node that does not serve the page.
	lost := make(chan error, 1)
	victim := dialV3(t, nodes[1], "dash-victim", true, func(o *paho3.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho3.Client, err error) { lost <- err })
	})
	// Traffic for the charts: publishers on both nodes, a subscriber on
	// the first.
	sub := dialV3(t, nodes[0], "dash-subscriber", true, nil)
	wait(t, sub.Subscribe("sensors/#", 1, func(paho3.Client, paho3.Message) {}))
	publishers := 2
	if update {
		publishers = 6
		archive := dialV3(t, nodes[1], "sensor-archive", true, nil)
		wait(t, archive.Subscribe("sensors/+/temp", 1, func(paho3.Client, paho3.Message) {}))
	}
	var pubs []paho3.Client
	for i := range publishers {
		pubs = append(pubs, dialV3(t, nodes[i%2], fmt.Sprintf("sensor-%02d", i+1), true, nil))
	}
	stop := make(chan struct{})
	var traffic sync.WaitGroup
	t.Cleanup(func() { close(stop); traffic.Wait() })
	for i, p := range pubs {
		traffic.Add(1)
		go func() {
			defer traffic.Done()
			tick := time.NewTicker(time.Duration(20+7*i) * time.Millisecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				p.Publish(fmt.Sprintf("sensors/%d/temp", i), byte(n%2), false, fmt.Sprint(20+n%7))
			}
		}()
	}

	timeout := 30 * time.Second
	if update {
		timeout = 90 * time.Second
	}
	tab, checkConsole := dashboardTab(t, timeout)
	defer checkConsole()

	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(tab, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	run("signing in",
		chromedp.Navigate("http://"+nodes[0].HTTPAddr()+"/"),
		chromedp.WaitVisible(chromedp.CSS("#apikey")),
		chromedp.SendKeys(chromedp.CSS("#apikey"), key),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#overview")),
		chromedp.WaitVisible(chromedp.CSS(`#nodes-body tr:nth-child(2)`)),
	)
	stored, err := chromedp.Run(tab, chromedp.Evaluate[string](`sessionStorage.getItem("gannet.apikey") + "|" + document.cookie + "|" + location.href`))
	if err != nil {
		t.Fatal(err)
	}
	if want := key + "||http://" + nodes[0].HTTPAddr() + "/"; stored != want {
		t.Errorf("the key is kept as %q (session storage|cookie|URL), want only in session storage", stored)
	}

	// Samples come every two seconds: two make a rate.
	samples := 2
	if update {
		samples = 16
	}
	if _, err := chromedp.Run(tab, chromedp.Poll[bool](
		fmt.Sprintf(`Number(document.getElementById("chart-msg").dataset.samples || 0) >= %d`, samples),
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(timeout))); err != nil {
		t.Fatalf("waiting for %d samples: %v", samples, err)
	}
	rate, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.querySelectorAll("#totals dd")[6].textContent`))
	if err != nil || rate == "0.0" || rate == "" {
		t.Errorf("messages in per second shown as %q (%v), want traffic", rate, err)
	}
	shot, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	out := filepath.Join(t.TempDir(), "dashboard.png")
	if update {
		out = filepath.Join("..", "docs", "dashboard.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the overview: %s (%d bytes)", out, len(shot))

	row := `#clients-body tr[data-client="dash-victim"]`
	run("disconnecting the client",
		chromedp.Click(chromedp.CSS(`nav a[href="#clients"]`)),
		chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.WaitVisible(chromedp.CSS(`#clients-body tr[data-client="dash-subscriber"]`)),
		chromedp.Click(chromedp.CSS(row+" button")),
		chromedp.WaitVisible(chromedp.CSS("#confirm-ok")),
		chromedp.Click(chromedp.CSS("#confirm-ok")),
		chromedp.WaitNotPresent(chromedp.CSS(row)),
		chromedp.WaitVisible(chromedp.CSS(`#clients-body tr[data-client="dash-subscriber"]`)),
	)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the dashboard no longer lists the client, but its MQTT connection is still open")
	}
	if victim.IsConnectionOpen() {
		t.Error("the disconnected client still reports an open connection")
	}
	status, err := chromedp.Run(tab, chromedp.Text(chromedp.CSS("#status")))
	if err != nil || !strings.Contains(status, "Disconnected dash-victim") {
		t.Errorf("status line %q (%v), want it to say the client was disconnected", status, err)
	}
}

// Without --api-key-file the dashboard needs no sign-in, since the API
// answers reads to anyone; it says that it cannot change anything, and a
// disconnect is refused with the API's reason while the client stays
// connected.
func TestDashboardBrowserWithoutKeys(t *testing.T) {
	chromium(t)
	s := startBroker(t, nil)
	c := dialV3(t, s, "dash-stays", true, nil)
	tab, checkConsole := dashboardTab(t, 20*time.Second)
	defer checkConsole()

	row := `#clients-body tr[data-client="dash-stays"]`
	if err := chromedp.Do(tab,
		chromedp.Navigate("http://"+s.HTTPAddr()+"/#clients"),
		chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.Click(chromedp.CSS(row+" button")),
		chromedp.WaitVisible(chromedp.CSS("#confirm-ok")),
		chromedp.Click(chromedp.CSS("#confirm-ok")),
		chromedp.WaitVisible(chromedp.CSS("#status.error")),
	); err != nil {
		t.Fatal(err)
	}
	status, err := chromedp.Run(tab, chromedp.Text(chromedp.CSS("#status")))
	if err != nil || !strings.Contains(status, "--api-key-file") {
		t.Errorf("status line %q (%v), want the API's refusal", status, err)
	}
	hidden, err := chromedp.Run(tab, chromedp.Evaluate[bool](`document.getElementById("login").hidden && document.getElementById("signout").hidden`))
	if err != nil || !hidden {
		t.Errorf("the sign-in form or the sign-out button is shown (%v)", err)
	}
	if !c.IsConnectionOpen() {
		t.Error("a refused disconnect closed the client's connection")
	}
	if err := chromedp.Do(tab, chromedp.WaitVisible(chromedp.CSS(row))); err != nil {
		t.Errorf("the client left the table: %v", err)
	}
}
