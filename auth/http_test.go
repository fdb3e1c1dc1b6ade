package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const httpTestPassword = "s3cret-Passw0rd"

func httpTestRequest() *Request {
	return &Request{
		ClientID:    "dev-1",
		Username:    "alice",
		Password:    []byte(httpTestPassword),
		HasUsername: true,
		HasPassword: true,
		Remote:      "192.0.2.7:53211",
		Protocol:    5,
		Listener:    "tls",
		CertCN:      "alice-cn",
	}
}

// httpTestSource starts a server running h and returns a source asking
// it. Both are closed when the test ends.
func httpTestSource(t *testing.T, h http.HandlerFunc) (*HTTPSource, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s, err := NewHTTPSource(HTTPConfig{URL: srv.URL + "/auth?key=query-secret"})
	if err != nil {
		t.Fatalf("NewHTTPSource: %v", err)
	}
	t.Cleanup(s.Close)
	return s, srv
}

// httpAnswerWith returns a handler answering status and body.
func httpAnswerWith(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func TestHTTPSourceAnswers(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   Answer
	}{
		{"allow", 200, `{"result":"allow"}`, Answer{Verdict: Allow}},
		{"deny", 200, `{"result":"deny","is_superuser":true}`, Answer{Verdict: Deny}},
		{"ignore", 200, `{"result":"ignore"}`, Answer{Verdict: Ignore}},
		{"no content", 204, ``, Answer{Verdict: Ignore}},
		{"superuser", 200, `{"result":"allow","is_superuser":true}`, Answer{Verdict: Allow, Superuser: true}},
		{"extra members", 200, `{"result":"allow","client_attrs":{"a":"b"},"expire_at":1}`, Answer{Verdict: Allow}},
		{"null acl", 200, `{"result":"allow","acl":null}`, Answer{Verdict: Allow}},
		{"empty acl", 200, `{"result":"allow","acl":[]}`, Answer{Verdict: Allow, Rules: []Rule{}, HasRules: true}},
		{
			"acl list", 200,
			`{"result":"allow","acl":[{"permission":"allow","action":"publish","topic":"t/${clientid}"},{"permission":"deny","action":"all","topic":"#"}]}`,
			Answer{Verdict: Allow, HasRules: true, Rules: []Rule{
				{Filter: "t/dev-1", Access: Write},
				{Filter: "#", Access: ReadWrite, Deny: true},
			}},
		},
		{
			"acl map", 200,
			`{"result":"allow","is_superuser":false,"acl":{"sub":["s/+"],"pub":["p/%u"]}}`,
			Answer{Verdict: Allow, HasRules: true, Rules: []Rule{
				{Filter: "s/+", Access: Read},
				{Filter: "p/alice", Access: Write},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := httpTestSource(t, httpAnswerWith(tt.status, tt.body))
			got, err := s.Authenticate(context.Background(), httpTestRequest())
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHTTPSourceRequestBody(t *testing.T) {
	type seen struct {
		method, contentType, apiKey, path string
		body                              map[string]any
	}
	got := make(chan seen, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sn seen
		sn.method, sn.contentType, sn.apiKey, sn.path = r.Method, r.Header.Get("Content-Type"), r.Header.Get("X-Api-Key"), r.URL.Path
		if err := json.NewDecoder(r.Body).Decode(&sn.body); err != nil {
			t.Errorf("request body: %v", err)
		}
		got <- sn
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	s, err := NewHTTPSource(HTTPConfig{URL: srv.URL + "/mqtt/auth", Headers: map[string]string{"X-Api-Key": "k1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)

	if _, err := s.Authenticate(context.Background(), httpTestRequest()); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	sn := <-got
	if sn.method != http.MethodPost || sn.contentType != "application/json" || sn.apiKey != "k1" || sn.path != "/mqtt/auth" {
		t.Fatalf("request %s %s, Content-Type %q, X-Api-Key %q", sn.method, sn.path, sn.contentType, sn.apiKey)
	}
	want := map[string]any{
		"clientid": "dev-1", "username": "alice", "password": httpTestPassword,
		"peerhost": "192.0.2.7", "peerport": float64(53211), "protocol": float64(5),
		"listener": "tls", "cert_common_name": "alice-cn",
	}
	if !reflect.DeepEqual(sn.body, want) {
		t.Fatalf("body %v, want %v", sn.body, want)
	}

	// A password that is not UTF-8 travels as base64, and says so.
	r := httpTestRequest()
	r.Password = []byte{0xff, 0x00, 'a', 0xc3}
	r.Remote = "[2001:db8::1]:1883"
	if _, err := s.Authenticate(context.Background(), r); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	sn = <-got
	if sn.body["password"] != base64.StdEncoding.EncodeToString(r.Password) || sn.body["password_encoding"] != "base64" {
		t.Fatalf("binary password sent as %v (encoding %v)", sn.body["password"], sn.body["password_encoding"])
	}
	if sn.body["peerhost"] != "2001:db8::1" || sn.body["peerport"] != float64(1883) {
		t.Fatalf("IPv6 peer sent as %v port %v", sn.body["peerhost"], sn.body["peerport"])
	}
}

// httpCheckUnavailable fails unless err is an unavailable error that
// holds want and neither the password nor the URL's query.
func httpCheckUnavailable(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("error %q does not wrap ErrUnavailable", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, want) {
		t.Fatalf("error %q does not contain %q", msg, want)
	}
	for _, secret := range []string{httpTestPassword, "s3cret", "query-secret"} {
		if strings.Contains(msg, secret) {
			t.Fatalf("error %q shows %q", msg, secret)
		}
	}
}

func TestHTTPSourceBadAnswers(t *testing.T) {
	tests := []struct {
		name    string
		h       http.HandlerFunc
		wantErr string
	}{
		{"500", httpAnswerWith(500, "database is down\n"), `answered 500: "database is down"`},
		{"500 echoing the password", httpAnswerWith(500, "bad password "+httpTestPassword), "answered 500 (body withheld"},
		{"500 echoing part of the password", httpAnswerWith(500, strings.Repeat("x", 60)+"s3cret"), "answered 500 (body withheld"},
		{"403", httpAnswerWith(403, ""), "answered 403"},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusTemporaryRedirect)
		}, "answered 307"},
		{"oversize", httpAnswerWith(200, `{"result":"allow","pad":"`+strings.Repeat("x", httpMaxAnswer)+`"}`), "longer than 65536 bytes"},
		{"not json", httpAnswerWith(200, `allow`), "want a JSON object"},
		{"bad json", httpAnswerWith(200, `{"result":"allow"`), "bad JSON"},
		{"empty body", httpAnswerWith(200, ``), "want a JSON object"},
		{"unknown result", httpAnswerWith(200, `{"result":"maybe"}`), `result "maybe" is not`},
		{"no result", httpAnswerWith(200, `{"is_superuser":true}`), "no result"},
		{"result echoing the password", httpAnswerWith(200, `{"result":"`+httpTestPassword+`"}`), "message withheld"},
		{"superuser not bool", httpAnswerWith(200, `{"result":"allow","is_superuser":"true"}`), "is_superuser: want a JSON boolean"},
		{"bad rule", httpAnswerWith(200, `{"result":"allow","acl":[{"permission":"allow","action":"all","topic":"ok/#"},{"permission":"allow","action":"all","topic":"a/#/b"}]}`), "acl[1].topic: bad topic filter"},
		{"acl not rules", httpAnswerWith(200, `{"result":"allow","acl":"all"}`), "acl: want a list of rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := httpTestSource(t, tt.h)
			a, err := s.Authenticate(context.Background(), httpTestRequest())
			httpCheckUnavailable(t, err, tt.wantErr)
			if a.Verdict != Ignore || a.HasRules || a.Superuser {
				t.Fatalf("answer %+v returned with an error", a)
			}
		})
	}
}

// A server that does not answer: Authenticate returns when ctx ends.
func TestHTTPSourceHangingServer(t *testing.T) {
	release := make(chan struct{})
	s, _ := httpTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Authenticate(ctx, httpTestRequest())
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Authenticate took %v past a 100ms deadline", d)
	}
	httpCheckUnavailable(t, err, "cannot ask")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %q does not wrap context.DeadlineExceeded", err)
	}
}

// The configured Timeout bounds a request even when ctx has no deadline.
func TestHTTPSourceTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	s, err := NewHTTPSource(HTTPConfig{URL: srv.URL, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.Authenticate(context.Background(), httpTestRequest())
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Authenticate took %v past a 50ms timeout", d)
	}
	httpCheckUnavailable(t, err, "cannot ask")
}

// A server that drops the connection halfway through its answer.
func TestHTTPSourceConnectionClosedMidAnswer(t *testing.T) {
	s, _ := httpTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"result\":\"al")
		_ = buf.Flush()
	})
	_, err := s.Authenticate(context.Background(), httpTestRequest())
	httpCheckUnavailable(t, err, "cannot read the answer")
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error %q does not wrap io.ErrUnexpectedEOF", err)
	}
}

func TestHTTPSourceUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s, err := NewHTTPSource(HTTPConfig{URL: "http://user:" + httpTestPassword + "@" + addr + "/auth"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Authenticate(context.Background(), httpTestRequest())
	httpCheckUnavailable(t, err, "cannot ask http://"+addr+"/auth")
}

// Requests reuse one connection, also after error answers whose bodies
// were not read.
func TestHTTPSourceKeepAlive(t *testing.T) {
	var conns atomic.Int32
	var n atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 {
			httpAnswerWith(500, strings.Repeat("e", 4000))(w, r)
			return
		}
		httpAnswerWith(200, `{"result":"allow"}`)(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s, err := NewHTTPSource(HTTPConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	for i := 0; i < 20; i++ {
		a, err := s.Authenticate(context.Background(), httpTestRequest())
		if i%2 == 0 && (err != nil || a.Verdict != Allow) {
			t.Fatalf("request %d: %+v, %v", i, a, err)
		}
		if i%2 == 1 && err == nil {
			t.Fatalf("request %d: no error for a 500", i)
		}
	}
	if c := conns.Load(); c != 1 {
		t.Fatalf("20 sequential requests opened %d connections, want 1", c)
	}
}

func TestHTTPSourceConcurrent(t *testing.T) {
	s, _ := httpTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ClientID string `json:"clientid"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"result": "allow",
			"acl":    map[string][]string{"pub": {"c/" + body.ClientID}},
		})
	})
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := httpTestRequest()
			r.ClientID = "c" + strings.Repeat("x", i)
			a, err := s.Authenticate(context.Background(), r)
			if err != nil {
				t.Errorf("Authenticate: %v", err)
				return
			}
			if want := []Rule{{Filter: "c/" + r.ClientID, Access: Write}}; a.Verdict != Allow || !reflect.DeepEqual(a.Rules, want) {
				t.Errorf("client %s: got %+v", r.ClientID, a)
			}
		}()
	}
	wg.Wait()
}

func TestNewHTTPSourceErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     HTTPConfig
		wantErr string
	}{
		{"no url", HTTPConfig{}, "scheme must be http or https"},
		{"ftp", HTTPConfig{URL: "ftp://h/x"}, "scheme must be http or https"},
		{"no host", HTTPConfig{URL: "http:///x"}, "has no host"},
		{"bad url", HTTPConfig{URL: "http://u:" + httpTestPassword + "@h:port/"}, "cannot parse the URL"},
		{"negative timeout", HTTPConfig{URL: "http://h/", Timeout: -time.Second}, "negative timeout"},
		{"bad header name", HTTPConfig{URL: "http://h/", Headers: map[string]string{"X Key": "v"}}, `header name "X Key"`},
		{"header injection", HTTPConfig{URL: "http://h/", Headers: map[string]string{"X-Key": "v\r\nEvil: 1"}}, "header X-Key: value holds a line break"},
		{"content type", HTTPConfig{URL: "http://h/", Headers: map[string]string{"content-type": "text/plain"}}, "Content-Type cannot be set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHTTPSource(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), httpTestPassword) {
				t.Fatalf("error %q shows the password", err)
			}
		})
	}
}

func TestHTTPExcerpt(t *testing.T) {
	pw := []byte(`pa"ss\word`)
	tests := []struct {
		body, want string
	}{
		{"", ""},
		{"  \n", ""},
		{"oops\x00\x01\nnext", `: "oops...next"`},
		{strings.Repeat("a", 100), `: "` + strings.Repeat("a", httpExcerptLen) + `..."`},
		{`{"password":"pa\"ss\\word"}`, " (body withheld: it holds the password)"},
		{"cGEic3Ncd29yZA== was wrong", " (body withheld: it holds the password)"},
		{strings.Repeat("z", httpExcerptLen-4) + `pa"s`, " (body withheld: it holds the password)"},
	}
	for _, tt := range tests {
		if got := httpExcerpt([]byte(tt.body), pw); got != tt.want {
			t.Errorf("httpExcerpt(%q) = %q, want %q", tt.body, got, tt.want)
		}
	}
}
