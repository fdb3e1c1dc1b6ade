// Package codec decodes and encodes MQTT 3.1, 3.1.1 and 5.0 control packets.
//
// Decoding is zero-copy. DecodeFixedHeader reads the fixed header; the
// packet's Decode method then parses the body, storing sub-slices of it in
// the packet's fields. Those slices are valid for exactly as long as the
// caller leaves the body's bytes unchanged: a server that reads from a
// reused buffer must copy what it keeps before the buffer is reused. A
// struct kept by the caller and decoded into again reuses its slices'
// capacity, so steady-state decoding allocates nothing.
//
// Decoders tell two failures apart: ErrIncomplete means the buffer holds only
// part of a packet (read more and try again), while an *Error means the bytes
// break the protocol; its Code is the reason code to send before closing
// the connection and its Rule names the normative statement broken.
//
// Encoders append to a caller's []byte and never fail: they assume a packet
// that passes validation. Size reports the encoded length up front, so a
// caller can honour a peer's maximum packet size before encoding.
package codec
