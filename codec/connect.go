package codec

import "bytes"

var (
	nameMQTT   = []byte("MQTT")
	nameMQIsdp = []byte("MQIsdp")
)

// Decode decodes a CONNECT body. The protocol level comes from the packet,
// and is stored in ProtocolVersion before anything after it is checked, so
// a caller can answer a broken v5 CONNECT in v5 form.
func (p *Connect) Decode(h FixedHeader, body []byte, _ Version) error {
	*p = Connect{Props: p.Props, WillProps: p.WillProps}
	p.Props.reset()
	p.WillProps.reset()
	r := reader{b: body, pkt: "CONNECT"}
	p.ProtocolName = r.str("protocol name")
	p.ProtocolVersion = Version(r.u8("protocol level"))
	if r.err != nil {
		return r.err
	}
	switch {
	case p.ProtocolVersion == V31 && bytes.Equal(p.ProtocolName, nameMQIsdp),
		(p.ProtocolVersion == V311 || p.ProtocolVersion == V5) && bytes.Equal(p.ProtocolName, nameMQTT):
	case p.ProtocolVersion < V31 || p.ProtocolVersion > V5:
		return &Error{Code: UnsupportedProtocolVersion, Rule: "MQTT-3.1.2-2",
			Msg: "protocol level " + itoa(int(p.ProtocolVersion)) + " is not supported"}
	default:
		return &Error{Code: UnsupportedProtocolVersion, Rule: "MQTT-3.1.2-1",
			Msg: "protocol name " + quote(p.ProtocolName) + " does not match level " + itoa(int(p.ProtocolVersion))}
	}
	v5 := p.ProtocolVersion == V5
	flags := r.u8("flags")
	if flags&0x01 != 0 {
		return malformed("MQTT-3.1.2-3", "CONNECT reserved flag is set")
	}
	p.CleanStart = flags&0x02 != 0
	p.WillFlag = flags&0x04 != 0
	p.WillQoS = flags >> 3 & 0x03
	p.WillRetain = flags&0x20 != 0
	p.PasswordFlag = flags&0x40 != 0
	p.UsernameFlag = flags&0x80 != 0
	switch {
	case p.WillQoS == 3:
		return malformed("MQTT-3.1.2-12", "will QoS 3")
	case !p.WillFlag && p.WillQoS != 0:
		return malformed("MQTT-3.1.2-11", "will QoS set without a will")
	case !p.WillFlag && p.WillRetain:
		return malformed("MQTT-3.1.2-13", "will retain set without a will")
	case !v5 && p.PasswordFlag && !p.UsernameFlag:
		return malformed("MQTT-3.1.2-22", "password without a user name")
	}
	p.KeepAlive = r.u16("keep alive")
	if v5 {
		p.Props.decode(&r, maskConnect, false, "CONNECT")
	}
	p.ClientID = r.str("client identifier")
	if p.WillFlag {
		if v5 {
			p.WillProps.decode(&r, maskWill, false, "will")
		}
		p.WillTopic = r.str("will topic")
		p.WillPayload = r.binary("will payload")
	}
	if p.UsernameFlag {
		p.Username = r.str("user name")
	}
	if p.PasswordFlag {
		p.Password = r.binary("password")
	}
	r.done("CONNECT")
	return r.err
}

func (p *Connect) flags() byte {
	var f byte
	if p.CleanStart {
		f |= 0x02
	}
	if p.WillFlag {
		f |= 0x04 | p.WillQoS<<3
		if p.WillRetain {
			f |= 0x20
		}
	}
	if p.PasswordFlag {
		f |= 0x40
	}
	if p.UsernameFlag {
		f |= 0x80
	}
	return f
}

