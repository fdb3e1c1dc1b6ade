package codec

// Decode decodes a SUBSCRIBE. Each filter is checked for UTF-8 only: a
// filter with misplaced wildcards is refused per filter in the SUBACK (see
// ValidateTopicFilter), not by failing the whole packet.
func (p *Subscribe) Decode(h FixedHeader, body []byte, v Version) error {
	return p.DecodeAtMost(h, body, v, 0)
}

// DecodeAtMost decodes a SUBSCRIBE as Decode does, but fails with
// QuotaExceeded, before decoding further, at the first topic filter past
// max (0: no bound): a receiver that bounds what one client may hold need
// not decode, nor keep the slice of, a packet listing far more.
func (p *Subscribe) DecodeAtMost(h FixedHeader, body []byte, v Version, max int) error {
	*p = Subscribe{Props: p.Props, Subs: p.Subs[:0]}
	p.Props.reset()
	r := reader{b: body, pkt: "SUBSCRIBE"}
	p.PacketID = r.packetID("packet identifier")
	if v == V5 {
		p.Props.decode(&r, maskSubscribe, false, "SUBSCRIBE")
	}
	if r.err != nil {
		return r.err
	}
	if len(r.b) == 0 {
		return protocolErr("MQTT-3.8.3-3", "SUBSCRIBE without a topic filter")
	}
	for len(r.b) > 0 {
		if max > 0 && len(p.Subs) == max {
			return &Error{Code: QuotaExceeded, Msg: "SUBSCRIBE lists more than " + itoa(max) + " topic filters"}
		}
		var s Subscription
		s.Filter = r.str("topic filter")
		o := r.u8("options")
		if r.err != nil {
			return r.err
		}
		s.QoS = o & 0x03
		if v == V5 {
			if o&0xc0 != 0 {
				return malformed("MQTT-3.8.3-5", "SUBSCRIBE option reserved bits are set")
			}
			s.NoLocal = o&0x04 != 0
			s.RetainAsPublished = o&0x08 != 0
			s.RetainHandling = o >> 4 & 0x03
			if s.RetainHandling == 3 {
				return protocolErr("", "SUBSCRIBE retain handling 3")
			}
			if s.NoLocal {
				if _, _, shared := SplitShared(s.Filter); shared {
					return protocolErr("MQTT-3.8.3-4", "no local on a shared subscription")
				}
			}
		} else if o&0xfc != 0 {
			return malformed("MQTT-3.8.3-4", "SUBSCRIBE option reserved bits are set")
		}
		if s.QoS == 3 {
			return malformed("MQTT-3.8.3-4", "SUBSCRIBE with QoS 3")
		}
		p.Subs = append(p.Subs, s)
	}
	return nil
}

func (s *Subscription) options(v Version) byte {
	o := s.QoS
	if v == V5 {
		if s.NoLocal {
			o |= 0x04
		}
		if s.RetainAsPublished {
			o |= 0x08
		}
		o |= s.RetainHandling << 4
	}
	return o
}

func (p *Subscribe) remaining(v Version) int {
	n := 2
	if v == V5 {
		n += p.Props.size(maskSubscribe)
	}
	for i := range p.Subs {
		n += 3 + len(p.Subs[i].Filter)
	}
	return n
}

func (p *Subscribe) Append(dst []byte, v Version) []byte {
	dst = appendHeader(dst, SUBSCRIBE, 0x02, p.remaining(v))
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		dst = p.Props.appendTo(dst, maskSubscribe)
	}
	for i := range p.Subs {
		dst = appendBinary(dst, p.Subs[i].Filter)
		dst = append(dst, p.Subs[i].options(v))
	}
	return dst
}

func (p *Subscribe) Size(v Version) int { return total(p.remaining(v)) }

var (
	subackCodes = codeSet(GrantedQoS0, GrantedQoS1, GrantedQoS2, UnspecifiedError,
		ImplementationSpecificError, NotAuthorized, TopicFilterInvalid,
		PacketIdentifierInUse, QuotaExceeded, SharedSubscriptionsNotSupported,
		SubscriptionIdentifiersNotSupported, WildcardSubscriptionsNotSupported)
	subackCodesV3 = codeSet(GrantedQoS0, GrantedQoS1, GrantedQoS2, V3SubackFailure)
	unsubackCodes = codeSet(Success, NoSubscriptionExisted, UnspecifiedError,
		ImplementationSpecificError, NotAuthorized, TopicFilterInvalid, PacketIdentifierInUse)
)

