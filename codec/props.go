package codec

import (
	"math/bits"
	"strconv"
)

// Which properties each packet may carry [MQTT-2.2.2.2]. Anything else in a
// property list is a malformed packet.
const (
	maskConnect = 1<<PropSessionExpiry | 1<<PropAuthMethod | 1<<PropAuthData |
		1<<PropRequestProblemInfo | 1<<PropRequestResponseInfo | 1<<PropReceiveMaximum |
		1<<PropTopicAliasMaximum | 1<<PropUser | 1<<PropMaximumPacketSize
	maskWill = 1<<PropPayloadFormat | 1<<PropMessageExpiry | 1<<PropContentType |
		1<<PropResponseTopic | 1<<PropCorrelationData | 1<<PropWillDelay | 1<<PropUser
	maskConnack = 1<<PropSessionExpiry | 1<<PropAssignedClientID | 1<<PropServerKeepAlive |
		1<<PropAuthMethod | 1<<PropAuthData | 1<<PropResponseInfo | 1<<PropServerReference |
		1<<PropReasonString | 1<<PropReceiveMaximum | 1<<PropTopicAliasMaximum |
		1<<PropMaximumQoS | 1<<PropRetainAvailable | 1<<PropUser | 1<<PropMaximumPacketSize |
		1<<PropWildcardSubAvailable | 1<<PropSubIDAvailable | 1<<PropSharedSubAvailable
	maskPublish = 1<<PropPayloadFormat | 1<<PropMessageExpiry | 1<<PropContentType |
		1<<PropResponseTopic | 1<<PropCorrelationData | 1<<PropSubscriptionID |
		1<<PropTopicAlias | 1<<PropUser
	maskAck         = 1<<PropReasonString | 1<<PropUser
	maskSubscribe   = 1<<PropSubscriptionID | 1<<PropUser
	maskUnsubscribe = 1 << PropUser
	maskDisconnect  = 1<<PropSessionExpiry | 1<<PropServerReference | 1<<PropReasonString | 1<<PropUser
	maskAuth        = 1<<PropAuthMethod | 1<<PropAuthData | 1<<PropReasonString | 1<<PropUser
)

// MaxSubscriptionID is the largest subscription identifier, the largest
// variable byte integer [MQTT-3.8.2.1.2].
const MaxSubscriptionID = MaxRemainingLength

type propKind byte

const (
	kindNone propKind = iota
	kindByte
	kindU16
	kindU32
	kindVarint
	kindString
	kindBinary
	kindPair
)

var propKinds = [64]propKind{
	PropPayloadFormat: kindByte, PropMessageExpiry: kindU32, PropContentType: kindString,
	PropResponseTopic: kindString, PropCorrelationData: kindBinary, PropSubscriptionID: kindVarint,
	PropSessionExpiry: kindU32, PropAssignedClientID: kindString, PropServerKeepAlive: kindU16,
	PropAuthMethod: kindString, PropAuthData: kindBinary, PropRequestProblemInfo: kindByte,
	PropWillDelay: kindU32, PropRequestResponseInfo: kindByte, PropResponseInfo: kindString,
	PropServerReference: kindString, PropReasonString: kindString, PropReceiveMaximum: kindU16,
	PropTopicAliasMaximum: kindU16, PropTopicAlias: kindU16, PropMaximumQoS: kindByte,
	PropRetainAvailable: kindByte, PropUser: kindPair, PropMaximumPacketSize: kindU32,
	PropWildcardSubAvailable: kindByte, PropSubIDAvailable: kindByte, PropSharedSubAvailable: kindByte,
}

// reset empties p, keeping the capacity of its repeatable slices.
func (p *Properties) reset() {
	*p = Properties{User: p.User[:0], SubscriptionIDs: p.SubscriptionIDs[:0]}
}

// decode reads a property list (its length, then the properties) for a
// packet that allows the properties in mask. multiSubID allows more than one
// subscription identifier (PUBLISH).
// what names the list in error messages ("PUBLISH", "will").
func (p *Properties) decode(r *reader, mask uint64, multiSubID bool, what string) {
	p.reset()
	n := r.varint("property length")
	if r.err != nil {
		return
	}
	if n > len(r.b) {
		r.short("properties")
		return
	}
	pr := reader{b: r.b[:n], pkt: what}
	r.b = r.b[n:]
	for len(pr.b) > 0 && pr.err == nil {
		id := pr.varint("property identifier")
		if pr.err != nil {
			break
		}
		if id >= 64 || mask&(1<<id) == 0 {
			pr.fail(malformed("", r.pkt+" carries property 0x"+strconv.FormatUint(uint64(id), 16)+", which it may not"))
			break
		}
		pid := PropID(id)
		if pid != PropUser && pid != PropSubscriptionID {
			if p.Has(pid) {
				pr.fail(protocolErr("", r.pkt+" carries property 0x"+strconv.FormatUint(uint64(id), 16)+" twice"))
				break
			}
			p.Set(pid)
		}
		p.decodeOne(&pr, pid, multiSubID)
	}
	if pr.err != nil {
		r.fail(pr.err.(*Error))
	}
}

