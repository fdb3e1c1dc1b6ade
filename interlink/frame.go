package interlink

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Frame types (doc.go). Do not renumber: exchanged between nodes.
const (
	frameHello   byte = 1
	frameWelcome byte = 2
	frameProof   byte = 3
	frameReject  byte = 4
	frameBatch   byte = 5
	frameAck     byte = 6
	framePing    byte = 7
	framePong    byte = 8
)

const (
	magic        = "GNTL"
	version      = 2 // 2: frames after the handshake are sealed, proofs cover all of HELLO
	nonceLen     = 16
	proofLen     = sha256.Size
	reliableBit  = 0x80
	batchZipped  = 1
	frameHeader  = 5
	maxNodeName  = 128
	maxKindValue = 0x7F
)

// ErrFrame wraps every malformed input from a peer.
var ErrFrame = errors.New("interlink: bad frame")

func frameErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
}

// appendFrame starts a frame of type t in dst; finishFrame fills its
// length once the payload is appended.
func appendFrame(dst []byte, t byte) []byte {
	return append(dst, 0, 0, 0, 0, t)
}

func finishFrame(f []byte, start int) []byte {
	binary.BigEndian.PutUint32(f[start:], uint32(len(f)-start-4))
	return f
}

// readFrame reads one frame into buf (grown as needed, up to max bytes of
// payload) and returns its type and payload. It reads the handshake, which
// is never sealed; frameReader reads what follows.
func readFrame(r *bufio.Reader, buf []byte, max int) (byte, []byte, []byte, error) {
	var h [frameHeader]byte
	return readFrameHdr(r, &h, buf, max)
}

// readFrameHdr is readFrame keeping the frame's header in h.
func readFrameHdr(r *bufio.Reader, h *[frameHeader]byte, buf []byte, max int) (byte, []byte, []byte, error) {
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, buf, err
	}
	n := int(binary.BigEndian.Uint32(h[:4]))
	if n < 1 || n-1 > max {
		return 0, nil, buf, frameErr("frame length %d outside 1..%d", n, max+1)
	}
	n--
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, buf, err
	}
	return h[4], buf, buf, nil
}

// reader walks a frame payload.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = frameErr("bad %s", what)
	}
	r.b = nil
}

