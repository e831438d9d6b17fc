package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/embedded"
	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/console"
)

// NATSSettings are shared by every role that connects to NATS.
type NATSSettings struct {
	URL      string `env:"NATS_URL" help:"NATS servers (comma-separated); empty: serve starts its embedded server, tap and sim use nats://127.0.0.1:4222 (a local serve)"`
	Creds    string `env:"NATS_CREDS" help:"NATS credentials file (JWT and NKey seed) of this role's user"`
	User     string `env:"NATS_USER" help:"NATS user of this role (with NATS_PASSWORD): the users of deploy/nats/accounts.conf"`
	Password string `env:"NATS_PASSWORD" help:"password of NATS_USER"`
	TLSCA    string `env:"NATS_TLS_CA" help:"PEM CA that signs the NATS servers' certificates (use tls:// URLs)"`
	TLSCert  string `env:"NATS_TLS_CERT" help:"PEM client certificate, for servers that verify clients"`
	TLSKey   string `env:"NATS_TLS_KEY" help:"PEM key of NATS_TLS_CERT"`
}

// options turns the settings into NATS client options.
func (s NATSSettings) options() []nats.Option {
	var opts []nats.Option
	if s.Creds != "" {
		opts = append(opts, nats.UserCredentials(s.Creds))
	}
	if s.User != "" {
		opts = append(opts, nats.UserInfo(s.User, s.Password))
	}
	if s.TLSCA != "" {
		opts = append(opts, nats.RootCAs(s.TLSCA))
	}
	if s.TLSCert != "" || s.TLSKey != "" {
		opts = append(opts, nats.ClientCert(s.TLSCert, s.TLSKey))
	}
	return opts
}

// ReceiverSettings are the settings of `audiofan receiver`.
type ReceiverSettings struct {
	LogSettings
	NATS     NATSSettings
	Stream   broker.StreamConfig
	Receiver receiver.Config
	Console  console.Config
	// reshard moves a bus laid out otherwise at start (serve's embedded
	// server, which nothing else uses) instead of refusing it.
	reshard bool
}

func (s *ReceiverSettings) validate() error {
	if err := s.Stream.Validate(); err != nil {
		return err
	}
	if err := s.Console.Validate(); err != nil {
		return err
	}
	return s.Receiver.Validate()
}

// ServeSettings add the embedded server and every subscriber role to the
// receiver's.
type ServeSettings struct {
	ReceiverSettings
	DataDir  string `env:"AUDIOFAN_DATA_DIR" envDefault:"./data" help:"embedded JetStream store (jetstream/) and recordings (recordings/)"`
	Embedded embedded.Config
	Group    subscribers.GroupConfig
	// own are the components' own settings, in their order.
	own []subscribers.Settings
}

func (s *ServeSettings) parts() []any { return asParts(s.own) }

func (s *ServeSettings) validate() error {
	if err := s.ReceiverSettings.validate(); err != nil {
		return err
	}
	return s.Group.Validate()
}

var receiverCommand = command{
	service: true,
	name:    "receiver",
	summary: "accept ACS WebSocket streams and publish them to JetStream at NATS_URL",
	config:  func() any { return &ReceiverSettings{} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
		s := cfg.(*ReceiverSettings)
		if s.NATS.URL == "" {
			return errors.New("NATS_URL is empty: the receiver role needs a NATS server (or run `audiofan serve`)")
		}
		reg := newRegistry()
		// No recordings folder here: the console plays them from the
		// Object Store.
		root, stopConsole, err := consoleRoot(ctx, s.Console, s.Receiver.HTTPAddr, "", s.NATS.URL, s.NATS, s.Stream.StreamRef, reg, log)
		if err != nil {
			return err
		}
		defer stopConsole()
		return runReceiver(ctx, s, s.NATS.URL, s.NATS, reg, log, root)
	},
}

var serveCommand = command{
	service: true,
	name:    "serve",
	summary: "run everything in one process, on an embedded NATS server unless NATS_URL is set",
	config:  func() any { return &ServeSettings{own: ownSettings()} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
		s := cfg.(*ServeSettings)
		url := s.NATS.URL
		if url == "" {
			s.Embedded.StoreDir = filepath.Join(s.DataDir, "jetstream")
			if l := s.Stream.Layout(); l.Sharded() {
				s.Embedded.Mappings = broker.MappingTable(broker.Mappings(l.Prefix, l.Partitions))
			}
			ns, err := embedded.Start(s.Embedded)
			if err != nil {
				return err
			}
			ns.SetLoggerV2(natsLogger{log.With("component", "nats")}, false, false, false)
			defer func() {
				ns.Shutdown()
				ns.WaitForShutdown()
				log.Info("embedded NATS stopped")
			}()
			url = ns.ClientURL()
			log.Info("embedded NATS with JetStream", "url", url, "store", s.Embedded.StoreDir)
		}
		nopts := s.NATS
		if s.NATS.URL == "" {
			nopts = NATSSettings{} // the embedded server: no credentials, no TLS
		}
		// The subscribers outlive the receiver's drain, so the calls it
		// ends are finished here too; then they hand over what is left.
		reg := newRegistry()
		subCtx, stopSubs := context.WithCancel(context.WithoutCancel(ctx))
		defer stopSubs()
		var stops []func()
		defer func() {
			stopSubs()
			for _, stop := range stops {
				stop()
			}
		}()
		// In components' order, so a start-up that fails does so the same
		// way every time.
		for i, c := range components {
			if c.Enabled != nil && !c.Enabled(s.own[i]) {
				continue
			}
			_, stop, err := startGroup(subCtx, url, nopts, s.Stream.StreamRef, s.Group, "audiofan serve "+c.Role, reg, log, c, s.own[i], s.DataDir)
			if err != nil {
				return err
			}
			stops = append(stops, stop)
		}
		root, stopConsole, err := consoleRoot(ctx, besideRecorder(s.Console, s.own...), s.Receiver.HTTPAddr, s.DataDir, url, nopts, s.Stream.StreamRef, reg, log)
		if err != nil {
			return err
		}
		defer stopConsole()
		// The embedded server is this process's alone: a changed
		// AUDIOFAN_STREAM_SHARDS moves its bus at start.
		s.ReceiverSettings.reshard = s.NATS.URL == ""
		return runReceiver(ctx, &s.ReceiverSettings, url, nopts, reg, log, root)
	},
}

