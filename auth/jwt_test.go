package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwtTestKeys are generated once per test binary: RSA generation is slow.
type jwtTestKeys struct {
	rsa1, rsa2   *rsa.PrivateKey
	ec256, ec384 *ecdsa.PrivateKey
	ec256b       *ecdsa.PrivateKey
	ed           ed25519.PrivateKey
}

var jwtKeys = sync.OnceValue(func() *jwtTestKeys {
	var k jwtTestKeys
	var err error
	must := func(e error) {
		if e != nil {
			panic(e)
		}
	}
	k.rsa1, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec256b, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return &k
})

var jwtTestSecret = []byte("an HMAC secret of decent length!")

// jwtClaims returns claims for user alice valid for an hour, with
// name/value pairs added (a nil value deletes the claim).
func jwtClaims(pairs ...any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}
	for i := 0; i < len(pairs); i += 2 {
		name := pairs[i].(string)
		if pairs[i+1] == nil {
			delete(c, name)
			continue
		}
		c[name] = pairs[i+1]
	}
	return c
}

// jwtSign signs claims with key, adding kid to the header when not empty.
func jwtSign(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", method.Alg(), err)
	}
	return s
}

func jwtPEM(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func jwtCertPEM(t *testing.T, priv *ecdsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// jwtDER returns the bytes of the first PEM block of p.
func jwtDER(t *testing.T, p []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(p)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b.Bytes
}

func jwtB64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwtTestJWK returns pub as a JWK with kid (and alg when not empty).
func jwtTestJWK(t testing.TB, pub any, kid, alg string) map[string]any {
	t.Helper()
	m := map[string]any{"kid": kid}
	if alg != "" {
		m["alg"] = alg
	}
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", jwtB64URL(pub.N.Bytes()), jwtB64URL(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		point, err := pub.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		size := (len(point) - 1) / 2
		m["kty"], m["crv"] = "EC", pub.Curve.Params().Name
		m["x"], m["y"] = jwtB64URL(point[1:1+size]), jwtB64URL(point[1+size:])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", jwtB64URL(pub)
	case []byte:
		m["kty"], m["k"] = "oct", jwtB64URL(pub)
	default:
		t.Fatalf("no JWK for %T", pub)
	}
	return m
}

func jwtTestJWKS(t testing.TB, keys ...map[string]any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(map[string]any{"keys": keys}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jwtWriteKeyFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// jwtTestSource writes data to a key file and returns a source reading it
// (that does not poll unless cfg says so) and the file's path.
func jwtTestSource(t *testing.T, data []byte, cfg JWTConfig) (*JWTSource, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwt.key")
	jwtWriteKeyFile(t, path, data)
	cfg.KeyFile = path
	if cfg.PollInterval == 0 {
		cfg.PollInterval = -1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := NewJWTSource(cfg)
	if err != nil {
		t.Fatalf("NewJWTSource: %v", err)
	}
	t.Cleanup(s.Close)
	return s, path
}

func jwtPasswordRequest(token string) *Request {
	return &Request{ClientID: "dev-1", Password: []byte(token), HasPassword: true}
}

func jwtVerdict(t *testing.T, s *JWTSource, r *Request) Answer {
	t.Helper()
	a, err := s.Authenticate(context.Background(), r)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	return a
}

func TestJWTKeyForms(t *testing.T) {
	k := jwtKeys()
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa1.PublicKey)})
	tests := []struct {
		name   string
		file   []byte
		method jwt.SigningMethod
		key    any
	}{
		{"hmac secret", append(append([]byte{}, jwtTestSecret...), '\n'), jwt.SigningMethodHS256, jwtTestSecret},
		{"hmac secret HS512 CRLF", append(append([]byte{}, jwtTestSecret...), '\r', '\n'), jwt.SigningMethodHS512, jwtTestSecret},
		{"rsa pkix RS256", jwtPEM(t, &k.rsa1.PublicKey), jwt.SigningMethodRS256, k.rsa1},
		{"rsa pkix PS384", jwtPEM(t, &k.rsa1.PublicKey), jwt.SigningMethodPS384, k.rsa1},
		{"rsa pkcs1 RS512", pkcs1, jwt.SigningMethodRS512, k.rsa1},
		{"ecdsa P-256", jwtPEM(t, &k.ec256.PublicKey), jwt.SigningMethodES256, k.ec256},
		{"ecdsa P-384", jwtPEM(t, &k.ec384.PublicKey), jwt.SigningMethodES384, k.ec384},
		{"ed25519", jwtPEM(t, k.ed.Public()), jwt.SigningMethodEdDSA, k.ed},
		{"certificate", jwtCertPEM(t, k.ec256), jwt.SigningMethodES256, k.ec256},
		{"certificate after text", append([]byte("Bag Attributes\n    friendlyName: issuer\n"), jwtCertPEM(t, k.ec256)...), jwt.SigningMethodES256, k.ec256},
		{"jwks after a byte order mark", append([]byte("\ufeff\n"), jwtTestJWKS(t, jwtTestJWK(t, &k.ec256.PublicKey, "e", ""))...), jwt.SigningMethodES256, k.ec256},
		{"two pem blocks, second key", append(jwtPEM(t, &k.rsa2.PublicKey), jwtPEM(t, &k.ec256.PublicKey)...), jwt.SigningMethodES256, k.ec256},
		{"jwks", jwtTestJWKS(t, jwtTestJWK(t, &k.rsa1.PublicKey, "r", "")), jwt.SigningMethodRS256, k.rsa1},
		{"single jwk", jwtMustJSON(t, jwtTestJWK(t, k.ed.Public(), "", "")), jwt.SigningMethodEdDSA, k.ed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := jwtTestSource(t, tt.file, JWTConfig{})
			a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, tt.method, tt.key, "", jwtClaims())))
			if a.Verdict != Allow || a.Username != "alice" || a.HasRules || a.Superuser {
				t.Fatalf("got %+v, want allow as alice", a)
			}
			// The same claims signed by a key the file does not hold.
			var other any = []byte("another secret")
			switch tt.method.(type) {
			case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
				other = k.rsa2
			case *jwt.SigningMethodECDSA:
				other = k.ec256b
				if tt.method == jwt.SigningMethodES384 {
					other, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
				}
			case *jwt.SigningMethodEd25519:
				_, other, _ = ed25519.GenerateKey(rand.Reader)
			}
			if a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, tt.method, other, "", jwtClaims()))); a.Verdict != Deny {
				t.Fatalf("token of another key: got %+v, want deny", a)
			}
		})
	}
}

func jwtMustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJWTJWKSKid(t *testing.T) {
	k := jwtKeys()
	file := jwtTestJWKS(t,
		jwtTestJWK(t, &k.rsa1.PublicKey, "r1", "RS256"),
		jwtTestJWK(t, &k.ec256.PublicKey, "e1", ""),
		jwtTestJWK(t, jwtTestSecret, "h1", "HS256"),
		map[string]any{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
		map[string]any{"kty": "future-kty", "kid": "f"},
	)
	s, _ := jwtTestSource(t, file, JWTConfig{})
	tests := []struct {
		name   string
		method jwt.SigningMethod
		key    any
		kid    string
		want   Verdict
	}{
		{"rsa by kid", jwt.SigningMethodRS256, k.rsa1, "r1", Allow},
		{"ec by kid", jwt.SigningMethodES256, k.ec256, "e1", Allow},
		{"hmac by kid", jwt.SigningMethodHS256, jwtTestSecret, "h1", Allow},
		{"no kid: every key that fits is tried", jwt.SigningMethodES256, k.ec256, "", Allow},
		{"kid of another key", jwt.SigningMethodES256, k.ec256, "r1", Deny},
		{"unknown kid", jwt.SigningMethodRS256, k.rsa1, "r9", Deny},
		{"right kid, wrong key", jwt.SigningMethodRS256, k.rsa2, "r1", Deny},
		{"alg outside the key's alg", jwt.SigningMethodPS256, k.rsa1, "r1", Deny},
		{"HS384 where the secret is HS256 only", jwt.SigningMethodHS384, jwtTestSecret, "h1", Deny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, tt.method, tt.key, tt.kid, jwtClaims())))
			if a.Verdict != tt.want {
				t.Fatalf("got %+v, want %v", a, tt.want)
			}
		})
	}
}

