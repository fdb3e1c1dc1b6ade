package interlink

import (
	"bufio"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// MinSecretLen is the shortest cluster secret a node accepts, in bytes.
const MinSecretLen = 16

// tagLen is what sealing adds to a frame's payload.
const tagLen = chacha20poly1305.Overhead

// HKDF info labels of the two directions of a link (doc.go). Do not change:
// both ends of a link derive the same keys from them.
const (
	infoToAcceptor = "gannet interlink 2: dialer to acceptor"
	infoToDialer   = "gannet interlink 2: acceptor to dialer"
)

// errCounterSpent ends a link whose frame counter would wrap (2^64 frames):
// a nonce is never used twice under one key.
var errCounterSpent = errors.New("interlink: frame counter spent; reconnecting")

// linkKeys derives the keys of one link's two directions from the secret
// and both sides' handshake nonces: HKDF-SHA256 with the secret as input
// key material, the dialer's nonce then the acceptor's as salt, and a label
// per direction and both names as info.
func linkKeys(secret []byte, dialerNonce, acceptorNonce [nonceLen]byte, dialer, acceptor string) (toAcceptor, toDialer [chacha20poly1305.KeySize]byte) {
	salt := make([]byte, 0, 2*nonceLen)
	salt = append(append(salt, dialerNonce[:]...), acceptorNonce[:]...)
	prk := hkdf.Extract(sha256.New, secret, salt)
	expand := func(label string, key *[chacha20poly1305.KeySize]byte) {
		info := appendStr(appendStr([]byte(label), dialer), acceptor)
		if _, err := io.ReadFull(hkdf.Expand(sha256.New, prk, info), key[:]); err != nil {
			panic("BUG: hkdf: " + err.Error()) // 32 bytes of SHA-256 HKDF cannot fail
		}
	}
	expand(infoToAcceptor, &toAcceptor)
	expand(infoToDialer, &toDialer)
	return toAcceptor, toDialer
}

// frameCipher seals the frames of one direction of a link, or opens them:
// ChaCha20-Poly1305 under that direction's key, with the frame's number in
// the direction (from 0) as the nonce and the frame header (length and
// type) as associated data. The number is never sent: each end counts, so
// a frame replayed, dropped or moved fails to open. A nil *frameCipher
// is an insecure link's: frames go as they are.
//
// One goroutine at a time uses a frameCipher.
type frameCipher struct {
	aead  cipher.AEAD
	count uint64 // the next frame's number
	nonce [chacha20poly1305.NonceSize]byte
}

func newFrameCipher(key [chacha20poly1305.KeySize]byte) *frameCipher {
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		panic("BUG: chacha20poly1305: " + err.Error()) // the key has the right size
	}
	return &frameCipher{aead: aead}
}

// nextNonce returns the nonce of the next frame and counts it.
func (c *frameCipher) nextNonce() ([]byte, error) {
	if c.count == math.MaxUint64 {
		return nil, errCounterSpent
	}
	binary.BigEndian.PutUint64(c.nonce[4:], c.count)
	c.count++
	return c.nonce[:], nil
}

// finish completes the frame that starts at f[start:] (appendFrame, then
// its payload): it fills in the length and, on a sealed link, encrypts the
// payload in place and appends its tag.
func (c *frameCipher) finish(f []byte, start int) ([]byte, error) {
	if c == nil {
		return finishFrame(f, start), nil
	}
	nonce, err := c.nextNonce()
	if err != nil {
		return f, err
	}
	f = slices.Grow(f, tagLen)
	binary.BigEndian.PutUint32(f[start:], uint32(len(f)-start-4+tagLen))
	hdr := f[start : start+frameHeader]
	body := f[start+frameHeader:]
	out := c.aead.Seal(body[:0], nonce, body, hdr)
	return f[:start+frameHeader+len(out)], nil
}

// open authenticates and decrypts a sealed payload in place; hdr is the
// frame's header as read. A frame that fails closes the link.
func (c *frameCipher) open(hdr, p []byte) ([]byte, error) {
	if len(p) < tagLen {
		return nil, fmt.Errorf("%w: sealed frame of %d bytes, shorter than its tag", errUnauthentic, len(p))
	}
	n := c.count
	nonce, err := c.nextNonce()
	if err != nil {
		return nil, err
	}
	out, err := c.aead.Open(p[:0], nonce, p, hdr)
	if err != nil {
		return nil, fmt.Errorf("%w: frame %d of the link (tampered with, replayed, reordered or not from the peer)", errUnauthentic, n)
	}
	return out, nil
}

// errUnauthentic is a frame that fails to open; it is a bad frame.
var errUnauthentic = fmt.Errorf("%w: frame fails authentication", ErrFrame)

// frameReader reads the frames of one direction of a link after the
// handshake, opening them when the link is sealed.
type frameReader struct {
	r   *bufio.Reader
	max int          // bound of a payload, before sealing
	c   *frameCipher // nil: frames are not sealed
	hdr [frameHeader]byte
	buf []byte
}

// next returns the next frame's type and payload. The payload is valid
// until the next call.
func (fr *frameReader) next() (byte, []byte, error) {
	max := fr.max
	if fr.c != nil {
		max += tagLen
	}
	t, p, buf, err := readFrameHdr(fr.r, &fr.hdr, fr.buf, max)
	fr.buf = buf
	if err != nil || fr.c == nil {
		return t, p, err
	}
	p, err = fr.c.open(fr.hdr[:], p)
	return t, p, err
}
