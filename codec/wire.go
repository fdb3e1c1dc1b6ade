package codec

import (
	"encoding/binary"
	"unicode/utf8"
)

// VarintSize returns the number of bytes the variable byte integer x takes
// on the wire [MQTT-1.5.5]. x must not exceed MaxRemainingLength.
func VarintSize(x int) int {
	switch {
	case x < 1<<7:
		return 1
	case x < 1<<14:
		return 2
	case x < 1<<21:
		return 3
	}
	return 4
}

// AppendVarint appends x as a variable byte integer. x must not exceed
// MaxRemainingLength.
func AppendVarint(dst []byte, x int) []byte {
	for x >= 0x80 {
		dst = append(dst, byte(x)|0x80)
		x >>= 7
	}
	return append(dst, byte(x))
}

// decodeVarint reads a variable byte integer from the front of b. It returns
// ErrIncomplete when b ends inside the integer and a malformed-packet error
// when the integer runs past four bytes [MQTT-1.5.5-1].
func decodeVarint(b []byte) (int, int, error) {
	x := 0
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, ErrIncomplete
		}
		x |= int(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return x, i + 1, nil
		}
	}
	return 0, 0, malformed("MQTT-1.5.5-1", "variable byte integer longer than 4 bytes")
}

func malformed(rule, msg string) *Error {
	return &Error{Code: MalformedPacket, Rule: rule, Msg: msg}
}

func protocolErr(rule, msg string) *Error {
	return &Error{Code: ProtocolError, Rule: rule, Msg: msg}
}

// reader walks a packet body. The first error sticks: later reads return
// zero values, so a decoder checks r.err once at the end of a section.
type reader struct {
	b   []byte
	err error
	pkt string // the packet's name, for error messages
}

// name is what an error message calls field: "PUBLISH topic".
func (r *reader) name(field string) string {
	if r.pkt == "" {
		return field
	}
	return r.pkt + " " + field
}

func (r *reader) fail(e *Error) {
	if r.err == nil {
		r.err = e
	}
	r.b = nil
}

func (r *reader) short(field string) {
	r.fail(malformed("", r.name(field)+" runs past the end of the packet"))
}

func (r *reader) u8(what string) byte {
	if len(r.b) < 1 {
		r.short(what)
		return 0
	}
	x := r.b[0]
	r.b = r.b[1:]
	return x
}

func (r *reader) u16(what string) uint16 {
	if len(r.b) < 2 {
		r.short(what)
		return 0
	}
	x := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return x
}

func (r *reader) u32(what string) uint32 {
	if len(r.b) < 4 {
		r.short(what)
		return 0
	}
	x := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return x
}

func (r *reader) varint(what string) int {
	x, n, err := decodeVarint(r.b)
	if err != nil {
		if err == ErrIncomplete {
			r.short(what)
		} else {
			r.fail(err.(*Error))
		}
		return 0
	}
	r.b = r.b[n:]
	return x
}

// binary reads two-byte-length-prefixed binary data [MQTT-1.5.6]. The result
// aliases the body; it is non-nil even when empty, so that "present but
// empty" differs from "absent".
func (r *reader) binary(what string) []byte {
	n := int(r.u16(what))
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.short(what)
		return nil
	}
	x := r.b[:n:n]
	r.b = r.b[n:]
	return x
}

// str reads a UTF-8 encoded string and checks it [MQTT-1.5.4].
func (r *reader) str(field string) []byte {
	s := r.binary(field)
	if r.err == nil {
		if rule := utf8Rule(s); rule != "" {
			r.fail(utf8Error(rule, r.name(field)))
			return nil
		}
	}
	return s
}

func (r *reader) packetID(field string) uint16 {
	id := r.u16(field)
	if id == 0 && r.err == nil {
		// Packets that carry an identifier need a non-zero one [MQTT-2.2.1-3].
		r.fail(protocolErr("MQTT-2.2.1-3", r.name(field)+" is 0"))
	}
	return id
}

// utf8Rule checks the MQTT string rules and returns the rule s breaks, or
// "": well-formed UTF-8 without surrogates [MQTT-1.5.4-1] and without
// U+0000 [MQTT-1.5.4-2].
func utf8Rule(s []byte) string {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c == 0 {
				return "MQTT-1.5.4-2"
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && n <= 1 {
			return "MQTT-1.5.4-1"
		}
		i += n
	}
	return ""
}

func utf8Error(rule, what string) *Error {
	if rule == "MQTT-1.5.4-2" {
		return malformed(rule, what+" contains U+0000")
	}
	return malformed(rule, what+" is not well-formed UTF-8")
}

// ValidUTF8 reports whether s is a valid MQTT UTF-8 string: well-formed,
// without surrogates or U+0000. A payload with format indicator 1 must pass
// [MQTT-3.3.2-4].
func ValidUTF8(s []byte) bool { return utf8Rule(s) == "" }

func appendU16(dst []byte, x uint16) []byte { return binary.BigEndian.AppendUint16(dst, x) }
func appendU32(dst []byte, x uint32) []byte { return binary.BigEndian.AppendUint32(dst, x) }

func appendBinary(dst, s []byte) []byte {
	dst = appendU16(dst, uint16(len(s)))
	return append(dst, s...)
}
