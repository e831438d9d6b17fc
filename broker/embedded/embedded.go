// Package embedded runs the NATS server `audiofan serve` starts in-process:
// nothing to install. Only serve and the tests link nats-server.
package embedded

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures the NATS server `audiofan serve` runs in-process.
type Config struct {
	// Listen is host:port for clients (the nats CLI, other roles); port 0
	// picks a free one.
	Listen string `env:"AUDIOFAN_NATS_LISTEN" envDefault:"127.0.0.1:4222" help:"where the embedded NATS server listens (serve only; port 0 = any free port)"`
	// StoreDir holds the JetStream store.
	StoreDir string `env:"-"`
	// ServerName names the server in logs and in JetStream's metadata.
	ServerName string `env:"-"`
	// TLSCert and TLSKey, when set, make the server require TLS from clients.
	TLSCert, TLSKey string `env:"-"`
	// Mappings are subject mappings of the server's (global) account,
	// source to destination: a sharded bus's (broker.Mappings). Their
	// sources must not overlap (the server applies the first that matches).
	Mappings map[string]string `env:"-"`
	// Configure, when set, adjusts the server's options last (tests: users
	// and permissions).
	Configure func(*server.Options) `env:"-"`
}

// Start starts a NATS server with JetStream and waits until it takes
// connections. The caller shuts it down (Shutdown, then WaitForShutdown).
func Start(cfg Config) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded nats listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("embedded nats listen %q: bad port", cfg.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	name := cfg.ServerName
	if name == "" {
		name = "audiofan-embedded"
	}
	opts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Clean(cfg.StoreDir),
		// The process owns signals: the server must not stop itself on
		// SIGTERM before the receiver has drained into it.
		NoSigs: true,
	}
	if cfg.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey})
		if err != nil {
			return nil, fmt.Errorf("embedded nats tls: %w", err)
		}
		opts.TLS, opts.TLSConfig = true, tc
	}
	if cfg.Configure != nil {
		cfg.Configure(opts)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	// Before the server takes connections: nothing may be published
	// unmapped.
	for src, dest := range cfg.Mappings {
		if err := ns.GlobalAccount().AddMapping(src, dest); err != nil {
			return nil, fmt.Errorf("embedded nats: mapping %s: %w", src, err)
		}
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats on %s: not ready after 30s", cfg.Listen)
	}
	return ns, nil
}
