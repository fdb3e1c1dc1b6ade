package auth

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Password hashes.
//
// CheckPassword understands these encodings (the first two are what
// Mosquitto 2.0's mosquitto_passwd writes):
//
//	$7$<iterations>$<salt>$<hash>    PBKDF2-HMAC-SHA512, 64-byte key; salt
//	                                 and hash in standard base64
//	$6$<salt>$<hash>                 SHA-512 over the password then the
//	                                 salt; salt and hash in standard base64
//	$2a$<cost>$<salt+hash>           bcrypt ($2b$ and $2y$ too)
//	$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>
//	                                 argon2id in PHC form; salt and hash in
//	                                 unpadded standard base64
//
// The cost of one check is bounded, so that a hostile password file or
// backend row cannot make a check take seconds or gigabytes: an encoding
// whose parameters exceed these bounds is refused as malformed.
const (
	// MaxPBKDF2Iterations bounds a $7$ hash's iteration count (about
	// 0.35 s of one core at the bound; Mosquitto's default is 101).
	MaxPBKDF2Iterations = 500_000
	// MinBcryptCost and MaxBcryptCost bound a bcrypt hash's cost
	// (about 0.55 s of one core at 13; the usual default is 10).
	MinBcryptCost = bcrypt.MinCost
	MaxBcryptCost = 13
	// MaxArgon2Memory bounds an argon2id hash's memory, in KiB
	// (256 MiB, held by each check in progress).
	MaxArgon2Memory = 256 * 1024
	// MaxArgon2Time bounds an argon2id hash's number of passes.
	MaxArgon2Time = 16
	// MaxArgon2Work bounds an argon2id hash's memory times passes, in
	// KiB: the time one check takes grows with it (512 MiB, under a
	// second of one core at the bound; the default, 64 MiB times 3
	// passes, is 192 MiB).
	MaxArgon2Work = 512 * 1024
	// MaxArgon2Threads bounds an argon2id hash's parallelism.
	MaxArgon2Threads = 64

	maxSaltLen   = 256 // decoded bytes, every format
	maxArgon2Key = 256 // decoded bytes
	minArgon2Key = 4
	bcryptMaxPw  = 72 // bytes bcrypt reads of a password
	sha512Len    = sha512.Size
)

// HashAlgorithm names a password hash format that HashPassword writes.
type HashAlgorithm string

// Hash algorithms.
const (
	// HashSHA512PBKDF2 is Mosquitto 2.0's default: $7$, PBKDF2-HMAC-SHA512
	// with 101 iterations unless told otherwise, 12-byte salt.
	HashSHA512PBKDF2 HashAlgorithm = "sha512-pbkdf2"
	// HashSHA512 is Mosquitto 1.6's format: $6$, one SHA-512 over the
	// password and a 12-byte salt. Fast to check, and so fast to guess:
	// kept for files shared with old brokers.
	HashSHA512 HashAlgorithm = "sha512"
	// HashBcrypt is bcrypt ($2a$), cost 10 unless told otherwise.
	// bcrypt reads at most 72 bytes of a password; longer ones are
	// refused.
	HashBcrypt HashAlgorithm = "bcrypt"
	// HashArgon2id is argon2id in PHC form, 64 MiB, 3 passes unless told
	// otherwise, 4 lanes, 16-byte salt, 32-byte hash.
	HashArgon2id HashAlgorithm = "argon2id"

	// DefaultHashAlgorithm is what `gannet passwd` writes without -H.
	DefaultHashAlgorithm = HashSHA512PBKDF2
)

// HashAlgorithms lists the algorithms HashPassword accepts.
var HashAlgorithms = []HashAlgorithm{HashSHA512PBKDF2, HashSHA512, HashBcrypt, HashArgon2id}

// Defaults of HashPassword.
const (
	defaultPBKDF2Iterations = 101
	defaultArgon2Time       = 3
	defaultArgon2Memory     = 64 * 1024
	defaultArgon2Threads    = 4
	mosquittoSaltLen        = 12
	argon2SaltLen           = 16
	argon2KeyLen            = 32
)