func (r *reader) byte1(what string) byte {
	if len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) fixed(n int, what string) []byte {
	if len(r.b) < n {
		r.fail(what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) str(what string, max int) string {
	n := r.uvarint(what)
	if n > uint64(len(r.b)) || n > uint64(max) {
		r.fail(what)
		return ""
	}
	v := string(r.b[:n])
	r.b = r.b[n:]
	return v
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// hello is the dialer's opening.
type hello struct {
	node        string
	epoch       uint64
	lane        uint8
	compression Compression
	nonce       [nonceLen]byte
}

func (h *hello) append(dst []byte) []byte {
	start := len(dst)
	dst = appendFrame(dst, frameHello)
	dst = append(dst, magic...)
	dst = append(dst, version)
	dst = appendStr(dst, h.node)
	dst = binary.BigEndian.AppendUint64(dst, h.epoch)
	dst = append(dst, h.lane, byte(h.compression))
	dst = append(dst, h.nonce[:]...)
	return finishFrame(dst, start)
}

func decodeHello(p []byte) (*hello, error) {
	r := &reader{b: p}
	if m := r.fixed(len(magic), "magic"); r.err == nil && string(m) != magic {
		return nil, frameErr("not an interlink peer (magic %q)", m)
	}
	if v := r.byte1("version"); r.err == nil && v != version {
		return nil, versionErr(v)
	}
	h := &hello{node: r.str("node name", maxNodeName)}
	if e := r.fixed(8, "epoch"); r.err == nil {
		h.epoch = binary.BigEndian.Uint64(e)
	}
	h.lane = r.byte1("lane")
	h.compression = Compression(r.byte1("compression"))
	copy(h.nonce[:], r.fixed(nonceLen, "nonce"))
	if r.err == nil && len(r.b) != 0 {
		r.fail("hello length")
	}
	if r.err == nil && h.node == "" {
		r.fail("node name")
	}
	return h, r.err
}

// welcome is the acceptor's answer.
type welcome struct {
	node  string
	nonce [nonceLen]byte
	proof [proofLen]byte
}

func (w *welcome) append(dst []byte) []byte {
	start := len(dst)
	dst = appendFrame(dst, frameWelcome)
	dst = append(dst, version)
	dst = appendStr(dst, w.node)
	dst = append(dst, w.nonce[:]...)
	dst = append(dst, w.proof[:]...)
	return finishFrame(dst, start)
}

func decodeWelcome(p []byte) (*welcome, error) {
	r := &reader{b: p}
	if v := r.byte1("version"); r.err == nil && v != version {
		return nil, versionErr(v)
	}
	w := &welcome{node: r.str("node name", maxNodeName)}
	copy(w.nonce[:], r.fixed(nonceLen, "nonce"))
	copy(w.proof[:], r.fixed(proofLen, "proof"))
	if r.err == nil && len(r.b) != 0 {
		r.fail("welcome length")
	}
	return w, r.err
}

func versionErr(v byte) error {
	return frameErr("the peer speaks interlink version %d, this node speaks %d: every node of a cluster must run the same version", v, version)
}

// proof binds the secret to the whole HELLO (the dialer's name, nonce,
// run, lane and codec) and to the acceptor's nonce and name, so that
// neither side can replay an answer seen on another link and nothing the
// dialer announced can be changed on the way.
func proof(secret []byte, label string, helloPayload []byte, acceptor string, acceptorNonce [nonceLen]byte) [proofLen]byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(label))
	mac.Write(acceptorNonce[:])
	mac.Write(binary.AppendUvarint(nil, uint64(len(helloPayload))))
	mac.Write(helloPayload)
	mac.Write([]byte(acceptor))
	var out [proofLen]byte
	copy(out[:], mac.Sum(nil))
	return out
}

func appendBytesFrame(dst []byte, t byte, b []byte) []byte {
	start := len(dst)
	dst = appendFrame(dst, t)
	dst = append(dst, b...)
	return finishFrame(dst, start)
}

func appendAck(dst []byte, epoch, seq uint64) []byte {
	start := len(dst)
	dst = appendFrame(dst, frameAck)
	dst = binary.AppendUvarint(dst, epoch)
	dst = binary.AppendUvarint(dst, seq)
	return finishFrame(dst, start)
}

func decodeAck(p []byte) (epoch, seq uint64, err error) {
	r := &reader{b: p}
	epoch = r.uvarint("ack epoch")
	seq = r.uvarint("ack seq")
	if r.err == nil && len(r.b) != 0 {
		r.fail("ack length")
	}
	return epoch, seq, r.err
}

// appendRecord appends one record.
func appendRecord(dst []byte, kind byte, reliable bool, body []byte) []byte {
	if reliable {
		kind |= reliableBit
	}
	dst = append(dst, kind)
	dst = binary.AppendUvarint(dst, uint64(len(body)))
	return append(dst, body...)
}

// Record is one record of a batch as the broker sees it.
type Record struct {
	Kind     byte
	Reliable bool
	// Seq is a reliable record's sequence number in its sender's stream
	// (the Position's epoch and lane); 0 for an unreliable one.
	Seq  uint64
	Body []byte // valid until the handler's Receive returns
}

// compressor compresses batches for one lane.
type compressor struct {
	c    Compression
	zenc *zstd.Encoder
}

func newCompressor(c Compression) *compressor {
	cp := &compressor{c: c}
	if c == CompressZstd {
		cp.zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	}
	return cp
}

func (cp *compressor) compress(dst, src []byte) []byte {
	switch cp.c {
	case CompressS2:
		n := s2.MaxEncodedLen(len(src))
		if cap(dst)-len(dst) < n {
			nd := make([]byte, len(dst), len(dst)+n)
			copy(nd, dst)
			dst = nd
		}
		out := s2.Encode(dst[len(dst):len(dst)+n], src)
		return dst[:len(dst)+len(out)]
	case CompressZstd:
		return cp.zenc.EncodeAll(src, dst)
	}
	return append(dst, src...)
}

// decompressor inflates batches from one link, never past max bytes.
type decompressor struct {
	c    Compression
	zdec *zstd.Decoder
	buf  []byte
}

func newDecompressor(c Compression, max int) (*decompressor, error) {
	d := &decompressor{c: c}
	switch c {
	case CompressNone, CompressS2:
	case CompressZstd:
		var err error
		d.zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(uint64(max)), zstd.WithDecoderMaxWindow(uint64(max)))
		if err != nil {
			return nil, err
		}
	default:
		return nil, frameErr("unknown compression %d", c)
	}
	return d, nil
}

