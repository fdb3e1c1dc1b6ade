package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// The PROXY protocol (haproxy.org/download/2.9/doc/proxy-protocol.txt)
// puts the client's own address in front of the connection's first bytes,
// so that a broker behind HAProxy or a cloud load balancer logs and
// reports real clients rather than the balancer.

var (
	proxyV1Prefix = []byte("PROXY ")
	proxyV2Sig    = []byte("\r\n\r\n\x00\r\nQUIT\n")
	errIncomplete = errors.New("incomplete PROXY header")
)

const proxyV1Max = 107 // the longest v1 line, CRLF included

// parseProxy reads a PROXY protocol v1 or v2 header at the start of b. It
// returns the header's length and the source address it carries ("" for
// a LOCAL or UNKNOWN connection: a balancer's own health check), or
// errIncomplete when b holds only part of a header.
func parseProxy(b []byte) (int, string, error) {
	switch {
	case len(b) >= len(proxyV2Sig) && bytes.Equal(b[:len(proxyV2Sig)], proxyV2Sig):
		return parseProxyV2(b)
	case len(b) < len(proxyV2Sig) && bytes.HasPrefix(proxyV2Sig, b):
		return 0, "", errIncomplete
	case len(b) >= len(proxyV1Prefix) && bytes.Equal(b[:len(proxyV1Prefix)], proxyV1Prefix):
		return parseProxyV1(b)
	case len(b) < len(proxyV1Prefix) && bytes.HasPrefix(proxyV1Prefix, b):
		return 0, "", errIncomplete
	}
	return 0, "", errors.New("connection does not start with a PROXY protocol header")
}

func parseProxyV1(b []byte) (int, string, error) {
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		if len(b) >= proxyV1Max {
			return 0, "", errors.New("PROXY v1 line longer than 107 bytes")
		}
		return 0, "", errIncomplete
	}
	if end+2 > proxyV1Max {
		return 0, "", errors.New("PROXY v1 line longer than 107 bytes")
	}
	f := bytes.Split(b[len(proxyV1Prefix):end], []byte(" "))
	switch {
	case len(f) >= 1 && string(f[0]) == "UNKNOWN":
		return end + 2, "", nil
	case len(f) != 5 || (string(f[0]) != "TCP4" && string(f[0]) != "TCP6"):
		return 0, "", fmt.Errorf("malformed PROXY v1 line %q", b[:end])
	}
	ip := net.ParseIP(string(f[1]))
	if ip == nil || net.ParseIP(string(f[2])) == nil || (string(f[0]) == "TCP4") != (ip.To4() != nil) {
		return 0, "", fmt.Errorf("malformed PROXY v1 addresses in %q", b[:end])
	}
	sport, err1 := strconv.ParseUint(string(f[3]), 10, 16)
	_, err2 := strconv.ParseUint(string(f[4]), 10, 16)
	if err1 != nil || err2 != nil {
		return 0, "", fmt.Errorf("malformed PROXY v1 ports in %q", b[:end])
	}
	return end + 2, net.JoinHostPort(ip.String(), strconv.Itoa(int(sport))), nil
}

func parseProxyV2(b []byte) (int, string, error) {
	if len(b) < 16 {
		return 0, "", errIncomplete
	}
	verCmd, fam := b[12], b[13]
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if verCmd>>4 != 2 {
		return 0, "", fmt.Errorf("PROXY v2 header with version %d", verCmd>>4)
	}
	if len(b) < 16+n {
		return 0, "", errIncomplete
	}
	body := b[16 : 16+n]
	switch verCmd & 0x0F {
	case 0: // LOCAL: the balancer's own connection
		return 16 + n, "", nil
	case 1: // PROXY
	default:
		return 0, "", fmt.Errorf("PROXY v2 command %d", verCmd&0x0F)
	}
	switch fam >> 4 {
	case 1: // AF_INET
		if len(body) < 12 {
			return 0, "", errors.New("PROXY v2 IPv4 addresses truncated")
		}
		return 16 + n, net.JoinHostPort(net.IP(body[0:4]).String(), strconv.Itoa(int(binary.BigEndian.Uint16(body[8:10])))), nil
	case 2: // AF_INET6
		if len(body) < 36 {
			return 0, "", errors.New("PROXY v2 IPv6 addresses truncated")
		}
		return 16 + n, net.JoinHostPort(net.IP(body[0:16]).String(), strconv.Itoa(int(binary.BigEndian.Uint16(body[32:34])))), nil
	}
	return 16 + n, "", nil // AF_UNSPEC or AF_UNIX: no address to report
}

