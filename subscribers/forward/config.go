package forward

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// Config is the forwarder's settings.
type Config struct {
	URL          string        `env:"AUDIOFAN_FORWARD_URL" help:"the targets: comma-separated ws:// or wss:// URLs, each with its options after # (never sent): name=, kinds=audio,dtmf,transcript (default audio), token_file= or auth_file= (an Authorization header read from a file at each dial), speak=false (drop what it sends back); empty: no forwarder"`
	Buffer       int           `env:"AUDIOFAN_FORWARD_BUFFER" envDefault:"250" help:"messages queued per socket (250: 5 s of one stream); past it a slow target loses the oldest (counted)"`
	MaxMessage   int           `env:"AUDIOFAN_FORWARD_MAX_MESSAGE" envDefault:"1048576" help:"largest message taken from a target, in bytes; a larger one is dropped (counted)"`
	DialTimeout  time.Duration `env:"AUDIOFAN_FORWARD_DIAL_TIMEOUT" envDefault:"5s" help:"a dial, TLS and upgrade included"`
	WriteTimeout time.Duration `env:"AUDIOFAN_FORWARD_WRITE_TIMEOUT" envDefault:"5s" help:"a write to a target taking longer closes its socket, which is redialled"`
	RedialMax    time.Duration `env:"AUDIOFAN_FORWARD_REDIAL_MAX" envDefault:"10s" help:"longest wait between redials of a target (from 250 ms, doubling, with jitter)"`
	CAFile       string        `env:"AUDIOFAN_FORWARD_CA_FILE" help:"PEM file of CAs trusted for wss:// targets besides the system's (TLS is always verified)"`

	targets []Target
	tls     *tls.Config
}

// Validate checks the settings and reads the targets.
func (c *Config) Validate() error {
	switch {
	case c.Buffer < 1:
		return errors.New("AUDIOFAN_FORWARD_BUFFER must be at least 1")
	case c.MaxMessage < 1024:
		return errors.New("AUDIOFAN_FORWARD_MAX_MESSAGE must be at least 1024")
	case c.DialTimeout <= 0 || c.WriteTimeout <= 0 || c.RedialMax <= 0:
		return errors.New("AUDIOFAN_FORWARD_DIAL_TIMEOUT, _WRITE_TIMEOUT and _REDIAL_MAX must be positive")
	}
	ts, err := ParseTargets(c.URL)
	if err != nil {
		return err
	}
	c.targets = ts
	c.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return fmt.Errorf("AUDIOFAN_FORWARD_CA_FILE: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("AUDIOFAN_FORWARD_CA_FILE %s: no PEM certificate in it", c.CAFile)
		}
		c.tls.RootCAs = pool
	}
	return nil
}

// Enabled says whether any target is configured: without one, serve runs
// no forwarder.
func (c *Config) Enabled() bool { return c.URL != "" }
