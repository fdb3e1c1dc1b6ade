package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWTConfig configures a JWTSource.
type JWTConfig struct {
	// KeyFile holds the verification keys, in one of three forms told
	// apart by content:
	//
	//   - PEM: one or more blocks, each a public key ("PUBLIC KEY",
	//     "RSA PUBLIC KEY") or a certificate ("CERTIFICATE") whose key is
	//     used. Private keys are refused: the broker needs only the public
	//     half.
	//   - JWKS: a JSON object {"keys": [...]} (or a single JWK object) with
	//     keys of kty "RSA", "EC" (P-256, P-384, P-521), "OKP" (Ed25519)
	//     or "oct" (an HMAC secret). Keys whose "use" is not "sig", whose
	//     "key_ops" lack "verify", or whose kty is unknown are skipped; a
	//     key's "alg", when given, is the only algorithm it verifies.
	//   - Anything else: the file's bytes, without trailing CR and LF, are
	//     an HMAC secret. A secret cannot start with "{" or "[", hold
	//     "-----BEGIN", or be a DER key or certificate: such files are read
	//     as keys or refused, so that public key material never serves as
	//     a secret that anyone holding it could sign with.
	//
	// RSA keys must have at least 2048 bits.
	KeyFile string
	// From says where the client puts the token: "password" (the
	// default) or "username".
	From string
	// Issuer and Audience, when set, must match the token's iss and
	// (one of) its aud.
	Issuer   string
	Audience string
	// Leeway is the clock skew allowed when checking exp and nbf.
	Leeway time.Duration
	// ACLClaim names the claim that holds the client's ACL, in either
	// form that parseJSONRules accepts (see rulesjson.go). Default "acl".
	ACLClaim string
	// UsernameClaim names the claim that holds the client's username.
	// Default "sub".
	UsernameClaim string
	// PollInterval is how often the key file is checked for a change
	// (modification time, size, or a different file at the path). Zero
	// means 2 s; negative means never (Reload alone reads the file).
	PollInterval time.Duration
	// Logger receives a line for each automatic reload and each failed
	// one. Nil means slog.Default().
	Logger *slog.Logger
}

const (
	jwtDefaultPoll = 2 * time.Second
	// jwtMaxKeyFile bounds the key file.
	jwtMaxKeyFile = 1 << 20
	// jwtMaxKeys bounds the keys of one file: a token without a kid is
	// tried against each key that fits its algorithm.
	jwtMaxKeys = 100
	// jwtMinRSABits and jwtMaxRSABits bound RSA modulus sizes: shorter
	// keys are breakable, longer ones make every check slow.
	jwtMinRSABits = 2048
	jwtMaxRSABits = 8192
)

