package codec

import "strconv"

func itoa(i int) string { return strconv.Itoa(i) }

func hex(c ReasonCode) string { return "0x" + strconv.FormatUint(uint64(c), 16) }

// codes is a set of reason codes.
type codes [4]uint64

func codeSet(cs ...ReasonCode) codes {
	var s codes
	for _, c := range cs {
		s[c>>6] |= 1 << (c & 63)
	}
	return s
}

func (s *codes) has(c ReasonCode) bool { return s[c>>6]&(1<<(c&63)) != 0 }

// Reason codes each acknowledgement may carry [MQTT-3.4.2.1, 3.5.2.1,
// 3.6.2.1, 3.7.2.1].
var (
	pubackCodes = codeSet(Success, NoMatchingSubscribers, UnspecifiedError,
		ImplementationSpecificError, NotAuthorized, TopicNameInvalid,
		PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid)
	pubrelCodes = codeSet(Success, PacketIdentifierNotFound)
)

func (p *Ack) allowed() *codes {
	if p.Kind == PUBREL || p.Kind == PUBCOMP {
		return &pubrelCodes
	}
	return &pubackCodes
}

// Decode decodes a PUBACK, PUBREC, PUBREL or PUBCOMP; the kind is taken from
// h. In v5 a body of two bytes means Success without properties
// [MQTT-3.4.2-1].
func (p *Ack) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Ack{Kind: h.Type, Props: p.Props}
	p.Props.reset()
	what := h.Type.String()
	r := reader{b: body, pkt: what}
	p.PacketID = r.packetID("packet identifier")
	if v == V5 && len(r.b) > 0 {
		p.Code = ReasonCode(r.u8("reason code"))
		if !p.allowed().has(p.Code) {
			return protocolErr("", what+" reason code "+hex(p.Code)+" is not allowed")
		}
		if len(r.b) > 0 {
			p.Props.decode(&r, maskAck, false, what)
		}
	}
	r.done(what)
	return r.err
}

func (p *Ack) remaining(v Version) int {
	if v != V5 || (p.Code == Success && p.Props.empty(maskAck)) {
		return 2
	}
	if p.Props.empty(maskAck) {
		return 3
	}
	return 3 + p.Props.size(maskAck)
}

func (p *Ack) Append(dst []byte, v Version) []byte {
	var flags byte
	if p.Kind == PUBREL {
		flags = 0x02
	}
	n := p.remaining(v)
	dst = appendHeader(dst, p.Kind, flags, n)
	dst = appendU16(dst, p.PacketID)
	if n > 2 {
		dst = append(dst, byte(p.Code))
	}
	if n > 3 {
		dst = p.Props.appendTo(dst, maskAck)
	}
	return dst
}

func (p *Ack) Size(v Version) int { return total(p.remaining(v)) }

// Decode of PINGREQ: the body must be empty.
func (*Pingreq) Decode(h FixedHeader, body []byte, _ Version) error {
	return emptyBody(h, body)
}

func (*Pingreq) Append(dst []byte, _ Version) []byte { return append(dst, byte(PINGREQ)<<4, 0) }
func (*Pingreq) Size(Version) int                    { return 2 }

// Decode of PINGRESP: the body must be empty.
func (*Pingresp) Decode(h FixedHeader, body []byte, _ Version) error {
	return emptyBody(h, body)
}

func (*Pingresp) Append(dst []byte, _ Version) []byte { return append(dst, byte(PINGRESP)<<4, 0) }
func (*Pingresp) Size(Version) int                    { return 2 }

func emptyBody(h FixedHeader, body []byte) error {
	if len(body) != 0 {
		return malformed("", h.Type.String()+" with a body of "+itoa(len(body))+" bytes")
	}
	return nil
}

// disconnectCodes are the reason codes of a v5 DISCONNECT [MQTT-3.14.2.1].
var disconnectCodes = codeSet(NormalDisconnection, DisconnectWithWill, UnspecifiedError,
	MalformedPacket, ProtocolError, ImplementationSpecificError, NotAuthorized,
	ServerBusy, ServerShuttingDown, KeepAliveTimeout, SessionTakenOver,
	TopicFilterInvalid, TopicNameInvalid, ReceiveMaximumExceeded, TopicAliasInvalid,
	PacketTooLarge, MessageRateTooHigh, QuotaExceeded, AdministrativeAction,
	PayloadFormatInvalid, RetainNotSupported, QoSNotSupported, UseAnotherServer,
	ServerMoved, SharedSubscriptionsNotSupported, ConnectionRateExceeded,
	MaximumConnectTime, SubscriptionIdentifiersNotSupported,
	WildcardSubscriptionsNotSupported)

// Decode decodes a DISCONNECT. In 3.x the body is empty; in v5 an empty
// body means Normal disconnection [MQTT-3.14.2.1].
func (p *Disconnect) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Disconnect{Props: p.Props}
	p.Props.reset()
	if v != V5 {
		return emptyBody(h, body)
	}
	r := reader{b: body, pkt: "DISCONNECT"}
	if len(r.b) > 0 {
		p.Code = ReasonCode(r.u8("reason code"))
		if !disconnectCodes.has(p.Code) {
			return protocolErr("", "DISCONNECT reason code "+hex(p.Code)+" is not defined")
		}
	}
	if len(r.b) > 0 {
		p.Props.decode(&r, maskDisconnect, false, "DISCONNECT")
	}
	r.done("DISCONNECT")
	return r.err
}

func (p *Disconnect) remaining(v Version) int {
	switch {
	case v != V5:
		return 0
	case !p.Props.empty(maskDisconnect):
		return 1 + p.Props.size(maskDisconnect)
	case p.Code != NormalDisconnection:
		return 1
	}
	return 0
}

func (p *Disconnect) Append(dst []byte, v Version) []byte {
	n := p.remaining(v)
	dst = appendHeader(dst, DISCONNECT, 0, n)
	if n > 0 {
		dst = append(dst, byte(p.Code))
	}
	if n > 1 {
		dst = p.Props.appendTo(dst, maskDisconnect)
	}
	return dst
}

func (p *Disconnect) Size(v Version) int { return total(p.remaining(v)) }

var authCodes = codeSet(Success, ContinueAuthentication, ReAuthenticate)

// Decode decodes an AUTH packet, which exists only in v5 [MQTT-3.15]. An
// empty body means Success without properties.
func (p *Auth) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Auth{Props: p.Props}
	p.Props.reset()
	if v != V5 {
		return malformed("", "AUTH before MQTT 5")
	}
	r := reader{b: body, pkt: "AUTH"}
	if len(r.b) > 0 {
		p.Code = ReasonCode(r.u8("reason code"))
		if !authCodes.has(p.Code) {
			return protocolErr("", "AUTH reason code "+hex(p.Code)+" is not defined")
		}
		p.Props.decode(&r, maskAuth, false, "AUTH")
	}
	r.done("AUTH")
	return r.err
}

func (p *Auth) remaining() int {
	if p.Code == Success && p.Props.empty(maskAuth) {
		return 0
	}
	return 1 + p.Props.size(maskAuth)
}

// Append encodes an AUTH packet; it is written in v5 form whatever v is.
func (p *Auth) Append(dst []byte, _ Version) []byte {
	n := p.remaining()
	dst = appendHeader(dst, AUTH, 0, n)
	if n > 0 {
		dst = append(dst, byte(p.Code))
		dst = p.Props.appendTo(dst, maskAuth)
	}
	return dst
}

func (p *Auth) Size(Version) int { return total(p.remaining()) }
