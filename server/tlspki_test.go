package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// testPKI is a certificate authority made for one test (ECDSA P-256), and
// the certificates it issues.
type testPKI struct {
	t      testing.TB
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caFile string // the CA certificate, PEM
	serial atomic.Int64
}

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{t: t, dir: t.TempDir(), ca: ca, caKey: key}
	p.serial.Store(1000)
	p.caFile = p.write("ca.pem", pemBlock("CERTIFICATE", der))
	return p
}

// leafSpec says what a certificate holds. Zero times mean "valid from an
// hour ago for a day"; a zero serial means the next one.
type leafSpec struct {
	cn        string
	dns       []string
	ips       []net.IP
	emails    []string
	uris      []string
	client    bool
	serial    int64
	notBefore time.Time
	notAfter  time.Time
}

// issue makes a certificate and its key, PEM.
func (p *testPKI) issue(s leafSpec) (certPEM, keyPEM []byte) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	now := time.Now()
	if s.notBefore.IsZero() {
		s.notBefore = now.Add(-time.Hour)
	}
	if s.notAfter.IsZero() {
		s.notAfter = now.Add(24 * time.Hour)
	}
	if s.serial == 0 {
		s.serial = p.serial.Add(1)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(s.serial),
		Subject:        pkix.Name{CommonName: s.cn},
		NotBefore:      s.notBefore,
		NotAfter:       s.notAfter,
		DNSNames:       s.dns,
		IPAddresses:    s.ips,
		EmailAddresses: s.emails,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if s.client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, u := range s.uris {
		pu, err := url.Parse(u)
		if err != nil {
			p.t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", kder)
}

// serverFiles issues a certificate for 127.0.0.1 and localhost with the
// given serial and writes it and its key to files of the given names.
func (p *testPKI) serverFiles(serial int64, certName, keyName string) (certFile, keyFile string) {
	p.t.Helper()
	c, k := p.issue(leafSpec{cn: "gannet test server", dns: []string{"localhost"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1)}, serial: serial})
	return p.write(certName, c), p.write(keyName, k)
}

// client issues a client certificate.
func (p *testPKI) client(s leafSpec) tls.Certificate {
	p.t.Helper()
	s.client = true
	c, k := p.issue(s)
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		p.t.Fatal(err)
	}
	return cert
}

// pool is a pool holding the CA, for clients to verify the server with.
func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	return pool
}

// write writes b to name in the PKI's directory, replacing the file
// atomically, and returns its path.
func (p *testPKI) write(name string, b []byte) string {
	p.t.Helper()
	path := filepath.Join(p.dir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		p.t.Fatal(err)
	}
	return path
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