// JWTSource authenticates clients that present a JSON Web Token, signed by
// one of the keys in a key file, in their password (or username).
//
// A value that does not look like a JWT (three dot-separated base64url
// parts, the first a JSON object) is Ignore: the client is not this
// source's. One that does is this source's to accept or refuse. A token
// with a bad signature, an algorithm that does not fit the key (never
// "none", never HMAC with a public key), no exp, an exp in the past or an
// nbf in the future (give or take Leeway), or a wrong iss or aud, is Deny.
//
// Claims that shape the answer:
//
//   - the username claim (UsernameClaim, default "sub"): when present it
//     must be a non-empty string; when the client also sent a username
//     (with the token in the password), the two must be equal, or Deny.
//     It becomes Answer.Username. A token in the username must carry it,
//     or Deny: the token itself is no name to check ACLs against.
//   - "is_superuser" or "superuser": true makes the client a superuser.
//   - the ACL claim (ACLClaim, default "acl"): when present and not null,
//     the client's whole ACL (Answer.Rules, HasRules). A claim that does
//     not parse is an error wrapping ErrUnavailable, never part of an ACL.
//
// The key file is read by NewJWTSource, again by Reload, and again by a
// goroutine of the source's own when it changes on disk (see
// JWTConfig.PollInterval) until Close. A file that does not load leaves
// the keys in use unchanged.
//
// Safe for concurrent use; Authenticate does not block and reads no file.
type JWTSource struct {
	path          string
	fromUsername  bool
	aclClaim      string
	usernameClaim string
	opts          []jwt.ParserOption
	log           *slog.Logger

	keys atomic.Pointer[jwtKeySet]

	mu struct {
		sync.Mutex
		// seen is the key file's state at the last load (or attempt);
		// nil when it could not be stat'ed.
		seen os.FileInfo
		// missing is set while the file cannot be stat'ed, so that the
		// poller says so once.
		missing bool
	}

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var (
	_ Source   = (*JWTSource)(nil)
	_ Reloader = (*JWTSource)(nil)
)

// NewJWTSource checks cfg, loads the key file, and starts watching it
// (unless cfg.PollInterval is negative). Call Close to stop watching.
func NewJWTSource(cfg JWTConfig) (*JWTSource, error) {
	s := &JWTSource{
		path:          cfg.KeyFile,
		aclClaim:      cfg.ACLClaim,
		usernameClaim: cfg.UsernameClaim,
		log:           cfg.Logger,
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	if s.path == "" {
		return nil, errors.New("auth: jwt: no key file")
	}
	switch cfg.From {
	case "", "password":
	case "username":
		s.fromUsername = true
	default:
		return nil, fmt.Errorf("auth: jwt: from is %s, not \"password\" or \"username\"", rulesQuote(cfg.From))
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("auth: jwt: negative leeway %v", cfg.Leeway)
	}
	if s.aclClaim == "" {
		s.aclClaim = "acl"
	}
	if s.usernameClaim == "" {
		s.usernameClaim = "sub"
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.opts = []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithLeeway(cfg.Leeway)}
	if cfg.Issuer != "" {
		s.opts = append(s.opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		s.opts = append(s.opts, jwt.WithAudience(cfg.Audience))
	}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	poll := cfg.PollInterval
	if poll == 0 {
		poll = jwtDefaultPoll
	}
	if poll < 0 {
		close(s.done)
		return s, nil
	}
	go s.watch(poll)
	return s, nil
}

// Name returns "jwt".
func (s *JWTSource) Name() string { return "jwt" }

// Close stops watching the key file and waits for the watcher to end. The
// source still answers, with the keys it has. Safe to call from any
// goroutine, more than once.
func (s *JWTSource) Close() {
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.done
}

// Reload reads the key file again. When it does not load, the keys in use
// stay and the error says why. Safe to call from any goroutine; it blocks
// while reading the file.
func (s *JWTSource) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked()
}

// reloadLocked reads the key file and, when it loads, puts its keys in
// use.
//
// REQUIRES: s.mu held.
func (s *JWTSource) reloadLocked() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		s.mu.seen = nil
		return fmt.Errorf("auth: jwt: cannot read key file: %w", err)
	}
	s.mu.seen, s.mu.missing = fi, false
	data, err := jwtReadFile(s.path)
	if err != nil {
		return err
	}
	ks, err := parseJWTKeys(data)
	if err != nil {
		return fmt.Errorf("auth: jwt: cannot load key file %s: %w", s.path, err)
	}
	ks.parser = jwt.NewParser(append([]jwt.ParserOption{jwt.WithValidMethods(ks.methods)}, s.opts...)...)
	s.keys.Store(ks)
	return nil
}

// jwtReadFile reads at most jwtMaxKeyFile bytes of path.
func jwtReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: jwt: cannot read key file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, jwtMaxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("auth: jwt: cannot read key file: %w", err)
	}
	if len(data) > jwtMaxKeyFile {
		return nil, fmt.Errorf("auth: jwt: key file %s is larger than %d bytes", path, jwtMaxKeyFile)
	}
	return data, nil
}

// watch checks the key file every interval until Close.
func (s *JWTSource) watch(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.reloadIfChanged()
		}
	}
}

