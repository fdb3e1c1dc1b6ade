package bench

import (
	"bufio"
	"io"

	"github.com/gannetmq/gannet/codec"
)

// ReadPacket reads the next whole MQTT packet from br into *buf, which it
// grows as needed, and returns its fixed header and body; the body lives
// until the next call with the same buf.
func ReadPacket(br *bufio.Reader, buf *[]byte) (codec.FixedHeader, []byte, error) {
	var hdr [5]byte
	n := 0
	for {
		b, err := br.ReadByte()
		if err != nil {
			return codec.FixedHeader{}, nil, err
		}
		hdr[n] = b
		n++
		if (n > 1 && b&0x80 == 0) || n == len(hdr) {
			break
		}
	}
	fh, _, err := codec.DecodeFixedHeader(hdr[:n])
	if err != nil {
		return fh, nil, err
	}
	if cap(*buf) < fh.Remaining {
		*buf = make([]byte, fh.Remaining)
	}
	body := (*buf)[:fh.Remaining]
	if _, err := io.ReadFull(br, body); err != nil {
		return fh, nil, err
	}
	return fh, body, nil
}
