package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// HTTPConfig configures an HTTPSource.
type HTTPConfig struct {
	// URL is where the source POSTs each request: http or https.
	URL string
	// Timeout bounds one request, on top of the caller's deadline. Zero
	// means 5 s.
	Timeout time.Duration
	// Client sends the requests. Nil means a client of the source's own
	// that keeps up to 64 idle connections to the server and does not
	// follow redirects (a 3xx answer is an error).
	Client *http.Client
	// Headers are added to every request (an API key, say). They cannot
	// replace Content-Type.
	Headers map[string]string
}

const (
	httpDefaultTimeout = 5 * time.Second
	// httpMaxAnswer bounds an answer's body.
	httpMaxAnswer = 64 << 10
	// httpExcerptLen bounds the part of an unexpected body quoted in an
	// error.
	httpExcerptLen = 64
)

// HTTPSource asks an HTTP server about each client, the way EMQX's HTTP
// authenticator does.
//
// The request is a POST with a JSON body:
//
//	{"clientid": "c1", "username": "alice", "password": "secret",
//	 "peerhost": "192.0.2.7", "peerport": 53211, "protocol": 5,
//	 "listener": "tls", "cert_common_name": "alice"}
//
// protocol is the MQTT protocol level (3, 4 or 5). password is the
// password as sent when it is valid UTF-8; otherwise it is its standard
// base64 encoding and the body also holds "password_encoding": "base64".
// A client without a username or password sends "".
//
// The server answers 200 with a JSON body
//
//	{"result": "allow", "is_superuser": false, "acl": [...]}
//
// where result is "allow", "deny" or "ignore" (the client is not the
// server's: the next source decides), is_superuser is optional, and acl,
// optional, is the client's ACL in either form that parseJSONRules
// accepts (see rulesjson.go); a present, non-null acl is the client's
// whole ACL (Answer.HasRules). Or it answers 204 No Content, which is
// "ignore".
//
// Anything else (another status, a body over 64 KiB, bad JSON, an unknown
// result, a bad rule, a transport error, the deadline) is an error that
// wraps ErrUnavailable. Errors name the URL without its query or password
// and never hold the client's password.
//
// Safe for concurrent use by any number of goroutines; Authenticate blocks
// until the server answers or ctx ends, so it must not run on an event
// loop.
type HTTPSource struct {
	url     string
	show    string // url for messages: no user info, no query
	timeout time.Duration
	client  *http.Client
	own     bool // client was built here: Close may close its connections
	headers http.Header
}

var _ Source = (*HTTPSource)(nil)