// Errors of CheckPassword and of the sources that call it. Neither ever
// carries any part of the hash or the password.
var (
	// ErrUnknownHash is returned for an encoding whose format is none of
	// those above.
	ErrUnknownHash = errors.New("auth: unknown password hash format")
	// ErrMalformedHash is wrapped by every error about an encoding whose
	// format is known but whose fields do not parse or exceed the bounds.
	ErrMalformedHash = errors.New("auth: malformed password hash")
)

type hashKind uint8

const (
	kindSHA512 hashKind = iota + 1
	kindPBKDF2
	kindBcrypt
	kindArgon2id
)

// passwordHash is a parsed, validated hash: parsed once (at load time for
// a password file) and checked many times. Immutable after parseHash.
type passwordHash struct {
	kind    hashKind
	iter    uint32 // PBKDF2 iterations; argon2 passes
	memory  uint32 // argon2, KiB
	threads uint8  // argon2
	salt    []byte
	sum     []byte // expected digest; bcrypt: the whole encoding
}

// CheckPassword reports whether password matches the encoded hash,
// comparing in constant time. It returns an error, wrapping
// ErrUnknownHash or ErrMalformedHash, only when the encoding is not one it
// understands or its cost parameters exceed the bounds above; the error
// never includes the encoding.
//
// It is CPU work (up to about a second at the bounds): call it off the
// event loops. Safe for concurrent use.
func CheckPassword(encoded string, password []byte) (bool, error) {
	h, err := parseHash(encoded)
	if err != nil {
		return false, err
	}
	return h.check(password), nil
}

func malformed(format, reason string) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformedHash, format, reason)
}

// parseHash parses and validates an encoding. Errors never include it.
func parseHash(encoded string) (*passwordHash, error) {
	switch {
	case strings.HasPrefix(encoded, "$7$"):
		return parseMosquitto(encoded[3:], true)
	case strings.HasPrefix(encoded, "$6$"):
		return parseMosquitto(encoded[3:], false)
	case strings.HasPrefix(encoded, "$2a$"), strings.HasPrefix(encoded, "$2b$"), strings.HasPrefix(encoded, "$2y$"):
		return parseBcrypt(encoded)
	case strings.HasPrefix(encoded, "$argon2id$"):
		return parseArgon2id(encoded[len("$argon2id$"):])
	}
	return nil, ErrUnknownHash
}

// parseMosquitto parses what follows "$7$" (with iterations) or "$6$".
func parseMosquitto(s string, withIterations bool) (*passwordHash, error) {
	format := "$6$"
	h := &passwordHash{kind: kindSHA512}
	if withIterations {
		format = "$7$"
		h.kind = kindPBKDF2
		it, rest, ok := strings.Cut(s, "$")
		if !ok {
			return nil, malformed(format, "missing fields")
		}
		n, err := parseBounded(it, 1, MaxPBKDF2Iterations)
		if err != nil {
			return nil, malformed(format, "iterations "+err.Error())
		}
		h.iter = uint32(n)
		s = rest
	}
	salt, sum, ok := strings.Cut(s, "$")
	if !ok {
		return nil, malformed(format, "missing fields")
	}
	var err error
	if h.salt, err = decodeBase64(salt, maxSaltLen); err != nil || len(h.salt) == 0 {
		return nil, malformed(format, "salt is not base64 of 1 to 256 bytes")
	}
	if h.sum, err = decodeBase64(sum, sha512Len); err != nil || len(h.sum) != sha512Len {
		return nil, malformed(format, "hash is not base64 of 64 bytes")
	}
	return h, nil
}

// decodeBase64 decodes standard base64, padded or not, of at most max
// bytes.
func decodeBase64(s string, max int) ([]byte, error) {
	enc := base64.RawStdEncoding
	if strings.HasSuffix(s, "=") {
		enc = base64.StdEncoding
	}
	if enc.DecodedLen(len(s)) > max+2 {
		return nil, errors.New("too long")
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, errors.New("too long")
	}
	return b, nil
}

// parseBounded parses a decimal integer in [lo, hi] (no sign, no leading
// zeros beyond "0" itself). The error names the bounds, not the value.
func parseBounded(s string, lo, hi int) (int, error) {
	bad := fmt.Errorf("not a number in [%d, %d]", lo, hi)
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, bad
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, bad
	}
	return n, nil
}