func (p *Properties) decodeOne(r *reader, id PropID, multiSubID bool) {
	bool01 := func(name string, v byte) byte {
		if v > 1 && r.err == nil {
			r.fail(protocolErr("", r.pkt+" "+name+" is "+strconv.Itoa(int(v))+", not 0 or 1"))
		}
		return v
	}
	switch id {
	case PropPayloadFormat:
		p.PayloadFormat = bool01("payload format indicator", r.u8("property"))
	case PropMessageExpiry:
		p.MessageExpiry = r.u32("property")
	case PropContentType:
		p.ContentType = r.str(" content type")
	case PropResponseTopic:
		p.ResponseTopic = r.str(" response topic")
		if r.err == nil {
			if err := ValidateTopicName(p.ResponseTopic); err != nil {
				// [MQTT-3.1.3-11, MQTT-3.3.2-14]
				r.fail(protocolErr("MQTT-3.3.2-14", r.pkt+" response topic is not a valid topic name"))
			}
		}
	case PropCorrelationData:
		p.CorrelationData = r.binary(" correlation data")
	case PropSubscriptionID:
		v := r.varint(" subscription identifier")
		if r.err != nil {
			return
		}
		if v == 0 {
			r.fail(protocolErr("MQTT-3.8.2-1", r.pkt+" subscription identifier is 0"))
			return
		}
		if !multiSubID && len(p.SubscriptionIDs) > 0 {
			r.fail(protocolErr("", r.pkt+" carries more than one subscription identifier"))
			return
		}
		p.SubscriptionIDs = append(p.SubscriptionIDs, uint32(v))
	case PropSessionExpiry:
		p.SessionExpiry = r.u32("property")
	case PropAssignedClientID:
		p.AssignedClientID = r.str(" assigned client identifier")
	case PropServerKeepAlive:
		p.ServerKeepAlive = r.u16("property")
	case PropAuthMethod:
		p.AuthMethod = r.str(" authentication method")
	case PropAuthData:
		p.AuthData = r.binary(" authentication data")
	case PropRequestProblemInfo:
		p.RequestProblemInfo = bool01("request problem information", r.u8("property"))
	case PropWillDelay:
		p.WillDelay = r.u32("property")
	case PropRequestResponseInfo:
		p.RequestResponseInfo = bool01("request response information", r.u8("property"))
	case PropResponseInfo:
		p.ResponseInfo = r.str(" response information")
	case PropServerReference:
		p.ServerReference = r.str(" server reference")
	case PropReasonString:
		p.ReasonString = r.str(" reason string")
	case PropReceiveMaximum:
		p.ReceiveMaximum = r.u16("property")
		if p.ReceiveMaximum == 0 && r.err == nil {
			r.fail(protocolErr("", r.pkt+" receive maximum is 0"))
		}
	case PropTopicAliasMaximum:
		p.TopicAliasMaximum = r.u16("property")
	case PropTopicAlias:
		// 0 is refused by the receiver with Topic Alias invalid
		// [MQTT-3.3.2-8]; the codec keeps the value so it can say so.
		p.TopicAlias = r.u16("property")
	case PropMaximumQoS:
		p.MaximumQoS = bool01("maximum QoS", r.u8("property"))
	case PropRetainAvailable:
		p.RetainAvailable = bool01("retain available", r.u8("property"))
	case PropUser:
		k := r.str(" user property name")
		v := r.str(" user property value")
		if r.err == nil {
			p.User = append(p.User, UserProperty{Key: k, Value: v})
		}
	case PropMaximumPacketSize:
		p.MaximumPacketSize = r.u32("property")
		if p.MaximumPacketSize == 0 && r.err == nil {
			r.fail(protocolErr("", r.pkt+" maximum packet size is 0"))
		}
	case PropWildcardSubAvailable:
		p.WildcardSubAvailable = bool01("wildcard subscription available", r.u8("property"))
	case PropSubIDAvailable:
		p.SubIDAvailable = bool01("subscription identifiers available", r.u8("property"))
	case PropSharedSubAvailable:
		p.SharedSubAvailable = bool01("shared subscription available", r.u8("property"))
	}
}