// NewHTTPSource checks cfg and returns a source that asks cfg.URL. It
// sends nothing until the first Authenticate.
func NewHTTPSource(cfg HTTPConfig) (*HTTPSource, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		// url.Error repeats the URL, password included: keep the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("auth: http: cannot parse the URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("auth: http: URL %s: scheme must be http or https", httpShowURL(u))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("auth: http: URL %s has no host", httpShowURL(u))
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("auth: http: negative timeout %v", cfg.Timeout)
	}
	s := &HTTPSource{
		url:     u.String(),
		show:    httpShowURL(u),
		timeout: cfg.Timeout,
		client:  cfg.Client,
		headers: make(http.Header, len(cfg.Headers)),
	}
	if s.timeout == 0 {
		s.timeout = httpDefaultTimeout
	}
	for name, value := range cfg.Headers {
		if !httpValidHeaderName(name) {
			return nil, fmt.Errorf("auth: http: header name %s is not a valid token", rulesQuote(name))
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			return nil, fmt.Errorf("auth: http: header %s: value holds a line break or NUL", name)
		}
		if http.CanonicalHeaderKey(name) == "Content-Type" {
			return nil, errors.New("auth: http: header Content-Type cannot be set: the body is always application/json")
		}
		s.headers.Set(name, value)
	}
	if s.client == nil {
		s.own = true
		s.client = &http.Client{
			Transport: &http.Transport{
				Proxy: http.ProxyFromEnvironment,
				DialContext: (&net.Dialer{
					Timeout:   5 * time.Second,
					KeepAlive: 30 * time.Second,
				}).DialContext,
				ForceAttemptHTTP2:     true,
				MaxIdleConns:          256,
				MaxIdleConnsPerHost:   64,
				IdleConnTimeout:       90 * time.Second,
				TLSHandshakeTimeout:   5 * time.Second,
				ExpectContinueTimeout: time.Second,
			},
			// The password must not follow a redirect anywhere.
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	return s, nil
}

// Name returns "http".
func (s *HTTPSource) Name() string { return "http" }

// Close closes the idle connections of the source's own client (not of a
// Client passed in HTTPConfig). The source stays usable. Safe to call from
// any goroutine, more than once.
func (s *HTTPSource) Close() {
	if s.own {
		s.client.CloseIdleConnections()
	}
}

// httpRequestBody is the JSON body of a request. Field names are the
// server's interface: do not rename.
type httpRequestBody struct {
	ClientID         string `json:"clientid"`
	Username         string `json:"username"`
	Password         string `json:"password"`
	PasswordEncoding string `json:"password_encoding,omitempty"`
	PeerHost         string `json:"peerhost"`
	PeerPort         int    `json:"peerport"`
	Protocol         int    `json:"protocol"`
	Listener         string `json:"listener"`
	CertCommonName   string `json:"cert_common_name"`
}

// httpAnswerBody is the JSON body of a 200 answer.
type httpAnswerBody struct {
	Result      string          `json:"result"`
	IsSuperuser bool            `json:"is_superuser"`
	ACL         json.RawMessage `json:"acl"`
}

// Authenticate asks the server about r. See HTTPSource for the exchange.
// Safe for concurrent use; blocks until the answer or the end of ctx (or
// the configured Timeout).
func (s *HTTPSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	body, err := json.Marshal(httpMakeRequestBody(r))
	if err != nil {
		return Answer{}, fmt.Errorf("auth: http: cannot encode the request: %w (%w)", err, ErrUnavailable)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return Answer{}, fmt.Errorf("auth: http: cannot make a request to %s (%w)", s.show, ErrUnavailable)
	}
	req.Header = s.headers.Clone()
	req.Header.Set("Content-Type", "application/json")
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}

	resp, err := s.client.Do(req)
	if err != nil {
		// url.Error repeats the method and URL (and would show a query);
		// keep the cause alone.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Answer{}, fmt.Errorf("auth: http: cannot ask %s: %w (%w)", s.show, err, ErrUnavailable)
	}
	defer func() {
		// Read what is left (within reason) so that the connection can
		// serve the next request.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, httpMaxAnswer))
		_ = resp.Body.Close()
	}()

	switch resp.StatusCode {
	case http.StatusNoContent:
		return Answer{Verdict: Ignore}, nil
	case http.StatusOK:
	default:
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return Answer{}, fmt.Errorf("auth: http: %s answered %d%s (%w)",
			s.show, resp.StatusCode, httpExcerpt(head, r.Password), ErrUnavailable)
	}

	data, err := io.ReadAll(io.LimitReader(resp.Body, httpMaxAnswer+1))
	if err != nil {
		return Answer{}, fmt.Errorf("auth: http: cannot read the answer of %s: %w (%w)", s.show, err, ErrUnavailable)
	}
	if len(data) > httpMaxAnswer {
		return Answer{}, fmt.Errorf("auth: http: the answer of %s is longer than %d bytes (%w)", s.show, httpMaxAnswer, ErrUnavailable)
	}
	a, err := httpParseAnswer(data, r)
	if err != nil {
		return Answer{}, fmt.Errorf("auth: http: bad answer from %s: %s (%w)", s.show, httpScrub(err.Error(), r.Password), ErrUnavailable)
	}
	return a, nil
}

