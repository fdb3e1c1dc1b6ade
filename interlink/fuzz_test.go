package interlink

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzFrames feeds arbitrary bytes to every decoder of peer input: frame
// reading, HELLO, WELCOME, ACK, batches (plain and compressed with each
// codec) and their records. None may panic or inflate past the bound.
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
	const max = 1 << 16
	decs := map[Compression]*decompressor{}
	for _, c := range []Compression{CompressNone, CompressS2, CompressZstd} {
		d, err := newDecompressor(c, max)
		if err != nil {
			f.Fatal(err)
		}
		decs[c] = d
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _, _ = readFrame(bufio.NewReader(bytes.NewReader(b)), nil, max)
		_, _ = decodeHello(b)
		_, _ = decodeWelcome(b)
		_, _, _ = decodeAck(b)
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
	})
}
