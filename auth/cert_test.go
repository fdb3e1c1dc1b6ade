package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestCertSource(t *testing.T) {
	withCert := &Request{Username: "bob", HasUsername: true, CertCN: "device-7", CertSANs: []string{"device-7.example.com", "ops@example.com"}}
	sanOnly := &Request{CertSANs: []string{"spiffe://example.com/device-8"}}
	noCert := &Request{Username: "bob", HasUsername: true, Password: []byte("pw"), HasPassword: true}
	tests := []struct {
		field string
		r     *Request
		want  Answer
	}{
		{"", withCert, Answer{Verdict: Allow, Username: "device-7"}},
		{"cn", withCert, Answer{Verdict: Allow, Username: "device-7"}},
		{"san", withCert, Answer{Verdict: Allow, Username: "device-7.example.com"}},
		{"san", sanOnly, Answer{Verdict: Allow, Username: "spiffe://example.com/device-8"}},
		{"cn", sanOnly, Answer{Verdict: Ignore}},
		{"cn", noCert, Answer{Verdict: Ignore}},
		{"san", noCert, Answer{Verdict: Ignore}},
		{"san", &Request{CertCN: "only-cn"}, Answer{Verdict: Ignore}},
	}
	for _, tt := range tests {
		s, err := NewCertSource(tt.field)
		if err != nil {
			t.Fatalf("NewCertSource(%q): %v", tt.field, err)
		}
		if s.Name() != "cert" {
			t.Fatalf("Name() = %q", s.Name())
		}
		got, err := s.Authenticate(context.Background(), tt.r)
		if err != nil {
			t.Fatalf("field %q, %+v: %v", tt.field, tt.r, err)
		}
		if got.Verdict != tt.want.Verdict || got.Username != tt.want.Username || got.HasRules || got.Superuser {
			t.Errorf("field %q, %+v: got %+v, want %+v", tt.field, tt.r, got, tt.want)
		}
	}
}

func TestCertSourceBadField(t *testing.T) {
	if _, err := NewCertSource("email"); err == nil || !strings.Contains(err.Error(), `field is "email"`) {
		t.Fatalf("NewCertSource(email): %v, want an error naming the field", err)
	}
	// A CertSource built without NewCertSource reports its bad field on
	// every call instead of letting anyone in.
	s := &CertSource{Field: "CN"}
	a, err := s.Authenticate(context.Background(), &Request{CertCN: "x"})
	if !errors.Is(err, ErrUnavailable) || a.Verdict == Allow {
		t.Fatalf("bad field: got %+v, %v; want an unavailable error", a, err)
	}
}