func TestJWTClaimChecks(t *testing.T) {
	now := time.Now()
	cfg := JWTConfig{Issuer: "https://issuer.example", Audience: "mqtt", Leeway: time.Minute}
	s, _ := jwtTestSource(t, jwtTestSecret, cfg)
	good := []any{"iss", "https://issuer.example", "aud", "mqtt"}
	tests := []struct {
		name   string
		claims jwt.MapClaims
		want   Verdict
	}{
		{"valid", jwtClaims(good...), Allow},
		{"aud list holding ours", jwtClaims("iss", "https://issuer.example", "aud", []string{"web", "mqtt"}), Allow},
		{"expired within leeway", jwtClaims(append(good, "exp", now.Add(-30*time.Second).Unix())...), Allow},
		{"expired", jwtClaims(append(good, "exp", now.Add(-2*time.Minute).Unix())...), Deny},
		{"no exp", jwtClaims(append(good, "exp", nil)...), Deny},
		{"exp not a number", jwtClaims(append(good, "exp", "tomorrow")...), Deny},
		{"nbf within leeway", jwtClaims(append(good, "nbf", now.Add(30*time.Second).Unix())...), Allow},
		{"nbf in the future", jwtClaims(append(good, "nbf", now.Add(time.Hour).Unix())...), Deny},
		{"wrong iss", jwtClaims("iss", "https://evil.example", "aud", "mqtt"), Deny},
		{"no iss", jwtClaims("aud", "mqtt"), Deny},
		{"wrong aud", jwtClaims("iss", "https://issuer.example", "aud", "web"), Deny},
		{"no aud", jwtClaims("iss", "https://issuer.example"), Deny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", tt.claims)))
			if a.Verdict != tt.want {
				t.Fatalf("got %+v, want %v", a, tt.want)
			}
		})
	}

	// A tampered payload fails the signature.
	tok := jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", jwtClaims(good...))
	parts := strings.Split(tok, ".")
	parts[1] = jwtB64URL(jwtMustJSON(t, jwtClaims(append(good, "sub", "mallory")...)))
	if a := jwtVerdict(t, s, jwtPasswordRequest(strings.Join(parts, "."))); a.Verdict != Deny {
		t.Fatalf("tampered token: got %+v, want deny", a)
	}
}

// Tokens that try to make the source verify with the wrong algorithm.
func TestJWTAlgorithmConfusion(t *testing.T) {
	k := jwtKeys()
	rsaPEM := jwtPEM(t, &k.rsa1.PublicKey)

	t.Run("HS256 with the RSA public key as secret", func(t *testing.T) {
		s, _ := jwtTestSource(t, rsaPEM, JWTConfig{})
		for _, secret := range [][]byte{rsaPEM, []byte(strings.TrimSpace(string(rsaPEM)))} {
			if a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, secret, "", jwtClaims()))); a.Verdict != Deny {
				t.Fatalf("got %+v, want deny", a)
			}
		}
	})
	t.Run("HS256 with a JWKS RSA key's kid", func(t *testing.T) {
		file := jwtTestJWKS(t, jwtTestJWK(t, &k.rsa1.PublicKey, "r1", ""), jwtTestJWK(t, []byte("other secret"), "h1", ""))
		s, _ := jwtTestSource(t, file, JWTConfig{})
		for _, secret := range [][]byte{rsaPEM, k.rsa1.N.Bytes()} {
			if a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, secret, "r1", jwtClaims()))); a.Verdict != Deny {
				t.Fatalf("got %+v, want deny", a)
			}
		}
	})
	t.Run("alg none", func(t *testing.T) {
		for _, file := range [][]byte{jwtTestSecret, rsaPEM} {
			s, _ := jwtTestSource(t, file, JWTConfig{})
			tok := jwtSign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", jwtClaims())
			if a := jwtVerdict(t, s, jwtPasswordRequest(tok)); a.Verdict != Deny {
				t.Fatalf("alg none token %q: got %+v, want deny", tok, a)
			}
		}
	})
	t.Run("RS256 against an HMAC secret", func(t *testing.T) {
		s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
		if a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodRS256, k.rsa1, "", jwtClaims()))); a.Verdict != Deny {
			t.Fatalf("got %+v, want deny", a)
		}
	})
	t.Run("ES384 against a P-256 key", func(t *testing.T) {
		s, _ := jwtTestSource(t, jwtPEM(t, &k.ec256.PublicKey), JWTConfig{})
		if a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodES384, k.ec384, "", jwtClaims()))); a.Verdict != Deny {
			t.Fatalf("got %+v, want deny", a)
		}
	})
	t.Run("crit header", func(t *testing.T) {
		s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwtClaims())
		tok.Header["crit"] = []string{"exp-ext"}
		str, err := tok.SignedString(jwtTestSecret)
		if err != nil {
			t.Fatal(err)
		}
		if a := jwtVerdict(t, s, jwtPasswordRequest(str)); a.Verdict != Deny {
			t.Fatalf("got %+v, want deny", a)
		}
	})
}

func TestJWTNotAToken(t *testing.T) {
	s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
	for _, pw := range []string{"", "hunter2", "a.b", "a.b.c.d", "a b.c.d", "a..c", ".b.c", "a.b.c\n", "ä.b.c"} {
		if a := jwtVerdict(t, s, jwtPasswordRequest(pw)); a.Verdict != Ignore {
			t.Errorf("password %q: got %+v, want ignore", pw, a)
		}
	}
	// Dotted words are passwords, not tokens.
	for _, pw := range []string{"abc.def.ghi", "my.pass.word", "eyJ.b.c"[1:]} {
		if a := jwtVerdict(t, s, jwtPasswordRequest(pw)); a.Verdict != Ignore {
			t.Errorf("password %q: got %+v, want ignore", pw, a)
		}
	}
	// A header that starts like JSON makes a token, a bad one: Deny.
	for _, pw := range []string{"eyJ.b.c", jwtB64URL([]byte(`{"alg":"HS256"`)) + ".e30.c2ln", jwtB64URL([]byte(` {"alg":"HS256","typ":"JWT"}`)) + ".e30."} {
		if a := jwtVerdict(t, s, jwtPasswordRequest(pw)); a.Verdict != Deny {
			t.Errorf("password %q: got %+v, want deny", pw, a)
		}
	}
	// No password at all.
	tok := jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", jwtClaims())
	if a := jwtVerdict(t, s, &Request{Username: tok, HasUsername: true}); a.Verdict != Ignore {
		t.Errorf("token in the username of a password source: got %+v, want ignore", a)
	}
}