// reloadIfChanged reloads the key file when it is not what was last
// loaded (or tried). A file that failed to load is tried again only once
// it changes again.
func (s *JWTSource) reloadIfChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.path)
	if err != nil {
		if !s.mu.missing {
			s.mu.missing = true
			s.log.Warn("auth: jwt: cannot check key file; keeping the keys in use", "file", s.path, "err", err)
		}
		s.mu.seen = nil
		return
	}
	if old := s.mu.seen; old != nil && os.SameFile(old, fi) && old.ModTime().Equal(fi.ModTime()) && old.Size() == fi.Size() {
		return
	}
	if err := s.reloadLocked(); err != nil {
		s.log.Warn("auth: jwt: key file changed but does not load; keeping the keys in use", "file", s.path, "err", err)
		return
	}
	s.log.Info("auth: jwt: key file reloaded", "file", s.path)
}

// Authenticate checks the token in r. See JWTSource. Safe for concurrent
// use; it neither blocks nor reads files.
func (s *JWTSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	if err := ctx.Err(); err != nil {
		return Answer{}, fmt.Errorf("auth: jwt: %w (%w)", err, ErrUnavailable)
	}
	var token string
	if s.fromUsername {
		if !r.HasUsername {
			return Answer{Verdict: Ignore}, nil
		}
		token = r.Username
	} else {
		if !r.HasPassword {
			return Answer{Verdict: Ignore}, nil
		}
		token = string(r.Password)
	}
	if !jwtLooksLikeToken(token) {
		return Answer{Verdict: Ignore}, nil
	}
	ks := s.keys.Load()
	claims := jwt.MapClaims{}
	if _, err := ks.parser.ParseWithClaims(token, claims, ks.keyFor); err != nil {
		return Answer{Verdict: Deny}, nil
	}

	a := Answer{Verdict: Allow}
	if v, ok := claims[s.usernameClaim]; ok {
		name, ok := v.(string)
		if !ok || name == "" {
			return Answer{Verdict: Deny}, nil
		}
		if !s.fromUsername && r.HasUsername && r.Username != "" && r.Username != name {
			return Answer{Verdict: Deny}, nil
		}
		a.Username = name
	} else if s.fromUsername {
		return Answer{Verdict: Deny}, nil
	}
	a.Superuser = claims["is_superuser"] == true || claims["superuser"] == true

	if v, ok := claims[s.aclClaim]; ok && v != nil {
		raw, err := json.Marshal(v)
		if err != nil {
			return Answer{}, fmt.Errorf("auth: jwt: cannot read claim %s (%w)", rulesQuote(s.aclClaim), ErrUnavailable)
		}
		username := a.Username
		if username == "" {
			username = r.Username
		}
		rules, err := parseJSONRules(raw, "claim "+rulesQuote(s.aclClaim), r, username)
		if err != nil {
			return Answer{}, fmt.Errorf("auth: jwt: bad ACL in a valid token: %w (%w)", err, ErrUnavailable)
		}
		a.Rules, a.HasRules = rules, true
	}
	return a, nil
}

// jwtLooksLikeToken reports whether s has the shape of a JWS in compact
// form: base64url header, payload and (possibly empty) signature separated
// by dots, the header decoding to something that starts like a JSON
// object. Passwords of three dotted words are not tokens.
func jwtLooksLikeToken(s string) bool {
	dots := 0
	part := 0 // length of the current part
	header := -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if part == 0 {
				return false
			}
			if dots == 0 {
				header = i
			}
			dots++
			part = 0
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '=':
			part++
		default:
			return false
		}
	}
	if dots != 2 {
		return false
	}
	// The first 16 characters (12 bytes) of the header are enough to see
	// the '{' after any white space a signer might put first.
	h := jwtTrimPadding(s[:min(header, 16)])
	if len(h)%4 == 1 {
		h = h[:len(h)-1]
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return false
	}
	return rulesFirstByte(b) == '{'
}

