package codec

// Decode decodes a PUBLISH. A v5 PUBLISH may have an empty topic only when
// it carries a topic alias; resolving the alias is the receiver's job.
func (p *Publish) Decode(h FixedHeader, body []byte, v Version) error {
	p.Dup = h.Flags&0x08 != 0
	p.QoS = h.Flags >> 1 & 0x03
	p.Retain = h.Flags&0x01 != 0
	p.PacketID = 0
	p.Payload = nil
	if p.QoS == 3 {
		p.Props.reset()
		return malformed("MQTT-3.3.1-4", "PUBLISH with QoS 3")
	}
	if p.QoS == 0 && p.Dup {
		p.Props.reset()
		return malformed("MQTT-3.3.1-2", "DUP set on a QoS 0 PUBLISH")
	}
	r := reader{b: body, pkt: "PUBLISH"}
	p.Topic = r.str("topic")
	if r.err == nil && hasWildcard(p.Topic) {
		p.Props.reset()
		return &Error{Code: TopicNameInvalid, Rule: "MQTT-3.3.2-2", Msg: "wildcard in topic name " + quote(p.Topic)}
	}
	if p.QoS > 0 {
		p.PacketID = r.packetID("packet identifier")
	}
	if v == V5 {
		p.Props.decode(&r, maskPublish, true, "PUBLISH")
		if r.err == nil && len(p.Topic) == 0 && !p.Props.Has(PropTopicAlias) {
			return protocolErr("", "empty topic name without a topic alias")
		}
	} else {
		p.Props.reset()
		if r.err == nil && len(p.Topic) == 0 {
			return &Error{Code: TopicNameInvalid, Rule: "MQTT-4.7.3-1", Msg: "empty topic name"}
		}
	}
	if r.err != nil {
		return r.err
	}
	p.Payload = r.b
	return nil
}

func (p *Publish) flags() byte {
	f := p.QoS << 1
	if p.Dup {
		f |= 0x08
	}
	if p.Retain {
		f |= 0x01
	}
	return f
}

func (p *Publish) remaining(v Version) int {
	n := 2 + len(p.Topic) + len(p.Payload)
	if p.QoS > 0 {
		n += 2
	}
	if v == V5 {
		n += p.Props.size(maskPublish)
	}
	return n
}

// Append encodes the PUBLISH.
func (p *Publish) Append(dst []byte, v Version) []byte {
	dst, _ = p.AppendSplit(dst, v)
	return dst
}

// AppendSplit encodes the PUBLISH like Append and also returns the offset in
// the result of the two packet identifier bytes, or -1 for QoS 0. A fan-out
// writes one encoding to many receivers and swaps only those two bytes.
func (p *Publish) AppendSplit(dst []byte, v Version) ([]byte, int) {
	dst, off, _ := p.AppendFrame(dst, v)
	return dst, off
}

// AppendFrame is AppendSplit that also returns aliasOff, the offset of
// the two bytes of the topic alias property's value (-1 without one), so
// that a frame shared by receivers can carry each receiver's own alias.
func (p *Publish) AppendFrame(dst []byte, v Version) (buf []byte, idOff, aliasOff int) {
	dst = appendHeader(dst, PUBLISH, p.flags(), p.remaining(v))
	dst = appendBinary(dst, p.Topic)
	idOff, aliasOff = -1, -1
	if p.QoS > 0 {
		idOff = len(dst)
		dst = appendU16(dst, p.PacketID)
	}
	if v == V5 {
		dst, aliasOff = p.Props.appendMarked(dst, maskPublish, PropTopicAlias)
	}
	return append(dst, p.Payload...), idOff, aliasOff
}

func (p *Publish) Size(v Version) int { return total(p.remaining(v)) }