func TestJWTUsername(t *testing.T) {
	s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
	tok := func(claims jwt.MapClaims) string {
		return jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", claims)
	}
	tests := []struct {
		name     string
		r        *Request
		want     Verdict
		wantUser string
	}{
		{"same username", &Request{Username: "alice", HasUsername: true, Password: []byte(tok(jwtClaims())), HasPassword: true}, Allow, "alice"},
		{"other username", &Request{Username: "bob", HasUsername: true, Password: []byte(tok(jwtClaims())), HasPassword: true}, Deny, ""},
		{"no username", jwtPasswordRequest(tok(jwtClaims())), Allow, "alice"},
		{"empty username", &Request{HasUsername: true, Password: []byte(tok(jwtClaims())), HasPassword: true}, Allow, "alice"},
		{"no claim", &Request{Username: "bob", HasUsername: true, Password: []byte(tok(jwtClaims("sub", nil))), HasPassword: true}, Allow, ""},
		{"claim not a string", jwtPasswordRequest(tok(jwtClaims("sub", 42))), Deny, ""},
		{"empty claim", jwtPasswordRequest(tok(jwtClaims("sub", ""))), Deny, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := jwtVerdict(t, s, tt.r)
			if a.Verdict != tt.want || a.Username != tt.wantUser {
				t.Fatalf("got %+v, want %v as %q", a, tt.want, tt.wantUser)
			}
		})
	}

	t.Run("custom claim", func(t *testing.T) {
		s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{UsernameClaim: "username"})
		a := jwtVerdict(t, s, jwtPasswordRequest(tok(jwtClaims("username", "carol"))))
		if a.Verdict != Allow || a.Username != "carol" {
			t.Fatalf("got %+v, want allow as carol", a)
		}
	})
	t.Run("token in the username", func(t *testing.T) {
		s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{From: "username"})
		a := jwtVerdict(t, s, &Request{Username: tok(jwtClaims()), HasUsername: true, Password: []byte("x"), HasPassword: true})
		if a.Verdict != Allow || a.Username != "alice" {
			t.Fatalf("got %+v, want allow as alice", a)
		}
		a = jwtVerdict(t, s, &Request{Username: tok(jwtClaims("sub", nil)), HasUsername: true})
		if a.Verdict != Deny {
			t.Fatalf("token without a username claim in the username: got %+v, want deny", a)
		}
		a = jwtVerdict(t, s, jwtPasswordRequest(tok(jwtClaims())))
		if a.Verdict != Ignore {
			t.Fatalf("token in the password: got %+v, want ignore", a)
		}
	})
}