// jwtKey is one verification key and the algorithms it may verify.
type jwtKey struct {
	kid  string // "" matches any kid
	algs []string
	key  any // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// jwtKeySet is the content of one key file. It does not change once
// built.
type jwtKeySet struct {
	keys    []jwtKey
	methods []string // every algorithm some key verifies
	parser  *jwt.Parser
}

// keyFor picks the keys that may verify t: those whose kid is t's (or
// that have none) and that verify t's algorithm.
func (ks *jwtKeySet) keyFor(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 section 4.1.11: extensions we do not know must fail.
		return nil, errors.New("critical header extensions are not supported")
	}
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range ks.keys {
		if kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		if slices.Contains(k.algs, alg) {
			set.Keys = append(set.Keys, k.key)
		}
	}
	switch len(set.Keys) {
	case 0:
		return nil, errors.New("no key for this token")
	case 1:
		return set.Keys[0], nil
	}
	return set, nil
}

var (
	jwtRSAAlgs     = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	jwtHMACAlgs    = []string{"HS256", "HS384", "HS512"}
	jwtEdDSAAlgs   = []string{"EdDSA"}
	jwtES256Algs   = []string{"ES256"}
	jwtES384Algs   = []string{"ES384"}
	jwtES512Algs   = []string{"ES512"}
	jwtBeginMarker = []byte("-----BEGIN")
)

// parseJWTKeys reads a key file's content (see JWTConfig.KeyFile). Errors
// name the line (PEM, JSON syntax) or the member (JWKS) at fault and
// never hold key material.
func parseJWTKeys(data []byte) (*jwtKeySet, error) {
	// Public key material must never become an HMAC secret: anyone who
	// has it could sign. So whatever looks like a key is read as one, or
	// refused.
	data = bytes.TrimPrefix(data, []byte("\ufeff")) // a byte order mark
	trimmed := bytes.TrimSpace(data)
	var keys []jwtKey
	var err error
	switch {
	case len(trimmed) == 0:
		return nil, errors.New("empty")
	case bytes.Contains(data, jwtBeginMarker):
		keys, err = jwtParsePEM(data)
	case trimmed[0] == '{':
		keys, err = jwtParseJWKS(data)
	case trimmed[0] == '[':
		return nil, errors.New(`a JSON list: want a JWK Set, {"keys": [...]}`)
	case jwtIsDER(data):
		return nil, errors.New("a DER key or certificate: give it in PEM form")
	default:
		secret := bytes.TrimRight(data, "\r\n")
		keys = []jwtKey{{algs: jwtHMACAlgs, key: bytes.Clone(secret)}}
	}
	if err != nil {
		return nil, err
	}
	if len(keys) > jwtMaxKeys {
		return nil, fmt.Errorf("%d keys, more than the %d allowed", len(keys), jwtMaxKeys)
	}
	ks := &jwtKeySet{keys: keys}
	for _, k := range keys {
		for _, alg := range k.algs {
			if !slices.Contains(ks.methods, alg) {
				ks.methods = append(ks.methods, alg)
			}
		}
	}
	return ks, nil
}

// jwtIsDER reports whether data is a DER public key or certificate.
func jwtIsDER(data []byte) bool {
	if len(data) == 0 || data[0] != 0x30 { // an ASN.1 SEQUENCE
		return false
	}
	if _, err := x509.ParsePKIXPublicKey(data); err == nil {
		return true
	}
	if _, err := x509.ParsePKCS1PublicKey(data); err == nil {
		return true
	}
	_, err := x509.ParseCertificate(data)
	return err == nil
}

// jwtParsePEM reads every PEM block of data as a public key.
func jwtParsePEM(data []byte) ([]jwtKey, error) {
	var keys []jwtKey
	rest := data
	for {
		i := bytes.Index(rest, jwtBeginMarker)
		if i < 0 {
			break
		}
		line := 1 + bytes.Count(data[:len(data)-len(rest)+i], []byte{'\n'})
		block, after := pem.Decode(rest[i:])
		// pem.Decode skips a malformed block and returns the next good
		// one: make sure the block is the one that starts here.
		if block == nil || bytes.Count(rest[i:len(rest)-len(after)], jwtBeginMarker) != 1 {
			return nil, fmt.Errorf("line %d: bad PEM block", line)
		}
		rest = after
		var pub any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			cert, err = x509.ParseCertificate(block.Bytes)
			if err == nil {
				pub = cert.PublicKey
			}
		default:
			if bytes.Contains([]byte(block.Type), []byte("PRIVATE KEY")) {
				return nil, fmt.Errorf("line %d: a private key (%s): give the public key alone", line, block.Type)
			}
			return nil, fmt.Errorf("line %d: PEM block %s is not a public key or a certificate", line, rulesQuote(block.Type))
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: cannot parse %s: %w", line, block.Type, err)
		}
		k, err := jwtKeyFor(pub, "")
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		keys = append(keys, k)
		if len(keys) > jwtMaxKeys {
			return nil, fmt.Errorf("more than the %d keys allowed", jwtMaxKeys)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM block")
	}
	return keys, nil
}