// bcrypt's base64 alphabet.
const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func parseBcrypt(s string) (*passwordHash, error) {
	const format = "bcrypt"
	// $2b$10$ + 22 salt + 31 hash.
	if len(s) != 60 || s[6] != '$' {
		return nil, malformed(format, "not 60 characters of $2b$<cost>$<salt and hash>")
	}
	if s[4] < '0' || s[4] > '9' || s[5] < '0' || s[5] > '9' {
		return nil, malformed(format, "cost is not two digits")
	}
	if cost := int(s[4]-'0')*10 + int(s[5]-'0'); cost < MinBcryptCost || cost > MaxBcryptCost {
		return nil, malformed(format, fmt.Sprintf("cost not in [%d, %d]", MinBcryptCost, MaxBcryptCost))
	}
	for i := 7; i < len(s); i++ {
		if strings.IndexByte(bcryptAlphabet, s[i]) < 0 {
			return nil, malformed(format, "salt and hash are not bcrypt base64")
		}
	}
	return &passwordHash{kind: kindBcrypt, sum: []byte(s)}, nil
}

func parseArgon2id(s string) (*passwordHash, error) {
	const format = "argon2id"
	parts := strings.Split(s, "$")
	if len(parts) != 4 {
		return nil, malformed(format, "want 4 fields after $argon2id$")
	}
	if parts[0] != "v=19" {
		return nil, malformed(format, "version is not v=19")
	}
	params := strings.Split(parts[1], ",")
	if len(params) != 3 || !strings.HasPrefix(params[0], "m=") || !strings.HasPrefix(params[1], "t=") || !strings.HasPrefix(params[2], "p=") {
		return nil, malformed(format, "parameters are not m=...,t=...,p=...")
	}
	p, err := parseBounded(params[2][2:], 1, MaxArgon2Threads)
	if err != nil {
		return nil, malformed(format, "p "+err.Error())
	}
	m, err := parseBounded(params[0][2:], 8*p, MaxArgon2Memory)
	if err != nil {
		return nil, malformed(format, "m "+err.Error())
	}
	t, err := parseBounded(params[1][2:], 1, MaxArgon2Time)
	if err != nil {
		return nil, malformed(format, "t "+err.Error())
	}
	if m*t > MaxArgon2Work {
		return nil, malformed(format, fmt.Sprintf("m times t above %d", MaxArgon2Work))
	}
	h := &passwordHash{kind: kindArgon2id, iter: uint32(t), memory: uint32(m), threads: uint8(p)}
	if h.salt, err = decodeRawBase64(parts[2], maxSaltLen); err != nil || len(h.salt) == 0 {
		return nil, malformed(format, "salt is not unpadded base64 of 1 to 256 bytes")
	}
	if h.sum, err = decodeRawBase64(parts[3], maxArgon2Key); err != nil || len(h.sum) < minArgon2Key {
		return nil, malformed(format, "hash is not unpadded base64 of 4 to 256 bytes")
	}
	return h, nil
}

