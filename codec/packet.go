package codec

// Type is the MQTT control packet type, the high nibble of the first byte of
// the fixed header.
type Type byte

// Control packet types [MQTT-2.1.2]. Do not reorder: these are wire values.
const (
	CONNECT     Type = 1
	CONNACK     Type = 2
	PUBLISH     Type = 3
	PUBACK      Type = 4
	PUBREC      Type = 5
	PUBREL      Type = 6
	PUBCOMP     Type = 7
	SUBSCRIBE   Type = 8
	SUBACK      Type = 9
	UNSUBSCRIBE Type = 10
	UNSUBACK    Type = 11
	PINGREQ     Type = 12
	PINGRESP    Type = 13
	DISCONNECT  Type = 14
	AUTH        Type = 15 // MQTT 5 only
)

var typeNames = [...]string{
	0: "RESERVED", CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH",
	PUBACK: "PUBACK", PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP",
	SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE",
	UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
	DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "INVALID"
}

// Version is the protocol level carried in CONNECT.
type Version byte

// Protocol levels. Do not reorder: these are wire values.
const (
	V31  Version = 3 // MQTT 3.1, protocol name "MQIsdp"
	V311 Version = 4 // MQTT 3.1.1
	V5   Version = 5 // MQTT 5.0
)

func (v Version) String() string {
	switch v {
	case V31:
		return "3.1"
	case V311:
		return "3.1.1"
	case V5:
		return "5.0"
	}
	return "unknown"
}

// MaxRemainingLength is the largest remaining length a four-byte variable
// byte integer can carry [MQTT-1.5.5].
const MaxRemainingLength = 268_435_455

// FixedHeader is the first two to five bytes of every packet.
type FixedHeader struct {
	Type      Type
	Flags     byte // low nibble of the first byte
	Remaining int  // remaining length: bytes that follow the fixed header
}

// Packet is implemented by every packet struct below. Decode fills the
// receiver from body, the Remaining bytes that follow the fixed header h; the
// slices it stores alias body and live exactly as long as the caller keeps
// body unchanged. Decode resets every field first and reuses the capacity of
// the receiver's own slices, so a struct kept per connection decodes without
// allocating. Append encodes the packet for protocol version v to the end of
// dst. Size returns the number of bytes Append would add.
type Packet interface {
	Type() Type
	Decode(h FixedHeader, body []byte, v Version) error
	Append(dst []byte, v Version) []byte
	Size(v Version) int
}

// UserProperty is one name/value pair of the v5 User Property (0x26). Order
// and duplicates are kept as received [MQTT-3.3.2-18].
type UserProperty struct {
	Key, Value []byte
}

// PropID identifies a v5 property. Do not reorder: these are wire values.
type PropID byte

const (
	PropPayloadFormat        PropID = 0x01
	PropMessageExpiry        PropID = 0x02
	PropContentType          PropID = 0x03
	PropResponseTopic        PropID = 0x08
	PropCorrelationData      PropID = 0x09
	PropSubscriptionID       PropID = 0x0B
	PropSessionExpiry        PropID = 0x11
	PropAssignedClientID     PropID = 0x12
	PropServerKeepAlive      PropID = 0x13
	PropAuthMethod           PropID = 0x15
	PropAuthData             PropID = 0x16
	PropRequestProblemInfo   PropID = 0x17
	PropWillDelay            PropID = 0x18
	PropRequestResponseInfo  PropID = 0x19
	PropResponseInfo         PropID = 0x1A
	PropServerReference      PropID = 0x1C
	PropReasonString         PropID = 0x1F
	PropReceiveMaximum       PropID = 0x21
	PropTopicAliasMaximum    PropID = 0x22
	PropTopicAlias           PropID = 0x23
	PropMaximumQoS           PropID = 0x24
	PropRetainAvailable      PropID = 0x25
	PropUser                 PropID = 0x26
	PropMaximumPacketSize    PropID = 0x27
	PropWildcardSubAvailable PropID = 0x28
	PropSubIDAvailable       PropID = 0x29
	PropSharedSubAvailable   PropID = 0x2A
)

// Properties holds the v5 properties of one packet (or of a CONNECT's will).
// A single-valued property is present when its bit is set in Present (see
// Has and Set); its field holds the value. The two repeatable properties,
// User and SubscriptionIDs, are present when non-empty. Byte-slice fields
// alias the decoded input like every other decoded field.
//
// In versions before 5 properties do not exist on the wire: Append writes
// none and Decode leaves Properties empty.
type Properties struct {
	Present uint64 // bit i set: property with PropID i is present

	PayloadFormat        byte
	MessageExpiry        uint32
	ContentType          []byte
	ResponseTopic        []byte
	CorrelationData      []byte
	SubscriptionIDs      []uint32 // PUBLISH may carry several; SUBSCRIBE at most one
	SessionExpiry        uint32
	AssignedClientID     []byte
	ServerKeepAlive      uint16
	AuthMethod           []byte
	AuthData             []byte
	RequestProblemInfo   byte
	WillDelay            uint32
	RequestResponseInfo  byte
	ResponseInfo         []byte
	ServerReference      []byte
	ReasonString         []byte
	ReceiveMaximum       uint16
	TopicAliasMaximum    uint16
	TopicAlias           uint16
	MaximumQoS           byte
	RetainAvailable      byte
	MaximumPacketSize    uint32
	WildcardSubAvailable byte
	SubIDAvailable       byte
	SharedSubAvailable   byte
	User                 []UserProperty
}

