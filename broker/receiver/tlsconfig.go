package receiver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// TLSConfig turns on TLS on a listener.
type TLSConfig struct {
	Cert string `env:"AUDIOFAN_TLS_CERT" help:"PEM certificate (chain) for the listener; with AUDIOFAN_TLS_KEY turns on TLS (wss://); reloaded when the file changes"`
	Key  string `env:"AUDIOFAN_TLS_KEY" help:"PEM private key of AUDIOFAN_TLS_CERT"`
}

func (c TLSConfig) enabled() bool { return c.Cert != "" || c.Key != "" }

func (c TLSConfig) validate() error {
	if c.enabled() && (c.Cert == "" || c.Key == "") {
		return errors.New("AUDIOFAN_TLS_CERT and AUDIOFAN_TLS_KEY go together")
	}
	return nil
}

// certReloader serves the certificate from its files and loads them again
// when they change (cert-manager and the like rotate them in place), looking
// at most every few seconds. A failed reload keeps the certificate in use.
type certReloader struct {
	cfg     TLSConfig
	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
}

func newCertReloader(cfg TLSConfig) (*certReloader, error) {
	r := &certReloader{cfg: cfg}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	st, err := os.Stat(r.cfg.Cert)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.cfg.Cert, r.cfg.Key)
	if err != nil {
		return fmt.Errorf("tls key pair: %w", err)
	}
	r.cert, r.modTime = &cert, st.ModTime()
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) > 5*time.Second {
		r.checked = now
		if st, err := os.Stat(r.cfg.Cert); err == nil && !st.ModTime().Equal(r.modTime) {
			_ = r.load() // on failure the old certificate stays
		}
	}
	return r.cert, nil
}

// serverTLS returns the listener's TLS configuration.
func (c TLSConfig) serverTLS() (*tls.Config, error) {
	r, err := newCertReloader(c)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.get}, nil
}