func TestJWTSuperuser(t *testing.T) {
	s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
	for _, tt := range []struct {
		claims jwt.MapClaims
		want   bool
	}{
		{jwtClaims(), false},
		{jwtClaims("is_superuser", true), true},
		{jwtClaims("superuser", true), true},
		{jwtClaims("is_superuser", false), false},
		{jwtClaims("is_superuser", "true"), false},
		{jwtClaims("is_superuser", 1), false},
	} {
		a := jwtVerdict(t, s, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", tt.claims)))
		if a.Verdict != Allow || a.Superuser != tt.want {
			t.Errorf("claims %v: got %+v, want superuser %v", tt.claims, a, tt.want)
		}
	}
}

func TestJWTACLClaim(t *testing.T) {
	s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
	tok := func(claims jwt.MapClaims) *Request {
		r := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", claims))
		r.Username, r.HasUsername = "", true
		return r
	}
	list := []any{
		map[string]any{"permission": "allow", "action": "publish", "topic": "u/${username}/${clientid}"},
		map[string]any{"permission": "deny", "action": "subscribe", "topic": "u/+/secret"},
	}
	a := jwtVerdict(t, s, tok(jwtClaims("acl", list)))
	want := []Rule{{Filter: "u/alice/dev-1", Access: Write}, {Filter: "u/+/secret", Access: Read, Deny: true}}
	if a.Verdict != Allow || !a.HasRules || !reflect.DeepEqual(a.Rules, want) {
		t.Fatalf("list form: got %+v, want rules %+v", a, want)
	}

	a = jwtVerdict(t, s, tok(jwtClaims("acl", map[string]any{"pub": []string{"p/%u"}, "sub": []string{"s/#"}, "all": []string{"a"}})))
	if a.Verdict != Allow || !a.HasRules || len(a.Rules) != 3 {
		t.Fatalf("map form: got %+v", a)
	}
	got := map[Rule]bool{}
	for _, r := range a.Rules {
		got[r] = true
	}
	for _, r := range []Rule{{Filter: "p/alice", Access: Write}, {Filter: "s/#", Access: Read}, {Filter: "a", Access: ReadWrite}} {
		if !got[r] {
			t.Fatalf("map form: %+v lacks %+v", a.Rules, r)
		}
	}

	if a := jwtVerdict(t, s, tok(jwtClaims("acl", nil))); a.HasRules {
		t.Fatalf("no claim: got %+v, want no rules", a)
	}
	if a := jwtVerdict(t, s, tok(jwtClaims("acl", []any{}))); !a.HasRules || len(a.Rules) != 0 {
		t.Fatalf("empty claim: got %+v, want an empty ACL", a)
	}

	bad := jwtClaims("acl", []any{map[string]any{"permission": "allow", "action": "all", "topic": "a/#/b"}})
	a, err := s.Authenticate(context.Background(), tok(bad))
	if err == nil || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `claim "acl"[0].topic: bad topic filter`) {
		t.Fatalf("bad rule: got %+v, %v; want an unavailable error naming the rule", a, err)
	}
	if a.HasRules || a.Verdict == Allow {
		t.Fatalf("bad rule: answer %+v returned with the error", a)
	}

	t.Run("custom claim", func(t *testing.T) {
		s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{ACLClaim: "mqtt_acl"})
		a := jwtVerdict(t, s, tok(jwtClaims("acl", list, "mqtt_acl", map[string]any{"sub": []string{"x"}})))
		if want := []Rule{{Filter: "x", Access: Read}}; !a.HasRules || !reflect.DeepEqual(a.Rules, want) {
			t.Fatalf("got %+v, want rules %+v", a, want)
		}
	})
}

func TestJWTReload(t *testing.T) {
	k := jwtKeys()
	s, path := jwtTestSource(t, jwtPEM(t, &k.rsa1.PublicKey), JWTConfig{})
	tokA := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodRS256, k.rsa1, "", jwtClaims()))
	tokB := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodES256, k.ec256, "", jwtClaims()))
	check := func(step string, wantA, wantB Verdict) {
		t.Helper()
		if a := jwtVerdict(t, s, tokA); a.Verdict != wantA {
			t.Fatalf("%s: token A: got %v, want %v", step, a.Verdict, wantA)
		}
		if a := jwtVerdict(t, s, tokB); a.Verdict != wantB {
			t.Fatalf("%s: token B: got %v, want %v", step, a.Verdict, wantB)
		}
	}
	check("start", Allow, Deny)

	jwtWriteKeyFile(t, path, jwtPEM(t, &k.ec256.PublicKey))
	check("rotated, not reloaded", Allow, Deny)
	if err := s.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	check("reloaded", Deny, Allow)

	for _, bad := range []struct {
		name, data, wantErr string
	}{
		{"truncated pem", "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n", "line 1: bad PEM block"},
		{"private key", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", "a private key"},
		{"bad jwks", "{\"keys\": [\n  {\"kty\": \"EC\"\n]}", "line 3: bad JSON"},
		{"empty", "\n", "empty"},
	} {
		jwtWriteKeyFile(t, path, []byte(bad.data))
		err := s.Reload()
		if err == nil || !strings.Contains(err.Error(), bad.wantErr) || !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: Reload error %v, want one naming %s and %q", bad.name, err, path, bad.wantErr)
		}
		check("after a bad file: "+bad.name, Deny, Allow)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: Reload error %v, want not exist", err)
	}
	check("after the file went away", Deny, Allow)
}

// The watcher picks up a rotated file by itself.
func TestJWTAutoReload(t *testing.T) {
	k := jwtKeys()
	s, path := jwtTestSource(t, jwtTestSecret, JWTConfig{PollInterval: 5 * time.Millisecond})
	tokB := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodEdDSA, k.ed, "", jwtClaims()))
	if a := jwtVerdict(t, s, tokB); a.Verdict != Deny {
		t.Fatalf("before rotation: got %v, want deny", a.Verdict)
	}
	// Replace the file the way deployments do: write aside, rename over.
	tmp := path + ".new"
	jwtWriteKeyFile(t, tmp, jwtPEM(t, k.ed.Public()))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for jwtVerdict(t, s, tokB).Verdict != Allow {
		if time.Now().After(deadline) {
			t.Fatal("rotated key not picked up within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	tokA := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", jwtClaims()))
	if a := jwtVerdict(t, s, tokA); a.Verdict != Deny {
		t.Fatalf("old key after rotation: got %v, want deny", a.Verdict)
	}
	s.Close()
	s.Close() // twice is fine
}