func (d *decompressor) close() {
	if d.zdec != nil {
		d.zdec.Close()
	}
}

func (d *decompressor) decompress(src []byte, raw int) ([]byte, error) {
	switch d.c {
	case CompressS2:
		n, err := s2.DecodedLen(src)
		if err != nil || n != raw {
			return nil, frameErr("s2 batch: length %d, header says %d (%v)", n, raw, err)
		}
		if cap(d.buf) < n {
			d.buf = make([]byte, n)
		}
		out, err := s2.Decode(d.buf[:n], src)
		if err != nil {
			return nil, frameErr("s2 batch: %v", err)
		}
		return out, nil
	case CompressZstd:
		if cap(d.buf) < raw {
			d.buf = make([]byte, 0, raw)
		}
		out, err := d.zdec.DecodeAll(src, d.buf[:0])
		if err != nil || len(out) != raw {
			return nil, frameErr("zstd batch: %d bytes, header says %d (%v)", len(out), raw, err)
		}
		d.buf = out[:0]
		return out, nil
	}
	return nil, frameErr("compressed batch on a link without compression")
}

// batchHeader is the fixed part of a BATCH frame.
type batchHeader struct {
	zipped   bool
	epoch    uint64
	firstSeq uint64
	raw      int
}

// decodeBatch splits a BATCH payload into its header and its records
// (inflated when compressed).
func decodeBatch(p []byte, d *decompressor, max int) (batchHeader, []byte, error) {
	r := &reader{b: p}
	var h batchHeader
	flags := r.byte1("batch flags")
	if flags&^batchZipped != 0 {
		r.fail("batch flags")
	}
	h.zipped = flags&batchZipped != 0
	h.epoch = r.uvarint("batch epoch")
	h.firstSeq = r.uvarint("batch seq")
	if h.zipped {
		raw := r.uvarint("batch raw length")
		if raw > uint64(max) {
			return h, nil, frameErr("batch inflates to %d bytes, over the %d limit", raw, max)
		}
		h.raw = int(raw)
	}
	if r.err != nil {
		return h, nil, r.err
	}
	if !h.zipped {
		return h, r.b, nil
	}
	out, err := d.decompress(r.b, h.raw)
	return h, out, err
}

// parseRecords calls fn for each record of a batch.
func parseRecords(b []byte, fn func(Record)) error {
	r := &reader{b: b}
	for len(r.b) > 0 {
		k := r.byte1("record kind")
		n := r.uvarint("record length")
		if r.err != nil {
			return r.err
		}
		if n > uint64(len(r.b)) {
			return frameErr("record of %d bytes in %d left", n, len(r.b))
		}
		fn(Record{Kind: k &^ reliableBit, Reliable: k&reliableBit != 0, Body: r.b[:n:n]})
		r.b = r.b[n:]
	}
	return nil
}