// decodeCodes reads one reason code per remaining byte, at least one.
func decodeCodes(r *reader, dst []ReasonCode, allowed *codes, what string) ([]ReasonCode, error) {
	if r.err != nil {
		return dst, r.err
	}
	if len(r.b) == 0 {
		return dst, protocolErr("", what+" without a reason code")
	}
	for _, b := range r.b {
		c := ReasonCode(b)
		if !allowed.has(c) {
			return dst, protocolErr("", what+" reason code "+hex(c)+" is not allowed")
		}
		dst = append(dst, c)
	}
	return dst, nil
}

func (p *Suback) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Suback{Props: p.Props, Codes: p.Codes[:0]}
	p.Props.reset()
	r := reader{b: body, pkt: "SUBACK"}
	p.PacketID = r.packetID("packet identifier")
	allowed := &subackCodesV3
	if v == V5 {
		p.Props.decode(&r, maskAck, false, "SUBACK")
		allowed = &subackCodes
	}
	var err error
	p.Codes, err = decodeCodes(&r, p.Codes, allowed, "SUBACK")
	return err
}

func (p *Suback) remaining(v Version) int {
	n := 2 + len(p.Codes)
	if v == V5 {
		n += p.Props.size(maskAck)
	}
	return n
}

func (p *Suback) Append(dst []byte, v Version) []byte {
	dst = appendHeader(dst, SUBACK, 0, p.remaining(v))
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		dst = p.Props.appendTo(dst, maskAck)
	}
	for _, c := range p.Codes {
		dst = append(dst, byte(c))
	}
	return dst
}

func (p *Suback) Size(v Version) int { return total(p.remaining(v)) }

func (p *Unsubscribe) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Unsubscribe{Props: p.Props, Filters: p.Filters[:0]}
	p.Props.reset()
	r := reader{b: body, pkt: "UNSUBSCRIBE"}
	p.PacketID = r.packetID("packet identifier")
	if v == V5 {
		p.Props.decode(&r, maskUnsubscribe, false, "UNSUBSCRIBE")
	}
	if r.err != nil {
		return r.err
	}
	if len(r.b) == 0 {
		return protocolErr("MQTT-3.10.3-2", "UNSUBSCRIBE without a topic filter")
	}
	for len(r.b) > 0 {
		f := r.str("topic filter")
		if r.err != nil {
			return r.err
		}
		p.Filters = append(p.Filters, f)
	}
	return nil
}

func (p *Unsubscribe) remaining(v Version) int {
	n := 2
	if v == V5 {
		n += p.Props.size(maskUnsubscribe)
	}
	for _, f := range p.Filters {
		n += 2 + len(f)
	}
	return n
}

func (p *Unsubscribe) Append(dst []byte, v Version) []byte {
	dst = appendHeader(dst, UNSUBSCRIBE, 0x02, p.remaining(v))
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		dst = p.Props.appendTo(dst, maskUnsubscribe)
	}
	for _, f := range p.Filters {
		dst = appendBinary(dst, f)
	}
	return dst
}

func (p *Unsubscribe) Size(v Version) int { return total(p.remaining(v)) }

// Decode decodes an UNSUBACK; in 3.x it holds only the packet identifier.
func (p *Unsuback) Decode(h FixedHeader, body []byte, v Version) error {
	*p = Unsuback{Props: p.Props, Codes: p.Codes[:0]}
	p.Props.reset()
	r := reader{b: body, pkt: "UNSUBACK"}
	p.PacketID = r.packetID("packet identifier")
	if v != V5 {
		r.done("UNSUBACK")
		return r.err
	}
	p.Props.decode(&r, maskAck, false, "UNSUBACK")
	var err error
	p.Codes, err = decodeCodes(&r, p.Codes, &unsubackCodes, "UNSUBACK")
	return err
}

func (p *Unsuback) remaining(v Version) int {
	if v != V5 {
		return 2
	}
	return 2 + p.Props.size(maskAck) + len(p.Codes)
}

func (p *Unsuback) Append(dst []byte, v Version) []byte {
	dst = appendHeader(dst, UNSUBACK, 0, p.remaining(v))
	dst = appendU16(dst, p.PacketID)
	if v == V5 {
		dst = p.Props.appendTo(dst, maskAck)
		for _, c := range p.Codes {
			dst = append(dst, byte(c))
		}
	}
	return dst
}

func (p *Unsuback) Size(v Version) int { return total(p.remaining(v)) }