// Has reports whether the single-valued property id is present.
func (p *Properties) Has(id PropID) bool { return p.Present&(1<<id) != 0 }

// Set marks the single-valued property id as present. Set the field first.
func (p *Properties) Set(id PropID) { p.Present |= 1 << id }

// Clear marks the single-valued property id as absent.
func (p *Properties) Clear(id PropID) { p.Present &^= 1 << id }

// Connect is the CONNECT packet. Decode takes the protocol version from the
// packet itself and ignores its v argument; Append writes ProtocolVersion.
type Connect struct {
	ProtocolName    []byte // "MQTT", or "MQIsdp" for 3.1
	ProtocolVersion Version
	CleanStart      bool // Clean Session in 3.1.1
	KeepAlive       uint16
	Props           Properties
	ClientID        []byte

	WillFlag    bool
	WillQoS     byte
	WillRetain  bool
	WillProps   Properties
	WillTopic   []byte
	WillPayload []byte

	UsernameFlag bool
	Username     []byte
	PasswordFlag bool
	Password     []byte
}

// Connack is the CONNACK packet. In 3.x Code carries the return code
// (0 to 5); in v5 a reason code.
type Connack struct {
	SessionPresent bool
	Code           ReasonCode
	Props          Properties
}

// Publish is the PUBLISH packet. PacketID is present on the wire only for
// QoS 1 and 2.
type Publish struct {
	Dup      bool
	QoS      byte
	Retain   bool
	Topic    []byte
	PacketID uint16
	Props    Properties
	Payload  []byte
}

// Ack is PUBACK, PUBREC, PUBREL or PUBCOMP, which share one layout; Kind
// says which. In v5 a Code of Success with no properties is written in the
// short two-byte form [MQTT-3.4.2-1].
type Ack struct {
	Kind     Type
	PacketID uint16
	Code     ReasonCode
	Props    Properties
}

// Subscription is one topic filter of a SUBSCRIBE with its options. The v5
// option bits (NoLocal, RetainAsPublished, RetainHandling) are zero in 3.x.
type Subscription struct {
	Filter            []byte
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte // 0: send retained on subscribe; 1: only if new; 2: never
}

// Subscribe is the SUBSCRIBE packet.
type Subscribe struct {
	PacketID uint16
	Props    Properties
	Subs     []Subscription
}

// Suback is the SUBACK packet: one code per filter, in order. In 3.x the
// codes are the granted QoS (0, 1, 2) or 0x80 for failure.
type Suback struct {
	PacketID uint16
	Props    Properties
	Codes    []ReasonCode
}

// Unsubscribe is the UNSUBSCRIBE packet.
type Unsubscribe struct {
	PacketID uint16
	Props    Properties
	Filters  [][]byte
}

// Unsuback is the UNSUBACK packet. Codes and Props exist only in v5.
type Unsuback struct {
	PacketID uint16
	Props    Properties
	Codes    []ReasonCode
}

// Pingreq is the PINGREQ packet.
type Pingreq struct{}

// Pingresp is the PINGRESP packet.
type Pingresp struct{}

// Disconnect is the DISCONNECT packet. Code and Props exist only in v5; a
// Code of NormalDisconnection with no properties is written as an empty body.
type Disconnect struct {
	Code  ReasonCode
	Props Properties
}

// Auth is the v5 AUTH packet.
type Auth struct {
	Code  ReasonCode
	Props Properties
}

func (*Connect) Type() Type     { return CONNECT }
func (*Connack) Type() Type     { return CONNACK }
func (*Publish) Type() Type     { return PUBLISH }
func (a *Ack) Type() Type       { return a.Kind }
func (*Subscribe) Type() Type   { return SUBSCRIBE }
func (*Suback) Type() Type      { return SUBACK }
func (*Unsubscribe) Type() Type { return UNSUBSCRIBE }
func (*Unsuback) Type() Type    { return UNSUBACK }
func (*Pingreq) Type() Type     { return PINGREQ }
func (*Pingresp) Type() Type    { return PINGRESP }
func (*Disconnect) Type() Type  { return DISCONNECT }
func (*Auth) Type() Type        { return AUTH }