// A changed file that does not load leaves the keys alone, and is not
// read again until it changes again.
func TestJWTReloadIfChanged(t *testing.T) {
	k := jwtKeys()
	var logs bytes.Buffer // written by reloadIfChanged, on this goroutine
	s, path := jwtTestSource(t, jwtTestSecret, JWTConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	tokA := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", jwtClaims()))
	tokB := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodES256, k.ec256, "", jwtClaims()))
	before := s.keys.Load()

	s.reloadIfChanged()
	if s.keys.Load() != before {
		t.Fatal("unchanged file was loaded again")
	}
	jwtWriteKeyFile(t, path, []byte("-----BEGIN PUBLIC KEY-----\ngarbage"))
	jwtTouch(t, path, time.Hour)
	s.reloadIfChanged()
	if s.keys.Load() != before || jwtVerdict(t, s, tokA).Verdict != Allow {
		t.Fatal("a bad file replaced the keys")
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "line 1: bad PEM block") {
		t.Fatalf("no warning for the bad file in the log: %q", logs.String())
	}
	logs.Reset()
	s.reloadIfChanged()
	if logs.Len() != 0 {
		t.Fatalf("the bad file was tried again: %q", logs.String())
	}
	s.mu.Lock()
	seen := s.mu.seen
	s.mu.Unlock()
	if seen == nil || seen.Size() != int64(len("-----BEGIN PUBLIC KEY-----\ngarbage")) {
		t.Fatalf("the bad file was not remembered: %v", seen)
	}

	jwtWriteKeyFile(t, path, jwtPEM(t, &k.ec256.PublicKey))
	jwtTouch(t, path, 2*time.Hour)
	s.reloadIfChanged()
	if jwtVerdict(t, s, tokB).Verdict != Allow || jwtVerdict(t, s, tokA).Verdict != Deny {
		t.Fatal("the fixed file was not loaded")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s.reloadIfChanged()
	s.reloadIfChanged()
	if jwtVerdict(t, s, tokB).Verdict != Allow {
		t.Fatal("a missing file dropped the keys")
	}
	if n := strings.Count(logs.String(), "cannot check key file"); n != 1 {
		t.Fatalf("a missing file was reported %d times, want once: %q", n, logs.String())
	}
}

