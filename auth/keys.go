package auth

import (
	"crypto/sha256"
	"encoding/binary"
)

// What a cached answer is keyed by.
//
// The chain keys a source's answer by the parts of the Request the source
// reads, so that clients that differ only in what it does not read share
// one answer and one backend call: a reconnect storm of many clients of
// one user costs one query when the query reads only ${username}. A
// source says what it reads by implementing AuthKeyer (authentication)
// or RulesKeyer (ACL rules); one that does not has its answers keyed by
// every field (AllFields). The chain asks once, when it is built.
//
// Two requests may share an answer only if the source would answer them
// identically: a source must name every field that can change its answer,
// including fields read by something it looks up (a topic filter stored
// in a backend that names ${clientid}). The Redis and PostgreSQL sources
// avoid the latter by giving the chain their rules as stored, for it to
// fill in each client's values (templateACLSource in chain.go): their
// ACL answers are keyed by what their query reads alone. Some parts are
// always in the key,
// whatever the source says: HasUsername and HasPassword (a request
// without a password never gets an answer made for one with one), and
// for an ACL question the effective username the chain passes to Rules.

// Fields is a set of the parts of a Request an answer depends on.
type Fields uint16

// Fields of a Request.
const (
	// FieldUsername is Request.Username, the name the client presented.
	FieldUsername Fields = 1 << iota
	// FieldPassword is Request.Password.
	FieldPassword
	// FieldClientID is Request.ClientID.
	FieldClientID
	// FieldRemote is the host part of Request.Remote (the ${peerhost}
	// placeholder's value); never the port, which changes with every
	// connection.
	FieldRemote
	// FieldListener is Request.Listener.
	FieldListener
	// FieldProtocol is Request.Protocol.
	FieldProtocol
	// FieldCert is Request.CertCN and Request.CertSANs.
	FieldCert

	// AllFields is every field: the key of a source that does not say.
	AllFields = FieldUsername | FieldPassword | FieldClientID | FieldRemote |
		FieldListener | FieldProtocol | FieldCert
)

// AuthKeyer is a Source that says which fields of a Request its
// Authenticate answers depend on. AuthKeyedBy must return the same set
// for as long as the source is in a chain.
type AuthKeyer interface {
	AuthKeyedBy() Fields
}

// RulesKeyer is an ACLSource that says which fields of a Request its
// Rules answers depend on, besides the effective username, which is
// always part of the key. RulesKeyedBy must return the same set for as
// long as the source is in a chain.
type RulesKeyer interface {
	RulesKeyedBy() Fields
}

// authKeyFields returns the fields that key s's answers.
func authKeyFields(s Source) Fields {
	if k, ok := s.(AuthKeyer); ok {
		return k.AuthKeyedBy() & AllFields
	}
	return AllFields
}

// rulesKeyFields returns the fields that key a's answers.
func rulesKeyFields(a ACLSource) Fields {
	if k, ok := a.(RulesKeyer); ok {
		return k.RulesKeyedBy() & AllFields
	}
	return AllFields
}

// placeholderField returns the field whose value p stands for. For an
// ACL question, ${username} stands for the effective username, which is
// always part of the key.
func placeholderField(p placeholder) Fields {
	switch p {
	case phUsername:
		return FieldUsername
	case phClientID:
		return FieldClientID
	case phPeerhost:
		return FieldRemote
	case phCertCN:
		return FieldCert
	}
	return AllFields // a placeholder this switch does not know yet
}

// keySum digests a question of kind (kindAuth, kindACL) about r, reduced
// to fields; user is the effective username (ACL questions). It is salted
// with salt, so that the cache holds nothing from which a password could
// be recovered by guessing. Fields are length-prefixed, and the set of
// fields is itself digested, so that no two different questions share an
// encoding.
func keySum(salt *[32]byte, kind uint8, fields Fields, r *Request, user string) [sha256.Size]byte {
	var arr [512]byte
	b := append(arr[:0], salt[:]...)
	b = append(b, kind, flagByte(r.HasUsername, r.HasPassword), byte(fields), byte(fields>>8))
	if kind == kindACL {
		b = appendSumField(b, user)
	}
	if fields&FieldUsername != 0 {
		b = appendSumField(b, r.Username)
	}
	if fields&FieldPassword != 0 {
		b = binary.AppendUvarint(b, uint64(len(r.Password)))
		b = append(b, r.Password...)
	}
	if fields&FieldClientID != 0 {
		b = appendSumField(b, r.ClientID)
	}
	if fields&FieldRemote != 0 {
		// Both readings of the host: the one placeholders and the HTTP
		// source send (peerHost), and addrHost, which differs from it
		// only for addresses without a port.
		b = appendSumField(b, addrHost(r.Remote))
		b = appendSumField(b, peerHost(r.Remote))
	}
	if fields&FieldListener != 0 {
		b = appendSumField(b, r.Listener)
	}
	if fields&FieldProtocol != 0 {
		b = append(b, r.Protocol)
	}
	if fields&FieldCert != 0 {
		b = appendSumField(b, r.CertCN)
		b = binary.AppendUvarint(b, uint64(len(r.CertSANs)))
		for _, san := range r.CertSANs {
			b = appendSumField(b, san)
		}
	}
	return sha256.Sum256(b)
}