// PROXY v2 TLVs follow the addresses: a type byte, a 16-bit length, the
// value. A balancer that terminated TLS describes it in a PP2_TYPE_SSL
// TLV: a client byte (flags), a 32-bit verify result (0: the client's
// certificate verified), then sub-TLVs such as the certificate's subject
// CN (HAProxy's send-proxy-v2-ssl-cn).
const (
	pp2TypeSSL        = 0x20
	pp2SubtypeSSLCN   = 0x22
	pp2ClientSSL      = 0x01 // the client spoke TLS
	pp2ClientCertSess = 0x04 // it presented a certificate, in this connection or the session it resumed
	proxyCNMax        = 256  // X.509 bounds a CN to 64 characters; this leaves room for UTF-8
)

// proxyCertCN returns the client certificate CN that the PROXY v2 header
// hdr (as long as parseProxy measured it) carries in its SSL TLV, or ""
// when it carries none or the balancer does not vouch for it: the TLV must
// say the client spoke TLS and presented a certificate that verified. A
// malformed TLV area, or a CN that is not UTF-8 text of at most
// proxyCNMax bytes, is an error. Only a trusted balancer's header may be
// given to it (Config.ProxyProtocolCertCN).
func proxyCertCN(hdr []byte) (string, error) {
	if len(hdr) < 16 || !bytes.Equal(hdr[:len(proxyV2Sig)], proxyV2Sig) || hdr[12]&0x0F != 1 {
		return "", nil // v1 or LOCAL: no TLVs
	}
	tlvs, skip := hdr[16:], 0
	switch hdr[13] >> 4 { // the addresses before the TLVs
	case 1: // AF_INET
		skip = 12
	case 2: // AF_INET6
		skip = 36
	case 3: // AF_UNIX
		skip = 216
	}
	if len(tlvs) < skip {
		return "", errors.New("PROXY v2 addresses truncated")
	}
	tlvs = tlvs[skip:]
	for len(tlvs) > 0 {
		typ, v, rest, err := nextTLV(tlvs)
		if err != nil {
			return "", err
		}
		tlvs = rest
		if typ != pp2TypeSSL {
			continue
		}
		if len(v) < 5 {
			return "", errors.New("PROXY v2 SSL TLV shorter than 5 bytes")
		}
		client, verify := v[0], binary.BigEndian.Uint32(v[1:5])
		var cn []byte
		for sub := v[5:]; len(sub) > 0; {
			st, sv, srest, err := nextTLV(sub)
			if err != nil {
				return "", err
			}
			if st == pp2SubtypeSSLCN {
				cn = sv
			}
			sub = srest
		}
		if client&pp2ClientSSL == 0 || client&pp2ClientCertSess == 0 || verify != 0 || len(cn) == 0 {
			return "", nil
		}
		if len(cn) > proxyCNMax || !utf8.Valid(cn) || bytes.IndexFunc(cn, unicode.IsControl) >= 0 {
			return "", fmt.Errorf("PROXY v2 SSL CN of %d bytes is not text of at most %d bytes", len(cn), proxyCNMax)
		}
		return string(cn), nil
	}
	return "", nil
}

// nextTLV splits the first TLV off b.
func nextTLV(b []byte) (typ byte, v, rest []byte, err error) {
	if len(b) < 3 {
		return 0, nil, nil, errors.New("PROXY v2 TLV truncated")
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if len(b) < 3+n {
		return 0, nil, nil, fmt.Errorf("PROXY v2 TLV of type %#x truncated", b[0])
	}
	return b[0], b[3 : 3+n], b[3+n:], nil
}

// proxyMode is what a connection's first bytes may be.
type proxyMode uint8

const (
	proxyNone     proxyMode = iota // MQTT (or TLS) from the first byte
	proxyRequired                  // a PROXY header, then MQTT
	proxyRefused                   // MQTT; a PROXY header is refused: the peer is not a trusted balancer
	proxyBridge                    // a bridgeToken naming the TLS connection this one carries (tls.go), then MQTT
)

// proxyMode says whether a connection from a must start with a PROXY
// header: with --proxy-protocol-from, exactly when a is in one of its
// ranges (and a header from anyone else is refused, since it would let
// that peer claim any address); with --proxy-protocol alone, always.
func (s *Server) proxyMode(a net.Addr) proxyMode {
	if len(s.cfg.ProxyProtocolFrom) == 0 {
		if s.cfg.ProxyProtocol {
			return proxyRequired
		}
		return proxyNone
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			ip = ip.Unmap()
			for _, p := range s.cfg.ProxyProtocolFrom {
				if p.Contains(ip) {
					return proxyRequired
				}
			}
		}
	}
	return proxyRefused
}

// proxySignature reports whether b starts with a PROXY protocol v1 or v2
// signature, or is too short to tell (unsure).
func proxySignature(b []byte) (yes, unsure bool) {
	for _, sig := range [][]byte{proxyV1Prefix, proxyV2Sig} {
		switch {
		case len(b) >= len(sig) && bytes.Equal(b[:len(sig)], sig):
			return true, false
		case len(b) < len(sig) && bytes.HasPrefix(sig, b):
			unsure = true
		}
	}
	return false, unsure
}