// jwtTouch sets path's modification time d from now, so that a change
// shows whatever the file system's time granularity.
func jwtTouch(t *testing.T, path string, d time.Duration) {
	t.Helper()
	when := time.Now().Add(d)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

// Authenticate runs alongside reloads, by hand and by the watcher.
func TestJWTConcurrentReload(t *testing.T) {
	s, path := jwtTestSource(t, jwtTestSecret, JWTConfig{PollInterval: time.Millisecond})
	tok := jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", jwtClaims("acl", map[string]any{"pub": []string{"t/%c"}})))
	stop := make(chan struct{})
	reloaderDone := make(chan struct{})
	go func() {
		defer close(reloaderDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			jwtTouch(t, path, time.Duration(i)*time.Second) // the watcher reloads too
			if err := s.Reload(); err != nil {
				t.Errorf("Reload: %v", err)
				return
			}
		}
	}()
	var readers sync.WaitGroup
	for i := 0; i < 8; i++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for j := 0; j < 200; j++ {
				a, err := s.Authenticate(context.Background(), tok)
				if err != nil || a.Verdict != Allow || len(a.Rules) != 1 || a.Rules[0].Filter != "t/dev-1" {
					t.Errorf("got %+v, %v", a, err)
					return
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	<-reloaderDone
}

func TestJWTContextDone(t *testing.T) {
	s, _ := jwtTestSource(t, jwtTestSecret, JWTConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Authenticate(ctx, jwtPasswordRequest(jwtSign(t, jwt.SigningMethodHS256, jwtTestSecret, "", jwtClaims())))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want an unavailable error for a cancelled ctx", err)
	}
}

func TestNewJWTSourceErrors(t *testing.T) {
	dir := t.TempDir()
	k := jwtKeys()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaJWK := jwtTestJWK(t, &k.rsa1.PublicKey, "r", "")
	with := func(m map[string]any, pairs ...any) map[string]any {
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		for i := 0; i < len(pairs); i += 2 {
			c[pairs[i].(string)] = pairs[i+1]
		}
		return c
	}
	ecJWK := jwtTestJWK(t, &k.ec256.PublicKey, "e", "")
	tests := []struct {
		name    string
		data    []byte // nil: no file
		cfg     JWTConfig
		wantErr string
	}{
		{"no key file", nil, JWTConfig{}, "no key file"},
		{"missing file", nil, JWTConfig{KeyFile: filepath.Join(dir, "nope")}, "cannot read key file"},
		{"bad from", jwtTestSecret, JWTConfig{From: "header"}, `from is "header"`},
		{"negative leeway", jwtTestSecret, JWTConfig{Leeway: -time.Second}, "negative leeway"},
		{"empty file", []byte(" \n"), JWTConfig{}, "empty"},
		{"small rsa", jwtPEM(t, &small.PublicKey), JWTConfig{}, "line 1: RSA key of 1024 bits"},
		{"private key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), JWTConfig{}, "line 1: a private key (PRIVATE KEY)"},
		{"other pem", append(jwtPEM(t, k.ed.Public()), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{1}})...), JWTConfig{}, `line 4: PEM block "X509 CRL" is not a public key`},
		{"bad der", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}), JWTConfig{}, "line 1: cannot parse PUBLIC KEY"},
		{"json syntax", []byte("{\n\"keys\": [\n}"), JWTConfig{}, "line 3: bad JSON"},
		{"json syntax after blank lines", []byte("\n\n{\"keys\": [}"), JWTConfig{}, "line 3: bad JSON"},
		{"json list", jwtMustJSON(t, []any{rsaJWK}), JWTConfig{}, "a JSON list: want a JWK Set"},
		{"der certificate", jwtDER(t, jwtCertPEM(t, k.ec256)), JWTConfig{}, "a DER key or certificate"},
		{"der public key", jwtDER(t, jwtPEM(t, &k.rsa1.PublicKey)), JWTConfig{}, "a DER key or certificate"},
		{"pem inside a would-be secret", []byte("secret -----BEGIN"), JWTConfig{}, "line 1: bad PEM block"},
		{"keys not a list", []byte(`{"keys": {}}`), JWTConfig{}, "keys: want a list of keys"},
		{"neither jwks nor jwk", []byte(`{"kid": "x"}`), JWTConfig{}, "neither a JWK Set"},
		{"no kty", jwtTestJWKS(t, rsaJWK, map[string]any{"kid": "x"}), JWTConfig{}, "keys[1]: no kty"},
		{"bad n", jwtTestJWKS(t, rsaJWK, with(rsaJWK, "n", "!!!")), JWTConfig{}, "keys[1].n: not base64url"},
		{"no e", jwtTestJWKS(t, with(rsaJWK, "e", "")), JWTConfig{}, "keys[0].e: missing"},
		{"even e", jwtTestJWKS(t, with(rsaJWK, "e", "AAAC")), JWTConfig{}, "keys[0].e: bad exponent 2"},
		{"n not a string", jwtTestJWKS(t, with(rsaJWK, "n", 5)), JWTConfig{}, "keys[0].n: want a JSON string"},
		{"alg does not fit", jwtTestJWKS(t, with(rsaJWK, "alg", "HS256")), JWTConfig{}, `keys[0]: alg "HS256" does not fit the key`},
		{"alg none", jwtTestJWKS(t, with(jwtTestJWK(t, jwtTestSecret, "h", ""), "alg", "none")), JWTConfig{}, `keys[0]: alg "none" does not fit`},
		{"ec off curve", jwtTestJWKS(t, with(ecJWK, "y", ecJWK["x"])), JWTConfig{}, "keys[0]: not a point of P-256"},
		{"ec short x", jwtTestJWKS(t, with(ecJWK, "x", "AAAA")), JWTConfig{}, "keys[0]: x and y must be 32 bytes"},
		{"unknown crv", jwtTestJWKS(t, with(ecJWK, "crv", "secp256k1")), JWTConfig{}, `keys[0].crv: unsupported curve "secp256k1"`},
		{"x25519", jwtTestJWKS(t, map[string]any{"kty": "OKP", "crv": "X25519", "x": jwtB64URL(make([]byte, 32))}), JWTConfig{}, `keys[0].crv: unsupported curve "X25519"`},
		{"empty oct", jwtTestJWKS(t, map[string]any{"kty": "oct", "k": ""}), JWTConfig{}, "keys[0].k: missing"},
		{"only enc keys", jwtTestJWKS(t, with(rsaJWK, "use", "enc")), JWTConfig{}, "no key usable to verify signatures"},
		{"key_ops without verify", jwtTestJWKS(t, with(rsaJWK, "key_ops", []string{"encrypt"})), JWTConfig{}, "no key usable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.PollInterval = -1
			if tt.data != nil {
				cfg.KeyFile = filepath.Join(t.TempDir(), "key")
				jwtWriteKeyFile(t, cfg.KeyFile, tt.data)
			}
			s, err := NewJWTSource(cfg)
			if err == nil {
				s.Close()
				t.Fatalf("NewJWTSource succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
			if cfg.KeyFile != "" && tt.data != nil && !strings.Contains(err.Error(), cfg.KeyFile) && !strings.Contains(tt.wantErr, "from") && !strings.Contains(tt.wantErr, "leeway") {
				t.Fatalf("error %q does not name the file", err)
			}
			for _, secret := range []string{string(jwtTestSecret), jwtB64URL(jwtTestSecret), rsaJWK["n"].(string)[:20]} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q shows key material", err)
				}
			}
		})
	}
}