// jwtKeyFor returns pub with the algorithms it verifies, all of them or
// alg alone when alg is set.
func jwtKeyFor(pub any, alg string) (jwtKey, error) {
	var k jwtKey
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < jwtMinRSABits || n > jwtMaxRSABits {
			return k, fmt.Errorf("RSA key of %d bits (want %d to %d)", n, jwtMinRSABits, jwtMaxRSABits)
		}
		k.algs = jwtRSAAlgs
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			k.algs = jwtES256Algs
		case elliptic.P384():
			k.algs = jwtES384Algs
		case elliptic.P521():
			k.algs = jwtES512Algs
		default:
			return k, fmt.Errorf("ECDSA key on unsupported curve %s", pub.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		k.algs = jwtEdDSAAlgs
	case []byte:
		if len(pub) == 0 {
			return k, errors.New("empty HMAC secret")
		}
		k.algs = jwtHMACAlgs
	default:
		return k, fmt.Errorf("unsupported key type %T (want RSA, ECDSA or Ed25519)", pub)
	}
	if alg != "" {
		if !slices.Contains(k.algs, alg) {
			return k, fmt.Errorf("alg %s does not fit the key (want one of %v)", rulesQuote(alg), k.algs)
		}
		k.algs = []string{alg}
	}
	k.key = pub
	return k, nil
}

// jwtJWK is the part of a JSON Web Key (RFC 7517, 7518, 8037) that
// verification needs.
type jwtJWK struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Use    string   `json:"use"`
	Alg    string   `json:"alg"`
	KeyOps []string `json:"key_ops"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	Crv    string   `json:"crv"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	K      string   `json:"k"`
}

// jwtParseJWKS reads a JWK Set, or a single JWK.
func jwtParseJWKS(data []byte) ([]jwtKey, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jwtJSONError(data, "", err)
	}
	var raws []json.RawMessage
	prefix := ""
	if list, ok := top["keys"]; ok {
		if err := json.Unmarshal(list, &raws); err != nil || rulesFirstByte(list) != '[' {
			return nil, errors.New("keys: want a list of keys")
		}
		if len(raws) > jwtMaxKeys {
			return nil, fmt.Errorf("keys: %d keys, more than the %d allowed", len(raws), jwtMaxKeys)
		}
		prefix = "keys"
	} else if _, ok := top["kty"]; ok {
		raws = []json.RawMessage{json.RawMessage(data)}
	} else {
		return nil, errors.New(`a JSON object that is neither a JWK Set ("keys") nor a JWK ("kty")`)
	}
	var keys []jwtKey
	for i, raw := range raws {
		name := "key"
		if prefix != "" {
			name = fmt.Sprintf("%s[%d]", prefix, i)
		}
		k, use, err := jwtParseJWK(raw, name)
		if err != nil {
			return nil, err
		}
		if use {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no key usable to verify signatures")
	}
	return keys, nil
}