// httpMakeRequestBody fills the request body from r.
func httpMakeRequestBody(r *Request) httpRequestBody {
	b := httpRequestBody{
		ClientID:       r.ClientID,
		Username:       r.Username,
		Protocol:       int(r.Protocol),
		Listener:       r.Listener,
		CertCommonName: r.CertCN,
	}
	if utf8.Valid(r.Password) {
		b.Password = string(r.Password)
	} else {
		b.Password = base64.StdEncoding.EncodeToString(r.Password)
		b.PasswordEncoding = "base64"
	}
	if host, port, err := net.SplitHostPort(r.Remote); err == nil {
		b.PeerHost = host
		b.PeerPort, _ = strconv.Atoi(port)
	} else {
		b.PeerHost = r.Remote
	}
	return b
}

// httpParseAnswer reads the body of a 200 answer.
func httpParseAnswer(data []byte, r *Request) (Answer, error) {
	if rulesFirstByte(data) != '{' {
		return Answer{}, errors.New("want a JSON object")
	}
	var body httpAnswerBody
	if err := json.Unmarshal(data, &body); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return Answer{}, fmt.Errorf("bad JSON at byte %d: %s", se.Offset, se.Error())
		case errors.As(err, &te) && te.Field != "":
			return Answer{}, fmt.Errorf("%s: want a JSON %s", te.Field, jsonKindName(te.Type.Kind().String()))
		default:
			return Answer{}, errors.New("bad JSON")
		}
	}
	switch body.Result {
	case "allow":
	case "deny":
		return Answer{Verdict: Deny}, nil
	case "ignore":
		return Answer{Verdict: Ignore}, nil
	case "":
		return Answer{}, errors.New("no result")
	default:
		return Answer{}, fmt.Errorf("result %s is not \"allow\", \"deny\" or \"ignore\"", rulesQuote(body.Result))
	}
	a := Answer{Verdict: Allow, Superuser: body.IsSuperuser}
	if len(body.ACL) > 0 && !bytes.Equal(bytes.TrimSpace(body.ACL), []byte("null")) {
		rules, err := parseJSONRules(body.ACL, "acl", r, r.Username)
		if err != nil {
			return Answer{}, err
		}
		a.Rules, a.HasRules = rules, true
	}
	return a, nil
}

// httpExcerpt returns ": " and a short, printable excerpt of body for an
// error, or "" for an empty body. An excerpt that could show any of the
// password is withheld.
func httpExcerpt(body, password []byte) string {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return ""
	}
	ex := body
	if len(ex) > httpExcerptLen {
		ex = ex[:httpExcerptLen]
	}
	if httpMentions(body, password) || httpMentions(ex, password) {
		return " (body withheld: it holds the password)"
	}
	var b strings.Builder
	for _, c := range string(ex) {
		if c < 0x20 || c == 0x7f || c == utf8.RuneError {
			b.WriteByte('.')
			continue
		}
		b.WriteRune(c)
	}
	s := b.String()
	if len(ex) < len(body) {
		s += "..."
	}
	return ": " + strconv.Quote(s)
}

// httpMentions reports whether text holds the password in any form a
// server might echo (raw, JSON-escaped, base64), or a piece of it long
// enough to matter where text was cut.
func httpMentions(text, password []byte) bool {
	if len(password) == 0 {
		return false
	}
	escaped, _ := json.Marshal(string(password))
	forms := [][]byte{
		password,
		escaped[1 : len(escaped)-1],
		[]byte(base64.StdEncoding.EncodeToString(password)),
	}
	for _, f := range forms {
		if bytes.Contains(text, f) {
			return true
		}
		// A prefix of the password at the end of the cut text.
		for n := min(len(f)-1, len(text)); n >= 4; n-- {
			if bytes.HasSuffix(text, f[:n]) {
				return true
			}
		}
	}
	return false
}

// httpScrub replaces the password in msg, should a server have managed to
// put it there.
func httpScrub(msg string, password []byte) string {
	if httpMentions([]byte(msg), password) {
		return "(message withheld: it holds the password)"
	}
	return msg
}

// httpShowURL returns u without user info and query, for messages.
func httpShowURL(u *url.URL) string {
	v := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return v.String()
}

// httpValidHeaderName reports whether name is an RFC 9110 token.
func httpValidHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
