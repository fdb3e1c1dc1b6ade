package interlink

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzFrames feeds arbitrary bytes to every decoder of peer input: frame
// reading, HELLO, WELCOME, ACK, batches (plain and compressed with each
// codec) and their records, and the sealed link's reader: the bytes as a
// stream of sealed frames (seeded with frames sealed under the key it
// opens with, so that mutations reach past the tag check), and the bytes
// sealed as a BATCH payload, opened and decoded. None may panic or
// inflate past the bound, and what was sealed must open unchanged.
func FuzzFrames(f *testing.F) {
	h := hello{node: "n1", epoch: 7, lane: 1, compression: CompressS2}
	f.Add(h.append(nil))
	w := welcome{node: "n2"}
	f.Add(w.append(nil))
	f.Add(appendAck(nil, 7, 99))
	recs := appendRecord(appendRecord(nil, 1, true, []byte("reliable")), 2, false, []byte("plain"))
	f.Add(append([]byte{0, 7, 1}, recs...))
	for _, c := range []Compression{CompressS2, CompressZstd} {
		z := newCompressor(c).compress(nil, bytes.Repeat(recs, 20))
		b := append([]byte{batchZipped, 7, 1}, byte(len(recs)*20), byte(len(recs)*20>>7))
		f.Add(append(b, z...))
	}
	// Sealed streams: frames 0, 1, 2... of one direction, as a link sends
	// them after the handshake.
	var sealed []byte
	seal := fuzzCipher()
	for _, fr := range [][]byte{
		appendBytesFrame(nil, frameBatch, append([]byte{0, 7, 1}, recs...)),
		appendAck(nil, 7, 99),
		appendBytesFrame(nil, framePing, make([]byte, 8)),
	} {
		fr, err := seal.finish(fr, 0)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(fr)
		sealed = append(sealed, fr...)
	}
	for _, c := range []Compression{CompressS2, CompressZstd} {
		z := newCompressor(c).compress(nil, bytes.Repeat(recs, 20))
		p := append([]byte{batchZipped, 7, 1}, byte(len(recs)*20)|0x80, byte(len(recs)*20>>7))
		fr, err := seal.finish(appendBytesFrame(nil, frameBatch, append(p, z...)), 0)
		if err != nil {
			f.Fatal(err)
		}
		sealed = append(sealed, fr...)
	}
	f.Add(sealed)
	const max = 1 << 16
	decs := map[Compression]*decompressor{}
	for _, c := range []Compression{CompressNone, CompressS2, CompressZstd} {
		d, err := newDecompressor(c, max)
		if err != nil {
			f.Fatal(err)
		}
		decs[c] = d
	}
	batch := func(t *testing.T, b []byte) {
		for _, d := range decs {
			hdr, data, err := decodeBatch(b, d, max)
			if err != nil {
				continue
			}
			if len(data) > max {
				t.Fatalf("batch inflated to %d bytes, bound %d", len(data), max)
			}
			if hdr.zipped && len(data) != hdr.raw {
				t.Fatalf("inflated %d bytes, header says %d", len(data), hdr.raw)
			}
			_ = parseRecords(data, func(r Record) {
				if r.Kind > maxKindValue {
					t.Fatalf("record kind %d", r.Kind)
				}
			})
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _, _ = readFrame(bufio.NewReader(bytes.NewReader(b)), nil, max)
		_, _ = decodeHello(b)
		_, _ = decodeWelcome(b)
		_, _, _ = decodeAck(b)
		batch(t, b)

		// b as what a peer sends on a sealed link.
		fr := &frameReader{r: bufio.NewReader(bytes.NewReader(b)), max: max, c: fuzzCipher()}
		for {
			typ, p, err := fr.next()
			if err != nil {
				break
			}
			if len(p) > max {
				t.Fatalf("opened a %d-byte payload, bound %d", len(p), max)
			}
			if typ == frameBatch {
				batch(t, p)
			}
			_, _, _ = decodeAck(p)
		}

		// b as a BATCH payload, sealed and opened again.
		if len(b) > max {
			return
		}
		sf, err := fuzzCipher().finish(appendBytesFrame(nil, frameBatch, b), 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(sf) != frameHeader+len(b)+tagLen || bytes.Contains(sf, b) && len(b) >= 16 {
			t.Fatalf("sealed frame of %d bytes for %d; payload in the clear: %v", len(sf), len(b), bytes.Contains(sf, b))
		}
		fr = &frameReader{r: bufio.NewReader(bytes.NewReader(sf)), max: max, c: fuzzCipher()}
		typ, p, err := fr.next()
		if err != nil || typ != frameBatch || !bytes.Equal(p, b) {
			t.Fatalf("sealed batch opened as type %d, %d bytes, %v", typ, len(p), err)
		}
		batch(t, p)
	})
}

// fuzzCipher is one direction of a link with fixed nonces, from frame 0.
func fuzzCipher() *frameCipher {
	var dn, an [nonceLen]byte
	k, _ := linkKeys([]byte("fuzzing secret, fixed"), dn, an, "n1", "n2")
	return newFrameCipher(k)
}
