package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/httpserve"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/analytics"
	"github.com/audiofan/audiofan/subscribers/console"
	"github.com/audiofan/audiofan/subscribers/forward"
	"github.com/audiofan/audiofan/subscribers/moderation"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// components are the subscriber roles, in the order serve starts them and
// help lists them. Adding a role is a folder under subscribers/ that exports
// a Component, and a line here: its command, its part of serve, its NATS
// user and its place in the console follow.
var components = []subscribers.Component{
	recording.Component,
	analytics.Component,
	moderation.Component,
	forward.Component,
}

// asParts lists the components' own settings as a command's parts.
func asParts(own []subscribers.Settings) []any {
	out := make([]any, len(own))
	for i, o := range own {
		out[i] = o
	}
	return out
}

// roleNames are the components' role names.
func roleNames() []string {
	out := make([]string, len(components))
	for i, c := range components {
		out[i] = c.Role
	}
	return out
}

// ownSettings are each component's own settings, zero, in components' order.
func ownSettings() []subscribers.Settings {
	out := make([]subscribers.Settings, len(components))
	for i, c := range components {
		out[i] = c.Settings()
	}
	return out
}

// ReaderSettings are shared by every role that reads the bus and serves its
// own listener: the subscriber roles and the console.
type ReaderSettings struct {
	LogSettings
	NATS     NATSSettings
	Stream   broker.StreamRef
	HTTPAddr string `env:"AUDIOFAN_HTTP_ADDR" envDefault:"127.0.0.1:8080" help:"listener of /healthz, /readyz, /metrics and the console"`
	Console  console.Config
}

func (s *ReaderSettings) validate() error {
	if err := s.Stream.Validate(); err != nil {
		return err
	}
	return s.Console.Validate()
}

// SubscriberSettings are shared by every subscriber role run alone.
type SubscriberSettings struct {
	ReaderSettings
	Group subscribers.GroupConfig
}

func (s *SubscriberSettings) validate() error {
	if err := s.ReaderSettings.validate(); err != nil {
		return err
	}
	return s.Group.Validate()
}

// DataDirSettings are read by the command of a role that keeps files.
type DataDirSettings struct {
	DataDir string `env:"AUDIOFAN_DATA_DIR" envDefault:"./data" help:"where the role keeps its files (recordings under recordings/)"`
}

func (s *DataDirSettings) validate() error { return nil }

// componentSettings are the settings of a subscriber role's command: the
// shared ones, then the role's own.
type componentSettings struct {
	SubscriberSettings
	dataDir *DataDirSettings // nil unless the role keeps files
	own     subscribers.Settings
}

func (s *componentSettings) parts() []any {
	if s.dataDir != nil {
		return []any{s.dataDir, s.own}
	}
	return []any{s.own}
}

// componentCommand is the command that runs c alone.
func componentCommand(c subscribers.Component) command {
	summary := c.Summary
	if c.Command != c.Role {
		summary += " (role " + c.Role + ")"
	}
	return command{
		service: true,
		name:    c.Command,
		summary: summary,
		config: func() any {
			s := &componentSettings{own: c.Settings()}
			if c.DataDir {
				s.dataDir = &DataDirSettings{}
			}
			return s
		},
		run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
			s := cfg.(*componentSettings)
			if c.Enabled != nil && !c.Enabled(s.own) {
				return fmt.Errorf("the %s role has nothing to do with these settings (see `audiofan %s --help`)", c.Role, c.Command)
			}
			if s.NATS.URL == "" {
				return fmt.Errorf("NATS_URL is empty: the %s role needs a NATS server (or run `audiofan serve`)", c.Role)
			}
			dataDir := ""
			if s.dataDir != nil {
				dataDir = s.dataDir.DataDir
			}
			return runSubscriber(ctx, s.SubscriberSettings, dataDir, log, c, s.own)
		},
	}
}

// runSubscriber runs one subscriber role alone: its NATS connection, its
// health listener (with the console when it is on), its Group, until ctx
// ends. dataDir is where the role keeps files and the console finds
// recordings on disk, if anywhere.
func runSubscriber(ctx context.Context, s SubscriberSettings, dataDir string, log *slog.Logger, c subscribers.Component, own subscribers.Settings) error {
	reg := newRegistry()
	host, _ := os.Hostname()
	g, stop, err := startGroup(ctx, s.NATS.URL, s.NATS, s.Stream, s.Group, "audiofan "+host, reg, log, c, own, dataDir)
	if err != nil {
		return err
	}
	defer stop()
	root, stopConsole, err := consoleRoot(ctx, besideRecorder(s.Console, own), s.HTTPAddr, dataDir, s.NATS.URL, s.NATS, s.Stream, reg, log)
	if err != nil {
		return err
	}
	defer stopConsole()
	ln, err := net.Listen("tcp", s.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.HTTPAddr, err)
	}
	log.Info("health and metrics", "addr", ln.Addr().String(), "console", root != nil)
	return httpserve.Serve(ctx, ln, g.Ready, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), root)
}

// startGroup connects, starts component c with its settings own, and runs
// its Group until ctx ends; stop waits for the Group to hand its calls over,
// stops the role and closes the connection.
func startGroup(ctx context.Context, url string, nopts NATSSettings, ref broker.StreamRef, gc subscribers.GroupConfig,
	name string, reg prometheus.Registerer, log *slog.Logger, c subscribers.Component, own subscribers.Settings, dataDir string) (*subscribers.Group, func(), error) {
	nc, js, err := connectJS(url, nopts, name, log)
	if err != nil {
		return nil, nil, err
	}
	role, cleanup, err := c.Start(ctx, own, subscribers.Env{JS: js, Published: ref.Published(), DataDir: dataDir, Version: readVersion().Version, Reg: reg, Log: log})
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("%s: %w", c.Role, err)
	}
	if role.Name != c.Role {
		cleanup()
		nc.Close()
		return nil, nil, fmt.Errorf("component %s started role %q", c.Role, role.Name)
	}
	rlog := log.With("component", role.Name)
	g, err := subscribers.NewGroup(gc, role, ref, nc, js, reg, rlog)
	if err != nil {
		cleanup()
		nc.Close()
		return nil, nil, err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := g.Run(ctx); err != nil {
			rlog.Error("subscriber stopped", "err", err)
		}
	})
	return g, func() {
		wg.Wait()
		cleanup()
		drainConn(nc, log)
	}, nil
}