// FuzzJWTKeys checks that parseJWTKeys never panics, that what it accepts
// is a usable, bounded key set whose keys verify only algorithms that fit
// their type, and that its errors do not quote key material.
func FuzzJWTKeys(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a","alg":"HS256"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","use":"sig"}]}`))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte("secret\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := parseJWTKeys(data)
		if err != nil {
			msg := err.Error()
			for _, v := range jwtFuzzSecrets(data) {
				if strings.Contains(msg, v) {
					t.Fatalf("error %q quotes key material %q", msg, v)
				}
			}
			return
		}
		if len(ks.keys) == 0 || len(ks.keys) > jwtMaxKeys || len(ks.methods) == 0 {
			t.Fatalf("%d keys, %d methods", len(ks.keys), len(ks.methods))
		}
		if _, secret := ks.keys[0].key.([]byte); secret && len(ks.keys) == 1 && ks.keys[0].kid == "" {
			// Not from a JWKS: the whole file is the secret, and must not
			// be public key material.
			if bytes.Contains(data, jwtBeginMarker) || jwtIsDER(data) {
				t.Fatalf("key material taken for an HMAC secret: %q", data)
			}
		}
		for _, k := range ks.keys {
			if len(k.algs) == 0 {
				t.Fatalf("key %T verifies nothing", k.key)
			}
			for _, alg := range k.algs {
				if alg == "none" || !jwtFuzzFits(k.key, alg) {
					t.Fatalf("key %T verifies %s", k.key, alg)
				}
			}
		}
	})
}

// FuzzJWKS aims at the JWK Set parser alone, from real key sets: the same
// checks as FuzzJWTKeys.
func FuzzJWKS(f *testing.F) {
	k := jwtKeys()
	f.Add(jwtTestJWKS(f,
		jwtTestJWK(f, &k.rsa1.PublicKey, "r1", "RS256"),
		jwtTestJWK(f, &k.ec256.PublicKey, "e1", ""),
		jwtTestJWK(f, &k.ec384.PublicKey, "e2", "ES384"),
		jwtTestJWK(f, k.ed.Public(), "d1", ""),
		jwtTestJWK(f, jwtTestSecret, "h1", "HS512"),
	))
	f.Add(jwtMustJSON(f, jwtTestJWK(f, &k.rsa2.PublicKey, "", "")))
	f.Add([]byte(`{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},{"kty":"oct","k":"AA","key_ops":["verify"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := jwtParseJWKS(data)
		if err != nil {
			msg := err.Error()
			for _, v := range jwtFuzzSecrets(data) {
				if strings.Contains(msg, v) {
					t.Fatalf("error %q quotes key material %q", msg, v)
				}
			}
			return
		}
		if len(keys) == 0 || len(keys) > jwtMaxKeys {
			t.Fatalf("%d keys", len(keys))
		}
		for _, k := range keys {
			if len(k.algs) == 0 {
				t.Fatalf("key %T verifies nothing", k.key)
			}
			for _, alg := range k.algs {
				if !jwtFuzzFits(k.key, alg) {
					t.Fatalf("key %T verifies %s", k.key, alg)
				}
			}
		}
	})
}

// jwtFuzzFits reports whether alg belongs with a key of key's type.
func jwtFuzzFits(key any, alg string) bool {
	switch key := key.(type) {
	case []byte:
		return len(key) > 0 && strings.HasPrefix(alg, "HS")
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return strings.HasPrefix(alg, "ES")
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// jwtFuzzSecrets returns the key material members (of 8 bytes or more)
// of a JSON document.
func jwtFuzzSecrets(data []byte) []string {
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for name, m := range v {
				switch name {
				case "k", "d", "n", "x", "y", "e", "p", "q", "dp", "dq", "qi":
					if s, ok := m.(string); ok && len(s) >= 8 {
						out = append(out, s)
					}
				}
				walk(m)
			}
		case []any:
			for _, m := range v {
				walk(m)
			}
		}
	}
	var doc any
	if json.Unmarshal(data, &doc) == nil {
		walk(doc)
	}
	return out
}