// jwtParseJWK reads one JWK named name (for errors). use is false for a
// key that is not for verifying signatures, or of an unknown kty.
func jwtParseJWK(raw []byte, name string) (k jwtKey, use bool, err error) {
	if rulesFirstByte(raw) != '{' {
		return k, false, fmt.Errorf("%s: want an object", name)
	}
	var j jwtJWK
	if err := json.Unmarshal(raw, &j); err != nil {
		return k, false, jwtJSONError(nil, name, err)
	}
	if j.Use != "" && j.Use != "sig" {
		return k, false, nil
	}
	if j.KeyOps != nil && !slices.Contains(j.KeyOps, "verify") {
		return k, false, nil
	}
	var pub any
	switch j.Kty {
	case "RSA":
		n, err := jwtB64(j.N, name+".n")
		if err != nil {
			return k, false, err
		}
		e, err := jwtB64(j.E, name+".e")
		if err != nil {
			return k, false, err
		}
		if len(e) > 4 {
			return k, false, fmt.Errorf("%s.e: exponent too large", name)
		}
		ev := int(new(big.Int).SetBytes(e).Int64())
		if ev < 3 || ev%2 == 0 {
			return k, false, fmt.Errorf("%s.e: bad exponent %d", name, ev)
		}
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: ev}
	case "EC":
		var curve elliptic.Curve
		switch j.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return k, false, fmt.Errorf("%s.crv: unsupported curve %s (want P-256, P-384 or P-521)", name, rulesQuote(j.Crv))
		}
		size := (curve.Params().BitSize + 7) / 8
		x, err := jwtB64(j.X, name+".x")
		if err != nil {
			return k, false, err
		}
		y, err := jwtB64(j.Y, name+".y")
		if err != nil {
			return k, false, err
		}
		if len(x) != size || len(y) != size {
			return k, false, fmt.Errorf("%s: x and y must be %d bytes each for %s", name, size, j.Crv)
		}
		point := append(append([]byte{4}, x...), y...)
		pk, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return k, false, fmt.Errorf("%s: not a point of %s", name, j.Crv)
		}
		pub = pk
	case "OKP":
		if j.Crv != "Ed25519" {
			return k, false, fmt.Errorf("%s.crv: unsupported curve %s (want Ed25519)", name, rulesQuote(j.Crv))
		}
		x, err := jwtB64(j.X, name+".x")
		if err != nil {
			return k, false, err
		}
		if len(x) != ed25519.PublicKeySize {
			return k, false, fmt.Errorf("%s.x: want %d bytes", name, ed25519.PublicKeySize)
		}
		pub = ed25519.PublicKey(x)
	case "oct":
		secret, err := jwtB64(j.K, name+".k")
		if err != nil {
			return k, false, err
		}
		pub = secret
	case "":
		return k, false, fmt.Errorf("%s: no kty", name)
	default:
		return k, false, nil
	}
	k, err = jwtKeyFor(pub, j.Alg)
	if err != nil {
		return k, false, fmt.Errorf("%s: %w", name, err)
	}
	k.kid = j.Kid
	return k, true, nil
}

// jwtB64 decodes a base64url member (padding tolerated) named name.
func jwtB64(s, name string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("%s: missing", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(jwtTrimPadding(s))
	if err != nil {
		return nil, fmt.Errorf("%s: not base64url", name)
	}
	return b, nil
}

// jwtTrimPadding drops the trailing '=' of a base64 string.
func jwtTrimPadding(s string) string {
	for len(s) > 0 && s[len(s)-1] == '=' {
		s = s[:len(s)-1]
	}
	return s
}

// jwtJSONError describes a JSON error of the key file: the line of a
// syntax error (when data, the whole file, is given), or the member of a
// type error. It never quotes the file.
func jwtJSONError(data []byte, name string, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se) && data != nil:
		off := min(int(se.Offset), len(data))
		return fmt.Errorf("line %d: bad JSON: %s", 1+bytes.Count(data[:off], []byte{'\n'}), se.Error())
	case errors.As(err, &te) && te.Field != "":
		if name != "" {
			return fmt.Errorf("%s.%s: want a JSON %s", name, te.Field, jsonKindName(te.Type.Kind().String()))
		}
		return fmt.Errorf("%s: want a JSON %s", te.Field, jsonKindName(te.Type.Kind().String()))
	case name != "":
		return fmt.Errorf("%s: bad JSON", name)
	default:
		return errors.New("bad JSON")
	}
}
