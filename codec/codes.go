package codec

import (
	"errors"
	"strconv"
)

// ReasonCode is an MQTT 5 reason code [MQTT-2.4], also used for the 3.x
// CONNACK return codes and SUBACK return codes. It implements error so that
// a handler can return the code it wants sent.
type ReasonCode byte

// Reason codes. Do not reorder: these are wire values.
const (
	Success                             ReasonCode = 0x00 // also Normal disconnection, Granted QoS 0
	GrantedQoS1                         ReasonCode = 0x01
	GrantedQoS2                         ReasonCode = 0x02
	DisconnectWithWill                  ReasonCode = 0x04
	NoMatchingSubscribers               ReasonCode = 0x10
	NoSubscriptionExisted               ReasonCode = 0x11
	ContinueAuthentication              ReasonCode = 0x18
	ReAuthenticate                      ReasonCode = 0x19
	UnspecifiedError                    ReasonCode = 0x80
	MalformedPacket                     ReasonCode = 0x81
	ProtocolError                       ReasonCode = 0x82
	ImplementationSpecificError         ReasonCode = 0x83
	UnsupportedProtocolVersion          ReasonCode = 0x84
	ClientIdentifierNotValid            ReasonCode = 0x85
	BadUserNameOrPassword               ReasonCode = 0x86
	NotAuthorized                       ReasonCode = 0x87
	ServerUnavailable                   ReasonCode = 0x88
	ServerBusy                          ReasonCode = 0x89
	Banned                              ReasonCode = 0x8A
	ServerShuttingDown                  ReasonCode = 0x8B
	BadAuthenticationMethod             ReasonCode = 0x8C
	KeepAliveTimeout                    ReasonCode = 0x8D
	SessionTakenOver                    ReasonCode = 0x8E
	TopicFilterInvalid                  ReasonCode = 0x8F
	TopicNameInvalid                    ReasonCode = 0x90
	PacketIdentifierInUse               ReasonCode = 0x91
	PacketIdentifierNotFound            ReasonCode = 0x92
	ReceiveMaximumExceeded              ReasonCode = 0x93
	TopicAliasInvalid                   ReasonCode = 0x94
	PacketTooLarge                      ReasonCode = 0x95
	MessageRateTooHigh                  ReasonCode = 0x96
	QuotaExceeded                       ReasonCode = 0x97
	AdministrativeAction                ReasonCode = 0x98
	PayloadFormatInvalid                ReasonCode = 0x99
	RetainNotSupported                  ReasonCode = 0x9A
	QoSNotSupported                     ReasonCode = 0x9B
	UseAnotherServer                    ReasonCode = 0x9C
	ServerMoved                         ReasonCode = 0x9D
	SharedSubscriptionsNotSupported     ReasonCode = 0x9E
	ConnectionRateExceeded              ReasonCode = 0x9F
	MaximumConnectTime                  ReasonCode = 0xA0
	SubscriptionIdentifiersNotSupported ReasonCode = 0xA1
	WildcardSubscriptionsNotSupported   ReasonCode = 0xA2
)

// Aliases with the names the specification uses in other packets.
const (
	NormalDisconnection = Success
	GrantedQoS0         = Success
)

// MQTT 3.x CONNACK return codes [MQTT-3.2.2.3] and the SUBACK failure code.
const (
	V3Accepted                    ReasonCode = 0x00
	V3UnacceptableProtocolVersion ReasonCode = 0x01
	V3IdentifierRejected          ReasonCode = 0x02
	V3ServerUnavailable           ReasonCode = 0x03
	V3BadUsernameOrPassword       ReasonCode = 0x04
	V3NotAuthorized               ReasonCode = 0x05
	V3SubackFailure               ReasonCode = 0x80
)

var reasonNames = map[ReasonCode]string{
	Success: "success", GrantedQoS1: "granted QoS 1", GrantedQoS2: "granted QoS 2",
	DisconnectWithWill: "disconnect with will message", NoMatchingSubscribers: "no matching subscribers",
	NoSubscriptionExisted: "no subscription existed", ContinueAuthentication: "continue authentication",
	ReAuthenticate: "re-authenticate", UnspecifiedError: "unspecified error",
	MalformedPacket: "malformed packet", ProtocolError: "protocol error",
	ImplementationSpecificError: "implementation specific error",
	UnsupportedProtocolVersion:  "unsupported protocol version",
	ClientIdentifierNotValid:    "client identifier not valid",
	BadUserNameOrPassword:       "bad user name or password", NotAuthorized: "not authorized",
	ServerUnavailable: "server unavailable", ServerBusy: "server busy", Banned: "banned",
	ServerShuttingDown: "server shutting down", BadAuthenticationMethod: "bad authentication method",
	KeepAliveTimeout: "keep alive timeout", SessionTakenOver: "session taken over",
	TopicFilterInvalid: "topic filter invalid", TopicNameInvalid: "topic name invalid",
	PacketIdentifierInUse: "packet identifier in use", PacketIdentifierNotFound: "packet identifier not found",
	ReceiveMaximumExceeded: "receive maximum exceeded", TopicAliasInvalid: "topic alias invalid",
	PacketTooLarge: "packet too large", MessageRateTooHigh: "message rate too high",
	QuotaExceeded: "quota exceeded", AdministrativeAction: "administrative action",
	PayloadFormatInvalid: "payload format invalid", RetainNotSupported: "retain not supported",
	QoSNotSupported: "QoS not supported", UseAnotherServer: "use another server",
	ServerMoved: "server moved", SharedSubscriptionsNotSupported: "shared subscriptions not supported",
	ConnectionRateExceeded: "connection rate exceeded", MaximumConnectTime: "maximum connect time",
	SubscriptionIdentifiersNotSupported: "subscription identifiers not supported",
	WildcardSubscriptionsNotSupported:   "wildcard subscriptions not supported",
}

// String returns the specification's name of the code in lower case.
func (c ReasonCode) String() string {
	if s, ok := reasonNames[c]; ok {
		return s
	}
	return "reason code 0x" + strconv.FormatUint(uint64(c), 16)
}

// Error makes a ReasonCode usable as an error.
func (c ReasonCode) Error() string { return c.String() }

// IsError reports whether c signals failure (0x80 and above).
func (c ReasonCode) IsError() bool { return c >= 0x80 }

// ErrIncomplete is returned by decoders when buf holds only part of a packet:
// read more bytes and call again. It is not a protocol violation.
var ErrIncomplete = errors.New("codec: incomplete packet")

// Error is a violation of the wire format found while decoding. Code is the
// v5 reason code to send (in a CONNACK or DISCONNECT) before closing the
// connection; Rule names the normative statement, e.g. "MQTT-3.3.2-2", when
// there is one.
type Error struct {
	Code ReasonCode
	Rule string
	Msg  string
}

func (e *Error) Error() string {
	s := "codec: " + e.Code.String() + ": " + e.Msg
	if e.Rule != "" {
		s += " [" + e.Rule + "]"
	}
	return s
}

// Is lets errors.Is(err, codec.MalformedPacket) match on the code.
func (e *Error) Is(target error) bool {
	c, ok := target.(ReasonCode)
	return ok && c == e.Code
}

// CodeOf returns the reason code carried by err: the Code of an *Error, the
// ReasonCode itself, or UnspecifiedError for anything else.
func CodeOf(err error) ReasonCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var c ReasonCode
	if errors.As(err, &c) {
		return c
	}
	return UnspecifiedError
}
