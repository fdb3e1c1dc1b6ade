package codec

import "strconv"

// DecodeFixedHeader reads the fixed header at the front of buf and returns it
// with its length in bytes. It returns ErrIncomplete when buf ends inside the
// header, and an *Error for a reserved packet type, flags the type forbids
// [MQTT-2.1.3-1], QoS 3 [MQTT-3.3.1-4] or a remaining length longer than
// four bytes [MQTT-1.5.5-1]. It does not look at the body: the caller
// checks that Remaining bytes have arrived, and may refuse the size first.
func DecodeFixedHeader(buf []byte) (FixedHeader, int, error) {
	if len(buf) < 1 {
		return FixedHeader{}, 0, ErrIncomplete
	}
	h := FixedHeader{Type: Type(buf[0] >> 4), Flags: buf[0] & 0x0f}
	switch h.Type {
	case 0:
		return h, 0, malformed("MQTT-2.1.2", "reserved packet type 0")
	case PUBLISH:
		if h.Flags&0x06 == 0x06 {
			return h, 0, malformed("MQTT-3.3.1-4", "PUBLISH with QoS 3")
		}
	case PUBREL, SUBSCRIBE, UNSUBSCRIBE:
		if h.Flags != 0x02 {
			return h, 0, malformed("MQTT-2.1.3-1", h.Type.String()+" fixed header flags must be 0010, got "+flagBits(h.Flags))
		}
	default:
		if h.Flags != 0 {
			return h, 0, malformed("MQTT-2.1.3-1", h.Type.String()+" fixed header flags must be 0000, got "+flagBits(h.Flags))
		}
	}
	rem, n, err := decodeVarint(buf[1:])
	if err != nil {
		return h, 0, err
	}
	h.Remaining = rem
	return h, 1 + n, nil
}

func flagBits(f byte) string {
	s := strconv.FormatUint(uint64(f), 2)
	for len(s) < 4 {
		s = "0" + s
	}
	return s
}

// NewPacket returns an empty packet of type t, or nil for an invalid type.
func NewPacket(t Type) Packet {
	switch t {
	case CONNECT:
		return new(Connect)
	case CONNACK:
		return new(Connack)
	case PUBLISH:
		return new(Publish)
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		return &Ack{Kind: t}
	case SUBSCRIBE:
		return new(Subscribe)
	case SUBACK:
		return new(Suback)
	case UNSUBSCRIBE:
		return new(Unsubscribe)
	case UNSUBACK:
		return new(Unsuback)
	case PINGREQ:
		return new(Pingreq)
	case PINGRESP:
		return new(Pingresp)
	case DISCONNECT:
		return new(Disconnect)
	case AUTH:
		return new(Auth)
	}
	return nil
}

// Decode decodes the packet at the front of buf for protocol version v and
// returns it with the number of bytes it took. The packet's fields alias buf
// (see the package comment). It returns ErrIncomplete when buf holds only
// part of the packet, and an *Error when the bytes are malformed or when the
// whole packet would be larger than maxSize (if maxSize > 0), in which case
// the code is PacketTooLarge. Decode allocates the packet struct; a caller on
// a hot path uses DecodeFixedHeader and decodes into packets it keeps.
func Decode(buf []byte, v Version, maxSize int) (Packet, int, error) {
	h, n, err := DecodeFixedHeader(buf)
	if err != nil {
		return nil, 0, err
	}
	size := n + h.Remaining
	if maxSize > 0 && size > maxSize {
		return nil, 0, &Error{Code: PacketTooLarge, Rule: "MQTT-3.2.2-15",
			Msg: "packet of " + strconv.Itoa(size) + " bytes exceeds the maximum of " + strconv.Itoa(maxSize)}
	}
	if len(buf) < size {
		return nil, 0, ErrIncomplete
	}
	p := NewPacket(h.Type)
	if err := p.Decode(h, buf[n:size], v); err != nil {
		return nil, 0, err
	}
	return p, size, nil
}

// appendHeader writes a fixed header.
func appendHeader(dst []byte, t Type, flags byte, remaining int) []byte {
	dst = append(dst, byte(t)<<4|flags)
	return AppendVarint(dst, remaining)
}

func total(remaining int) int { return 1 + VarintSize(remaining) + remaining }

// done fails r if bytes are left over after the last field.
func (r *reader) done(what string) {
	if r.err == nil && len(r.b) > 0 {
		r.fail(malformed("", what+" has "+strconv.Itoa(len(r.b))+" bytes left over after its last field"))
	}
}
