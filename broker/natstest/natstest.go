// Package natstest starts embedded NATS servers with JetStream for tests: a
// random port and a temporary store per server, never a server already
// running. Only tests import it.
package natstest

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/embedded"
)

// Server is a test NATS server that can be stopped and started again on the
// same port and store, to test what survives a restart.
type Server struct {
	t    testing.TB
	Dir  string
	Addr string
	NS   *server.Server
	// TLSCert and TLSKey, set before Restart, make the server require TLS.
	TLSCert, TLSKey string
	// Users, set before Restart, replace anonymous access; URL then logs in
	// as User.
	Users []*server.User
	User  string
	// Mappings, set before Restart, are the account's subject mappings:
	// Start sets a sharded bus's when the default settings ask for shards.
	Mappings []broker.Mapping
}

// Start starts a server on a free loopback port with a store under t.TempDir().
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, Dir: t.TempDir(), Addr: freeAddr(t), Mappings: defaultMappings(t)}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// URL is the client URL.
func (s *Server) URL() string {
	scheme, login := "nats://", ""
	if s.TLSCert != "" {
		scheme = "tls://"
	}
	for _, u := range s.Users {
		if u.Username == s.User {
			login = u.Username + ":" + u.Password + "@"
		}
	}
	return scheme + login + s.Addr
}

// StartUsers starts a server that admits only users, and whose URL logs in
// as the first of them.
func StartUsers(t testing.TB, users ...*server.User) *Server {
	t.Helper()
	s := &Server{t: t, Dir: t.TempDir(), Addr: freeAddr(t), Users: users, User: users[0].Username, Mappings: defaultMappings(t)}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// StartTLS starts a server that requires TLS with the given PEM files.
func StartTLS(t testing.TB, certFile, keyFile string) *Server {
	t.Helper()
	s := &Server{t: t, Dir: t.TempDir(), Addr: freeAddr(t), TLSCert: certFile, TLSKey: keyFile, Mappings: defaultMappings(t)}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Stop shuts the server down and waits; it may be started again with Restart.
func (s *Server) Stop() {
	if s.NS == nil {
		return
	}
	s.NS.Shutdown()
	s.NS.WaitForShutdown()
	s.NS = nil
}

// Restart starts the server (again) on the same port and store.
func (s *Server) Restart() {
	s.t.Helper()
	users := s.Users
	ns, err := embedded.Start(embedded.Config{Listen: s.Addr, StoreDir: s.Dir, ServerName: "natstest", TLSCert: s.TLSCert, TLSKey: s.TLSKey,
		Mappings: broker.MappingTable(s.Mappings),
		Configure: func(o *server.Options) {
			if len(users) > 0 {
				o.Users = users
			}
		}})
	if err != nil {
		s.t.Fatalf("start nats: %v", err)
	}
	s.NS = ns
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprintf("127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
}

// Bus is a test server with the stream provisioned with its default
// settings, and a connection to it: what most tests of the bus start with.
type Bus struct {
	NS     *Server
	NC     *nats.Conn
	JS     jetstream.JetStream
	Stream broker.StreamConfig
}

// StartBus starts a server, connects (the connection closes with the test)
// and creates the stream.
func StartBus(t testing.TB) *Bus {
	t.Helper()
	return StartBusWith(t, nil)
}

// StartBusWith is StartBus with the stream settings modify makes (a
// sharded bus gets the server's mapping it needs).
func StartBusWith(t testing.TB, modify func(*broker.StreamConfig)) *Bus {
	t.Helper()
	sc := Defaults[broker.StreamConfig](t)
	if modify != nil {
		modify(&sc)
	}
	ns := Start(t)
	ns.Map(sc)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := broker.EnsureBus(context.Background(), js, sc, Logger()); err != nil {
		t.Fatal(err)
	}
	return &Bus{NS: ns, NC: nc, JS: js, Stream: sc}
}

// defaultMappings are the subject mappings the default settings' bus needs:
// none for the single stream.
func defaultMappings(t testing.TB) []broker.Mapping {
	return MappingsFor(Defaults[broker.StreamConfig](t))
}

// MappingsFor are the subject mappings the bus of sc needs.
func MappingsFor(sc broker.StreamConfig) []broker.Mapping {
	if !sc.Layout().Sharded() {
		return nil
	}
	return broker.Mappings(sc.Prefix, sc.Partitions)
}

// Map replaces the server's mappings with those the bus of sc needs, at
// once (as a configuration reload would).
func (s *Server) Map(sc broker.StreamConfig) {
	s.t.Helper()
	acc := s.NS.GlobalAccount()
	for _, m := range s.Mappings {
		acc.RemoveMapping(m.Source)
	}
	s.Mappings = MappingsFor(sc)
	for _, m := range s.Mappings {
		if err := acc.AddMapping(m.Source, m.Destination); err != nil {
			s.t.Fatal(err)
		}
	}
}