// field returns the value of a single-valued property: an integer, or a
// byte slice for strings and binary data.
func (p *Properties) field(id PropID) (uint32, []byte) {
	switch id {
	case PropPayloadFormat:
		return uint32(p.PayloadFormat), nil
	case PropMessageExpiry:
		return p.MessageExpiry, nil
	case PropContentType:
		return 0, p.ContentType
	case PropResponseTopic:
		return 0, p.ResponseTopic
	case PropCorrelationData:
		return 0, p.CorrelationData
	case PropSessionExpiry:
		return p.SessionExpiry, nil
	case PropAssignedClientID:
		return 0, p.AssignedClientID
	case PropServerKeepAlive:
		return uint32(p.ServerKeepAlive), nil
	case PropAuthMethod:
		return 0, p.AuthMethod
	case PropAuthData:
		return 0, p.AuthData
	case PropRequestProblemInfo:
		return uint32(p.RequestProblemInfo), nil
	case PropWillDelay:
		return p.WillDelay, nil
	case PropRequestResponseInfo:
		return uint32(p.RequestResponseInfo), nil
	case PropResponseInfo:
		return 0, p.ResponseInfo
	case PropServerReference:
		return 0, p.ServerReference
	case PropReasonString:
		return 0, p.ReasonString
	case PropReceiveMaximum:
		return uint32(p.ReceiveMaximum), nil
	case PropTopicAliasMaximum:
		return uint32(p.TopicAliasMaximum), nil
	case PropTopicAlias:
		return uint32(p.TopicAlias), nil
	case PropMaximumQoS:
		return uint32(p.MaximumQoS), nil
	case PropRetainAvailable:
		return uint32(p.RetainAvailable), nil
	case PropMaximumPacketSize:
		return p.MaximumPacketSize, nil
	case PropWildcardSubAvailable:
		return uint32(p.WildcardSubAvailable), nil
	case PropSubIDAvailable:
		return uint32(p.SubIDAvailable), nil
	case PropSharedSubAvailable:
		return uint32(p.SharedSubAvailable), nil
	}
	return 0, nil
}

// repeatable are the properties kept in slices rather than Present.
const repeatable = 1<<PropSubscriptionID | 1<<PropUser

// single lists the single-valued property identifiers in wire order.
var single = func() []PropID {
	var ids []PropID
	for id, k := range propKinds {
		if k != kindNone && PropID(id) != PropSubscriptionID && PropID(id) != PropUser {
			ids = append(ids, PropID(id))
		}
	}
	return ids
}()

// bodySize is the length of the property list without its length prefix,
// counting only properties allowed by mask.
func (p *Properties) bodySize(mask uint64) int {
	n := 0
	for m := p.Present & mask &^ repeatable; m != 0; m &= m - 1 {
		id := PropID(bits.TrailingZeros64(m))
		{
			n++
			switch propKinds[id] {
			case kindByte:
				n++
			case kindU16:
				n += 2
			case kindU32:
				n += 4
			default:
				_, b := p.field(id)
				n += 2 + len(b)
			}
		}
	}
	if mask&(1<<PropSubscriptionID) != 0 {
		for _, s := range p.SubscriptionIDs {
			n += 1 + VarintSize(int(s))
		}
	}
	if mask&(1<<PropUser) != 0 {
		for _, u := range p.User {
			n += 5 + len(u.Key) + len(u.Value)
		}
	}
	return n
}

// size is the encoded length of the property list including its length.
func (p *Properties) size(mask uint64) int {
	n := p.bodySize(mask)
	return VarintSize(n) + n
}

// appendTo writes the property list (length and properties) allowed by mask.
func (p *Properties) appendTo(dst []byte, mask uint64) []byte {
	dst, _ = p.appendMarked(dst, mask, 0)
	return dst
}

// appendMarked is appendTo that also returns the offset in dst of the value
// of property mark (a non-repeatable one), or -1 when it is not written.
func (p *Properties) appendMarked(dst []byte, mask uint64, mark PropID) ([]byte, int) {
	off := -1
	dst = AppendVarint(dst, p.bodySize(mask))
	for m := p.Present & mask &^ repeatable; m != 0; m &= m - 1 {
		id := PropID(bits.TrailingZeros64(m))
		{
			dst = append(dst, byte(id))
			if id == mark {
				off = len(dst)
			}
			v, b := p.field(id)
			switch propKinds[id] {
			case kindByte:
				dst = append(dst, byte(v))
			case kindU16:
				dst = appendU16(dst, uint16(v))
			case kindU32:
				dst = appendU32(dst, v)
			default:
				dst = appendBinary(dst, b)
			}
		}
	}
	if mask&(1<<PropSubscriptionID) != 0 {
		for _, s := range p.SubscriptionIDs {
			dst = append(dst, byte(PropSubscriptionID))
			dst = AppendVarint(dst, int(s))
		}
	}
	if mask&(1<<PropUser) != 0 {
		for _, u := range p.User {
			dst = append(dst, byte(PropUser))
			dst = appendBinary(dst, u.Key)
			dst = appendBinary(dst, u.Value)
		}
	}
	return dst, off
}

// empty reports whether no property allowed by mask is present.
func (p *Properties) empty(mask uint64) bool {
	return p.Present&mask == 0 && (mask&(1<<PropUser) == 0 || len(p.User) == 0) &&
		(mask&(1<<PropSubscriptionID) == 0 || len(p.SubscriptionIDs) == 0)
}