func decodeRawBase64(s string, max int) ([]byte, error) {
	if base64.RawStdEncoding.DecodedLen(len(s)) > max {
		return nil, errors.New("too long")
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// check reports whether password matches h, in constant time for a given
// h and password length.
func (h *passwordHash) check(password []byte) bool {
	switch h.kind {
	case kindSHA512:
		d := sha512.New()
		d.Write(password)
		d.Write(h.salt)
		var sum [sha512Len]byte
		return subtle.ConstantTimeCompare(d.Sum(sum[:0]), h.sum) == 1
	case kindPBKDF2:
		key, err := pbkdf2.Key(sha512.New, string(password), h.salt, int(h.iter), sha512Len)
		return err == nil && subtle.ConstantTimeCompare(key, h.sum) == 1
	case kindBcrypt:
		// bcrypt would silently ignore bytes past the 72nd: refuse
		// rather than accept a password that only shares a prefix.
		if len(password) > bcryptMaxPw {
			return false
		}
		return bcrypt.CompareHashAndPassword(h.sum, password) == nil
	case kindArgon2id:
		key := argon2.IDKey(password, h.salt, h.iter, h.memory, h.threads, uint32(len(h.sum)))
		return subtle.ConstantTimeCompare(key, h.sum) == 1
	}
	return false
}

// HashPassword encodes password with alg and a fresh random salt, in the
// formats CheckPassword reads. iterations is the format's cost: PBKDF2
// iterations for sha512-pbkdf2 (default 101), the cost for bcrypt
// (default 10), the number of passes for argon2id (default 3); 0 means the
// default, and sha512 takes none. A cost that ValidHashCost refuses is
// refused. bcrypt refuses passwords longer than 72 bytes.
//
// Safe for concurrent use. The error never includes the password.
func HashPassword(alg HashAlgorithm, password []byte, iterations int) (string, error) {
	if err := ValidHashCost(alg, iterations); err != nil {
		return "", err
	}
	switch alg {
	case HashSHA512PBKDF2:
		if iterations == 0 {
			iterations = defaultPBKDF2Iterations
		}
		salt, err := randomSalt(mosquittoSaltLen)
		if err != nil {
			return "", err
		}
		key, err := pbkdf2.Key(sha512.New, string(password), salt, iterations, sha512Len)
		if err != nil {
			return "", fmt.Errorf("auth: cannot hash password: %w", err)
		}
		return "$7$" + strconv.Itoa(iterations) + "$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(key), nil
	case HashSHA512:
		salt, err := randomSalt(mosquittoSaltLen)
		if err != nil {
			return "", err
		}
		d := sha512.New()
		d.Write(password)
		d.Write(salt)
		return "$6$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(d.Sum(nil)), nil
	case HashBcrypt:
		if iterations == 0 {
			iterations = bcrypt.DefaultCost
		}
		if len(password) > bcryptMaxPw {
			return "", fmt.Errorf("auth: cannot hash password: %s takes at most %d bytes of password", alg, bcryptMaxPw)
		}
		b, err := bcrypt.GenerateFromPassword(password, iterations)
		if err != nil {
			return "", fmt.Errorf("auth: cannot hash password: %w", err)
		}
		return string(b), nil
	case HashArgon2id:
		if iterations == 0 {
			iterations = defaultArgon2Time
		}
		salt, err := randomSalt(argon2SaltLen)
		if err != nil {
			return "", err
		}
		return encodeArgon2id(password, salt, uint32(iterations), defaultArgon2Memory, defaultArgon2Threads), nil
	}
	panic("BUG: ValidHashCost accepted an unknown algorithm")
}

// encodeArgon2id hashes password with argon2id and returns the PHC
// encoding.
func encodeArgon2id(password, salt []byte, time, memory uint32, threads uint8) string {
	key := argon2.IDKey(password, salt, time, memory, threads, argon2KeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, memory, time, threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// ValidHashCost returns nil when HashPassword accepts iterations for alg
// (see HashPassword; 0 is always the default), and otherwise an error
// naming the accepted range. Safe for concurrent use.
func ValidHashCost(alg HashAlgorithm, iterations int) error {
	lo, hi, what := 0, 0, ""
	switch alg {
	case HashSHA512PBKDF2:
		lo, hi, what = 1, MaxPBKDF2Iterations, "iterations"
	case HashSHA512:
		if iterations != 0 {
			return fmt.Errorf("auth: cannot hash password: %s takes no iteration count", alg)
		}
		return nil
	case HashBcrypt:
		lo, hi, what = MinBcryptCost, MaxBcryptCost, "cost"
	case HashArgon2id:
		lo, hi, what = 1, min(MaxArgon2Time, MaxArgon2Work/defaultArgon2Memory), "passes"
	default:
		return fmt.Errorf("auth: cannot hash password: unknown algorithm %q (want one of %s)", alg, algorithmList())
	}
	if iterations != 0 && (iterations < lo || iterations > hi) {
		return fmt.Errorf("auth: cannot hash password: %s %s must be in [%d, %d]", alg, what, lo, hi)
	}
	return nil
}

// ParseHashAlgorithm returns the HashAlgorithm named s, or an error
// listing the names it knows.
func ParseHashAlgorithm(s string) (HashAlgorithm, error) {
	for _, a := range HashAlgorithms {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("auth: unknown hash algorithm %q (want one of %s)", s, algorithmList())
}

func algorithmList() string {
	var b bytes.Buffer
	for i, a := range HashAlgorithms {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(a))
	}
	return b.String()
}

func randomSalt(n int) ([]byte, error) {
	salt := make([]byte, n)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("auth: cannot make a salt: %w", err)
	}
	return salt, nil
}
