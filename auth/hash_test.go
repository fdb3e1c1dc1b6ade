package auth

import (
	"errors"
	"strings"
	"testing"
	"unicode"
)

// knownHashes are encodings made by other implementations, each with its
// password.
var knownHashes = []struct {
	name, encoded, password string
}{
	// mosquitto_passwd 2.0.11: `mosquitto_passwd -b -c FILE alice secret`.
	{"mosquitto $7$", "$7$101$sE0hM9v6erUYuoFq$s0HVBGvepP4/Qia7F8+jG1F0xx6vgbEm2rFQTlsUQMpYQvGBNFbgFLqi1zIlvb4lCersYji0drWiCuXEdTRoYw==", "secret"},
	// mosquitto_passwd 2.0.11: `mosquitto_passwd -H sha512 -b FILE bob pw2`.
	{"mosquitto $6$", "$6$mhxeFy48UhSrQMk1$t1kUxHC+Ax2Guq+Oqeo6K8DmzwK7Yq0HsuoP/Z+Sk6o/dc/vZkHbZGSCV+CqNxJD98dfj+zHjd6lUZWBXrCGOA==", "pw2"},
	// Python's hashlib: sha512(b"hunter2" + salt), pbkdf2_hmac("sha512", ...).
	{"hashlib $6$", "$6$MDEyMzQ1Njc4OWFi$Kgl3AxuVCetFEGDDZOAh44c3ssh9wvPft10MPC9Tjr1rwsIDmYUEICH/zUOFhM8vCQKmMb8nXrQTl7q2T8alUw==", "hunter2"},
	{"hashlib $7$ 1000", "$7$1000$MDEyMzQ1Njc4OWFi$dD5rygInu2R5Rc/sRUY/S9YsXz7iRG4T3hw6Zu8wPb/q9lY74AXf+g4vrruBrrn63k1K0AoAkEoQQqzRw1Q+yA==", "hunter2"},
	{"hashlib $7$ empty password", "$7$1$eA==$HuWrOUMGZG1n2uAfwODQkbWTGZxOAzmXUixA/BUXNfnu+kLAW7sgt/9sfwlDaIEX95Q3qwZqQU3LbfhXJve57A==", ""},
	// John the Ripper's bcrypt test vectors.
	{"bcrypt $2a$", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U"},
	{"bcrypt $2a$ 2", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK", "U*U*"},
	{"bcrypt $2b$", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U"},
	{"bcrypt $2y$", "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U"},
	// The argon2 reference implementation's tests (phc-winner-argon2
	// src/test.c).
	{"argon2id reference m=256", "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4", "password"},
	{"argon2id reference m=65536", "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc", "password"},
}

func TestCheckPasswordKnownHashes(t *testing.T) {
	t.Parallel()
	for _, c := range knownHashes {
		t.Run(c.name, func(t *testing.T) {
			ok, err := CheckPassword(c.encoded, []byte(c.password))
			if err != nil || !ok {
				t.Fatalf("right password: got %v, %v; want true", ok, err)
			}
			wrongs := []string{"x" + c.password, c.password + "x", strings.ToUpper(c.password) + "!", ""}
			if strings.Contains(c.encoded, "m=65536") {
				wrongs = nil // a quarter of a second each; the m=256 vector checks wrong ones
			}
			for _, wrong := range wrongs {
				if wrong == c.password {
					continue
				}
				ok, err := CheckPassword(c.encoded, []byte(wrong))
				if err != nil || ok {
					t.Fatalf("wrong password %q: got %v, %v; want false", wrong, ok, err)
				}
			}
		})
	}
}

// Each algorithm's hash verifies its password and nothing else, carries
// its format and cost, and is salted afresh every time.
func TestHashPasswordRoundTrip(t *testing.T) {
	small := func(pw []byte) (string, error) { // argon2id at 64 KiB: the default costs 0.4 s
		salt, err := randomSalt(argon2SaltLen)
		return encodeArgon2id(pw, salt, 2, 64, 2), err
	}
	for _, c := range []struct {
		name   string
		hash   func(pw []byte) (string, error)
		prefix string
	}{
		{"sha512-pbkdf2", func(pw []byte) (string, error) { return HashPassword(HashSHA512PBKDF2, pw, 0) }, "$7$101$"},
		{"sha512-pbkdf2/2000", func(pw []byte) (string, error) { return HashPassword(HashSHA512PBKDF2, pw, 2000) }, "$7$2000$"},
		{"sha512", func(pw []byte) (string, error) { return HashPassword(HashSHA512, pw, 0) }, "$6$"},
		{"bcrypt/4", func(pw []byte) (string, error) { return HashPassword(HashBcrypt, pw, 4) }, "$2a$04$"},
		{"argon2id/small", small, "$argon2id$v=19$m=64,t=2,p=2$"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pw := []byte("correct horse battery staple")
			a, err := c.hash(pw)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(a, c.prefix) {
				t.Fatalf("hash does not start with %q", c.prefix)
			}
			if strings.Contains(a, string(pw)) {
				t.Fatal("hash holds the password")
			}
			b, err := c.hash(pw)
			if err != nil {
				t.Fatal(err)
			}
			if a == b {
				t.Fatal("two hashes of one password are equal: salt not random")
			}
			for _, h := range []string{a, b} {
				if ok, err := CheckPassword(h, pw); err != nil || !ok {
					t.Fatalf("right password: got %v, %v", ok, err)
				}
				if ok, err := CheckPassword(h, []byte("correct horse battery stapler")); err != nil || ok {
					t.Fatalf("wrong password: got %v, %v", ok, err)
				}
			}
		})
	}
}

// The defaults are what the encodings say. argon2id's (64 MiB, 3 passes,
// 4 lanes) costs a few hundred milliseconds, so it is made once (its
// encoding is checked at a small cost in TestHashPasswordRoundTrip);
// bcrypt's (10) costs about 60.
func TestHashPasswordDefaults(t *testing.T) {
	t.Parallel()
	h, err := HashPassword(HashArgon2id, []byte("pw"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=65536,t=3,p=4$") {
		t.Fatalf("unexpected argon2id parameters in %q", h)
	}
	ph, err := parseHash(h)
	if err != nil {
		t.Fatal(err)
	}
	if len(ph.salt) != argon2SaltLen || len(ph.sum) != argon2KeyLen {
		t.Fatalf("salt %d bytes, hash %d bytes; want %d, %d", len(ph.salt), len(ph.sum), argon2SaltLen, argon2KeyLen)
	}
	h, err = HashPassword(HashBcrypt, []byte("pw"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$2a$10$") {
		t.Fatalf("unexpected bcrypt cost in %q", h)
	}
	if ok, err := CheckPassword(h, []byte("pw")); !ok || err != nil {
		t.Fatalf("default bcrypt hash refuses its password: %v", err)
	}
}

// Mosquitto's formats keep Mosquitto's salt length, so that its broker
// reads what we write.
func TestHashPasswordMosquittoLayout(t *testing.T) {
	for _, alg := range []HashAlgorithm{HashSHA512PBKDF2, HashSHA512} {
		h, err := HashPassword(alg, []byte("pw"), 0)
		if err != nil {
			t.Fatal(err)
		}
		ph, err := parseHash(h)
		if err != nil {
			t.Fatal(err)
		}
		if len(ph.salt) != 12 || len(ph.sum) != 64 {
			t.Fatalf("%s: salt %d bytes, hash %d bytes; want 12, 64", alg, len(ph.salt), len(ph.sum))
		}
		if strings.Count(h, "$") != map[HashAlgorithm]int{HashSHA512PBKDF2: 4, HashSHA512: 3}[alg] {
			t.Fatalf("%s: wrong number of fields", alg)
		}
	}
}

// bcrypt reads 72 bytes of a password: a longer one is refused when
// hashing and never matches when checking, even if its first 72 bytes do.
func TestBcryptLongPassword(t *testing.T) {
	pw72 := []byte(strings.Repeat("a", 72))
	h, err := HashPassword(HashBcrypt, pw72, MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := CheckPassword(h, pw72); !ok {
		t.Fatal("72-byte password refused")
	}
	if ok, _ := CheckPassword(h, append(pw72, 'b')); ok {
		t.Fatal("73-byte password sharing the first 72 bytes accepted")
	}
	if _, err := HashPassword(HashBcrypt, append(pw72, 'b'), MinBcryptCost); err == nil {
		t.Fatal("73-byte password hashed")
	}
}

// hashSecret is a field value that a hash error must never repeat.
const hashSecret = "SECRETsaltSECRETsalt"

func TestCheckPasswordMalformed(t *testing.T) {
	sum := strings.Repeat("A", 86) + "=="           // 64 bytes
	b64salt := "U0VDUkVUc2FsdFNFQ1JFVHNhbHQ"        // hashSecret, unpadded
	b64saltPadded := "U0VDUkVUc2FsdFNFQ1JFVHNhbHQ=" // hashSecret, padded
	argonSum := strings.Repeat("A", 43)
	for _, c := range []struct {
		name, encoded string
		want          error
	}{
		{"empty", "", ErrUnknownHash},
		{"plain text", hashSecret, ErrUnknownHash},
		{"sha-crypt $5$", "$5$" + hashSecret + "$" + sum, ErrUnknownHash},
		{"argon2i", "$argon2i$v=19$m=256,t=2,p=1$" + b64salt + "$" + argonSum, ErrUnknownHash},
		{"argon2d", "$argon2d$v=19$m=256,t=2,p=1$" + b64salt + "$" + argonSum, ErrUnknownHash},
		{"bcrypt $2x$", "$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrUnknownHash},
		{"$6$ no hash", "$6$" + b64saltPadded, ErrMalformedHash},
		{"$6$ empty salt", "$6$$" + sum, ErrMalformedHash},
		{"$6$ short hash", "$6$" + b64saltPadded + "$" + strings.Repeat("A", 84) + "==", ErrMalformedHash},
		{"$6$ long hash", "$6$" + b64saltPadded + "$" + strings.Repeat("A", 88), ErrMalformedHash},
		{"$6$ bad base64", "$6$" + b64saltPadded + "$" + strings.Repeat("*", 86) + "==", ErrMalformedHash},
		{"$6$ extra field", "$6$" + b64saltPadded + "$" + sum + "$x", ErrMalformedHash},
		{"$6$ huge salt", "$6$" + strings.Repeat("QUFB", 100) + "$" + sum, ErrMalformedHash},
		{"$7$ no iterations", "$7$$" + b64saltPadded + "$" + sum, ErrMalformedHash},
		{"$7$ zero iterations", "$7$0$" + b64saltPadded + "$" + sum, ErrMalformedHash},
		{"$7$ negative iterations", "$7$-1$" + b64saltPadded + "$" + sum, ErrMalformedHash},
		{"$7$ leading zero", "$7$0101$" + b64saltPadded + "$" + sum, ErrMalformedHash},
		{"$7$ too many iterations", "$7$500001$" + b64saltPadded + "$" + sum, ErrMalformedHash},
		{"$7$ overflowing iterations", "$7$99999999999999999999$" + b64saltPadded + "$" + sum, ErrMalformedHash},
		{"$7$ missing hash", "$7$101$" + b64saltPadded, ErrMalformedHash},
		{"bcrypt short", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOe", ErrMalformedHash},
		{"bcrypt long", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeWW", ErrMalformedHash},
		{"bcrypt cost 3", "$2a$03$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrMalformedHash},
		{"bcrypt cost 14", "$2a$14$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrMalformedHash},
		{"bcrypt cost 31", "$2a$31$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrMalformedHash},
		{"bcrypt cost letters", "$2a$1a$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrMalformedHash},
		{"bcrypt bad alphabet", "$2a$05$CCCCCCCCCCCCCCCCCCCCC+E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrMalformedHash},
		{"bcrypt no dollar", "$2a$05#CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", ErrMalformedHash},
		{"argon2id v=16", "$argon2id$v=16$m=256,t=2,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id no version", "$argon2id$m=256,t=2,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id order", "$argon2id$v=19$t=2,m=256,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id extra param", "$argon2id$v=19$m=256,t=2,p=1,keyid=x$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id memory", "$argon2id$v=19$m=262145,t=1,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id memory below 8p", "$argon2id$v=19$m=31,t=1,p=4$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id time", "$argon2id$v=19$m=8,t=17,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id work", "$argon2id$v=19$m=262144,t=3,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id zero time", "$argon2id$v=19$m=256,t=0,p=1$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id zero lanes", "$argon2id$v=19$m=256,t=2,p=0$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id lanes", "$argon2id$v=19$m=8192,t=2,p=65$" + b64salt + "$" + argonSum, ErrMalformedHash},
		{"argon2id padded salt", "$argon2id$v=19$m=256,t=2,p=1$" + b64saltPadded + "$" + argonSum, ErrMalformedHash},
		{"argon2id empty salt", "$argon2id$v=19$m=256,t=2,p=1$$" + argonSum, ErrMalformedHash},
		{"argon2id short hash", "$argon2id$v=19$m=256,t=2,p=1$" + b64salt + "$AAA", ErrMalformedHash},
		{"argon2id long hash", "$argon2id$v=19$m=256,t=2,p=1$" + b64salt + "$" + strings.Repeat("A", 400), ErrMalformedHash},
		{"argon2id missing hash", "$argon2id$v=19$m=256,t=2,p=1$" + b64salt, ErrMalformedHash},
	} {
		t.Run(c.name, func(t *testing.T) {
			ok, err := CheckPassword(c.encoded, []byte("pw"))
			if ok || !errors.Is(err, c.want) {
				t.Fatalf("got %v, %v; want false, %v", ok, err, c.want)
			}
			if err != nil && (strings.Contains(err.Error(), hashSecret) || strings.Contains(err.Error(), b64salt) ||
				strings.Contains(err.Error(), "AAAAAAAA") || strings.Contains(err.Error(), "CCCCCCCC")) {
				t.Fatalf("error repeats the hash: %v", err)
			}
		})
	}
}

// Unpadded base64 in Mosquitto's formats is read too.
func TestCheckPasswordUnpaddedMosquitto(t *testing.T) {
	for _, c := range knownHashes[:4] {
		enc := strings.ReplaceAll(c.encoded, "=", "")
		if ok, err := CheckPassword(enc, []byte(c.password)); err != nil || !ok {
			t.Fatalf("%s without padding: got %v, %v", c.name, ok, err)
		}
	}
}

func TestHashPasswordRefuses(t *testing.T) {
	for _, c := range []struct {
		alg        HashAlgorithm
		iterations int
		want       string
	}{
		{"md5", 0, "unknown algorithm"},
		{"", 0, "unknown algorithm"},
		{HashSHA512, 5, "no iteration count"},
		{HashSHA512PBKDF2, -1, "[1, 500000]"},
		{HashSHA512PBKDF2, MaxPBKDF2Iterations + 1, "[1, 500000]"},
		{HashBcrypt, 3, "[4, 13]"},
		{HashBcrypt, 14, "[4, 13]"},
		{HashArgon2id, 9, "[1, 8]"},
		{HashArgon2id, -3, "[1, 8]"},
	} {
		_, err := HashPassword(c.alg, []byte("hunter2"), c.iterations)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("HashPassword(%q, %d): got %v, want an error with %q", c.alg, c.iterations, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error holds the password: %v", err)
		}
		if err2 := ValidHashCost(c.alg, c.iterations); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("ValidHashCost(%q, %d) = %v, HashPassword said %v", c.alg, c.iterations, err2, err)
		}
	}
	for _, alg := range HashAlgorithms {
		if err := ValidHashCost(alg, 0); err != nil {
			t.Errorf("ValidHashCost(%q, 0) = %v", alg, err)
		}
	}
}

func TestParseHashAlgorithm(t *testing.T) {
	for _, a := range HashAlgorithms {
		got, err := ParseHashAlgorithm(string(a))
		if err != nil || got != a {
			t.Errorf("ParseHashAlgorithm(%q) = %q, %v", a, got, err)
		}
	}
	_, err := ParseHashAlgorithm("SHA512")
	if err == nil || !strings.Contains(err.Error(), "sha512-pbkdf2, sha512, bcrypt, argon2id") {
		t.Errorf("ParseHashAlgorithm(SHA512): got %v, want an error listing the algorithms", err)
	}
}

// FuzzCheckPassword feeds arbitrary encodings: CheckPassword must not
// panic, must stay within its cost bounds (an over-cost input is refused
// before any work), and its errors must not repeat the encoding.
func FuzzCheckPassword(f *testing.F) {
	for _, c := range knownHashes {
		if !strings.Contains(c.encoded, "m=65536") { // keep the seeds cheap
			f.Add(c.encoded, c.password)
		}
	}
	f.Add("$7$500001$c2FsdA==$"+strings.Repeat("A", 86)+"==", "pw")
	f.Add("$argon2id$v=19$m=262144,t=3,p=1$c2FsdHNhbHQ$"+strings.Repeat("A", 43), "pw")
	f.Add("$2y$31$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, encoded, password string) {
		h, perr := parseHash(encoded)
		if perr == nil {
			// Cheap enough to fuzz: keep each run under the bounds'
			// worst case by skipping the costly ones, whose bounds
			// are checked above.
			switch {
			case h.kind == kindPBKDF2 && h.iter > 20_000,
				h.kind == kindArgon2id && h.memory*h.iter > 4096,
				h.kind == kindBcrypt && encoded[4:6] > "06":
				return
			}
		}
		ok, err := CheckPassword(encoded, []byte(password))
		if (err == nil) != (perr == nil) {
			t.Fatalf("parseHash said %v, CheckPassword %v", perr, err)
		}
		if err != nil {
			if ok {
				t.Fatal("true with an error")
			}
			if !errors.Is(err, ErrUnknownHash) && !errors.Is(err, ErrMalformedHash) {
				t.Fatalf("error wraps neither sentinel: %v", err)
			}
			// The error texts are fixed; none holds an upper-case
			// letter, '+' or '/', so an 8-byte run of the encoding
			// with one of those cannot be in it unless copied.
			for i := 0; i+8 <= len(encoded); i++ {
				run := encoded[i : i+8]
				if strings.ContainsFunc(run, func(r rune) bool { return unicode.IsUpper(r) || r == '+' || r == '/' }) &&
					strings.Contains(err.Error(), run) {
					t.Fatalf("error %q repeats the encoding", err)
				}
			}
			return
		}
		if h.kind == kindBcrypt && len(password) > bcryptMaxPw && ok {
			t.Fatal("bcrypt accepted a password over 72 bytes")
		}
	})
}

func BenchmarkCheckPassword(b *testing.B) {
	pw := []byte("correct horse battery staple")
	for _, c := range []struct {
		name       string
		alg        HashAlgorithm
		iterations int
	}{
		{"sha512", HashSHA512, 0},
		{"sha512-pbkdf2", HashSHA512PBKDF2, 0},
		{"sha512-pbkdf2-10000", HashSHA512PBKDF2, 10000},
		{"bcrypt", HashBcrypt, 0},
		{"argon2id", HashArgon2id, 0},
	} {
		h, err := HashPassword(c.alg, pw, c.iterations)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("alg="+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ok, err := CheckPassword(h, pw); !ok || err != nil {
					b.Fatal("check failed")
				}
			}
		})
	}
}