// runReceiver connects, provisions the stream and serves until ctx ends, then
// drains the receiver and the NATS connection it opened.
// Paths it does not serve go to root, when not nil.
func runReceiver(ctx context.Context, s *ReceiverSettings, url string, nopts NATSSettings, reg *prometheus.Registry, log *slog.Logger, root http.Handler) error {
	nc, err := connect(url, nopts, "audiofan receiver "+s.Receiver.Instance, log)
	if err != nil {
		return err
	}
	defer drainConn(nc, log)
	js, err := receiver.NewJetStream(nc, s.Receiver.Publish)
	if err != nil {
		return err
	}
	sc := s.Stream
	sc.Batched = s.Receiver.Publish.Mode != receiver.ModeAsync
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ensure := broker.EnsureBus
	if s.reshard {
		ensure = broker.Reshard
	}
	bus, err := ensure(sctx, js, sc, log)
	cancel()
	if err != nil {
		return err
	}
	cfg := bus.Config()
	rc := s.Receiver
	asked := rc.Publish.Mode
	if err := rc.Publish.Resolve(cfg); err != nil {
		return err
	}
	if asked != rc.Publish.Mode {
		log.Info("publishing", "mode", rc.Publish.Mode, "asked", asked)
	}
	log.Info("bus ready", "layout", bus.Layout.String(), "streams", bus.Layout.Streams(), "retired", bus.Retired, "max_age", cfg.MaxAge,
		"max_bytes", cfg.MaxBytes, "replicas", cfg.Replicas, "publish", rc.Publish.Mode)

	// On a cluster the shards' leaders share the work only if they sit on
	// distinct nodes: every receiver keeps them spread (moving only a
	// misplaced one, so many receivers agree).
	bm, err := broker.NewBusMetrics(reg)
	if err != nil {
		return err
	}
	tendCtx, stopTend := context.WithCancel(ctx)
	defer stopTend()
	go broker.Tend(tendCtx, js, bus, bm, log.With("component", "bus"))
	r := receiver.New(rc, s.Stream, nc, js, reg, log.With("component", "receiver"))
	if root != nil {
		r.Mount(root)
	}
	ln, err := net.Listen("tcp", s.Receiver.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.Receiver.HTTPAddr, err)
	}
	if s.Receiver.Auth.Mode == "none" {
		log.Warn("AUDIOFAN_AUTH=none: anyone who reaches the listener can stream into it", "addr", ln.Addr().String())
	}
	scheme := "ws"
	if s.Receiver.TLS.Cert != "" {
		scheme = "wss"
	}
	log.Info("receiver listening", "ws", scheme+"://"+ln.Addr().String()+"/ws", "auth", s.Receiver.Auth.Mode)
	if root != nil {
		web := "http"
		if scheme == "wss" {
			web = "https"
		}
		log.Info("console", "url", web+"://"+ln.Addr().String()+"/")
	}
	return r.Serve(ctx, ln, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// connect dials NATS for the life of the process: it reconnects forever,
// buffering what is published meanwhile (nats.go's reconnect buffer, bounded).
func connect(url string, s NATSSettings, name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url, append(s.options(),
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own close
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			// nats.go calls it once per episode (a slow consumer is said
			// again only after it recovered), so this does not flood.
			if sub != nil {
				log.Warn("NATS async error", "err", err, "subject", sub.Subject)
				return
			}
			log.Warn("NATS async error", "err", err)
		}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// connectJS is connect, with a JetStream context on the connection.
func connectJS(url string, s NATSSettings, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := connect(url, s, name, log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// drainConn drains nc (letting buffered publishes out) and waits for it to close.
func drainConn(nc *nats.Conn, log *slog.Logger) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		log.Warn("NATS drain timed out; closing")
		nc.Close()
	}
}

// natsLogger sends the embedded server's log to slog.
type natsLogger struct{ log *slog.Logger }

func (l natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l natsLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }

var _ server.Logger = natsLogger{}