func (p *Connect) remaining() int {
	n := 2 + len(p.ProtocolName) + 1 + 1 + 2 + 2 + len(p.ClientID)
	v5 := p.ProtocolVersion == V5
	if v5 {
		n += p.Props.size(maskConnect)
	}
	if p.WillFlag {
		if v5 {
			n += p.WillProps.size(maskWill)
		}
		n += 4 + len(p.WillTopic) + len(p.WillPayload)
	}
	if p.UsernameFlag {
		n += 2 + len(p.Username)
	}
	if p.PasswordFlag {
		n += 2 + len(p.Password)
	}
	return n
}

// Append encodes the CONNECT at level ProtocolVersion; v is ignored.
func (p *Connect) Append(dst []byte, _ Version) []byte {
	dst = appendHeader(dst, CONNECT, 0, p.remaining())
	dst = appendBinary(dst, p.ProtocolName)
	dst = append(dst, byte(p.ProtocolVersion), p.flags())
	dst = appendU16(dst, p.KeepAlive)
	v5 := p.ProtocolVersion == V5
	if v5 {
		dst = p.Props.appendTo(dst, maskConnect)
	}
	dst = appendBinary(dst, p.ClientID)
	if p.WillFlag {
		if v5 {
			dst = p.WillProps.appendTo(dst, maskWill)
		}
		dst = appendBinary(dst, p.WillTopic)
		dst = appendBinary(dst, p.WillPayload)
	}
	if p.UsernameFlag {
		dst = appendBinary(dst, p.Username)
	}
	if p.PasswordFlag {
		dst = appendBinary(dst, p.Password)
	}
	return dst
}

// Size is the encoded length; v is ignored.
func (p *Connect) Size(Version) int { return total(p.remaining()) }

// connackCodes are the reason codes a v5 CONNACK may carry [MQTT-3.2.2.2].
var connackCodes = codeSet(Success, UnspecifiedError, MalformedPacket, ProtocolError,
	ImplementationSpecificError, UnsupportedProtocolVersion, ClientIdentifierNotValid,
	BadUserNameOrPassword, NotAuthorized, ServerUnavailable, ServerBusy, Banned,
	BadAuthenticationMethod, TopicNameInvalid, PacketTooLarge, QuotaExceeded,
	PayloadFormatInvalid, RetainNotSupported, QoSNotSupported, UseAnotherServer,
	ServerMoved, ConnectionRateExceeded)

func (p *Connack) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Connack{Props: p.Props}
	p.Props.reset()
	r := reader{b: body, pkt: "CONNACK"}
	flags := r.u8("flags")
	switch {
	case v == V31:
		// MQTT 3.1 has no session present flag: the byte is not used.
	case flags&0xfe != 0:
		return malformed("MQTT-3.2.2-1", "CONNACK reserved flags are set")
	default:
		p.SessionPresent = flags&1 != 0
	}
	p.Code = ReasonCode(r.u8("code"))
	if r.err != nil {
		return r.err
	}
	if v == V5 {
		if !connackCodes.has(p.Code) {
			return protocolErr("", "CONNACK reason code "+hex(p.Code)+" is not defined")
		}
		if len(r.b) > 0 {
			p.Props.decode(&r, maskConnack, false, "CONNACK")
		}
	} else if p.Code > V3NotAuthorized {
		return protocolErr("", "CONNACK return code "+hex(p.Code)+" is not defined")
	}
	r.done("CONNACK")
	return r.err
}

func (p *Connack) remaining(v Version) int {
	if v == V5 {
		return 2 + p.Props.size(maskConnack)
	}
	return 2
}

func (p *Connack) Append(dst []byte, v Version) []byte {
	dst = appendHeader(dst, CONNACK, 0, p.remaining(v))
	var f byte
	if p.SessionPresent && v != V31 {
		// MQTT 3.1 has no session present flag: the byte is reserved.
		f = 1
	}
	dst = append(dst, f, byte(p.Code))
	if v == V5 {
		dst = p.Props.appendTo(dst, maskConnack)
	}
	return dst
}

func (p *Connack) Size(v Version) int { return total(p.remaining(v)) }
