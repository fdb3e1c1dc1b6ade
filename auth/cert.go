package auth

import (
	"context"
	"fmt"
)

// CertSource lets in every client that presented a verified client
// certificate, under the name the certificate gives: its subject common
// name (Field "cn", the default when empty) or its first subject
// alternative name (Field "san"). The TLS listener has verified the
// certificate against its CAs before the Request reaches the chain, so
// the certificate is the credential and a password is not looked at.
//
// A client without a certificate, or whose certificate lacks the chosen
// field, is Ignore: the next source decides.
//
// A CertSource does not change once in use; Authenticate is safe for
// concurrent use and does not block.
type CertSource struct {
	Field string
}

var (
	_ Source    = (*CertSource)(nil)
	_ AuthKeyer = (*CertSource)(nil)
)

// NewCertSource returns a CertSource using field ("cn", "san" or "" for
// "cn"), or an error naming a field that is neither.
func NewCertSource(field string) (*CertSource, error) {
	s := &CertSource{Field: field}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *CertSource) check() error {
	switch s.Field {
	case "", "cn", "san":
		return nil
	}
	return fmt.Errorf("auth: cert: field is %s, not \"cn\" or \"san\" (%w)", rulesQuote(s.Field), ErrUnavailable)
}

// Name returns "cert".
func (s *CertSource) Name() string { return "cert" }

// AuthKeyedBy returns the fields Authenticate reads: the certificate's
// names; and the listener, whose CAs verified them.
func (s *CertSource) AuthKeyedBy() Fields { return FieldCert | FieldListener }

// Authenticate allows r when it carries a verified certificate with the
// configured field. A Field other than "cn", "san" or "" is an error (use
// NewCertSource to find out at start).
func (s *CertSource) Authenticate(ctx context.Context, r *Request) (Answer, error) {
	if err := s.check(); err != nil {
		return Answer{}, err
	}
	var name string
	if s.Field == "san" {
		if len(r.CertSANs) > 0 {
			name = r.CertSANs[0]
		}
	} else {
		name = r.CertCN
	}
	if name == "" {
		return Answer{Verdict: Ignore}, nil
	}
	return Answer{Verdict: Allow, Username: name}, nil
}
