package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/httpserve"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/console"
	"github.com/audiofan/audiofan/subscribers/recording"
)

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

// RecorderSettings are the settings of `audiofan recorder`.
type RecorderSettings struct {
	SubscriberSettings
	DataDir   string `env:"AUDIOFAN_DATA_DIR" envDefault:"./data" help:"recordings go under recordings/"`
	Recording recording.Config
}

func (s *RecorderSettings) validate() error {
	if err := s.SubscriberSettings.validate(); err != nil {
		return err
	}
	return s.Recording.Validate()
}

var recorderRole = role{
	service: true,
	name:    "recorder",
	summary: "record every call into WAV files (a participant each and a mix), one replica of many",
	config:  func() any { return &RecorderSettings{} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
		s := cfg.(*RecorderSettings)
		if s.NATS.URL == "" {
			return errors.New("NATS_URL is empty: the recorder role needs a NATS server (or run `audiofan serve`)")
		}
		return runSubscriber(ctx, s.SubscriberSettings, s.DataDir, log, func(ctx context.Context, js jetstream.JetStream, reg prometheus.Registerer) (subscribers.Role, func(), error) {
			return newRecorder(ctx, s.Recording, s.DataDir, js, reg, log)
		})
	},
}

// newRecorder builds the recorder role; the returned func removes its spool.
func newRecorder(ctx context.Context, cfg recording.Config, dataDir string, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) (subscribers.Role, func(), error) {
	rec, err := recording.New(ctx, cfg, dataDir, js, reg, log)
	if err != nil {
		return subscribers.Role{}, nil, err
	}
	return rec.Role(), func() {
		if err := rec.Close(); err != nil {
			log.Warn("recorder spool", "err", err)
		}
	}, nil
}

// roleFactory builds a role on a connection; the func it returns cleans up.
type roleFactory func(ctx context.Context, js jetstream.JetStream, reg prometheus.Registerer) (subscribers.Role, func(), error)

// runSubscriber runs one subscriber role alone: its NATS connection, its
// health listener (with the console when it is on), its Group, until ctx
// ends. dataDir is where the console finds recordings on disk, if anywhere.
func runSubscriber(ctx context.Context, s SubscriberSettings, dataDir string, log *slog.Logger, build roleFactory) error {
	reg := newRegistry()
	host, _ := os.Hostname()
	g, stop, err := startGroup(ctx, s.NATS.URL, s.NATS, s.Stream, s.Group, "audiofan "+host, reg, log, build)
	if err != nil {
		return err
	}
	defer stop()
	root, stopConsole, err := consoleRoot(ctx, s.Console, s.HTTPAddr, dataDir, s.NATS.URL, s.NATS, s.Stream, reg, log)
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

// startGroup connects and starts a role's Group; stop waits for it to hand
// its calls over (after ctx ends) and closes the connection.
func startGroup(ctx context.Context, url string, nopts NATSSettings, ref broker.StreamRef, gc subscribers.GroupConfig,
	name string, reg prometheus.Registerer, log *slog.Logger, build roleFactory) (*subscribers.Group, func(), error) {
	nc, err := connect(url, nopts, name, log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	role, cleanup, err := build(ctx, js, reg)
	if err != nil {
		nc.Close()
		return nil, nil, err
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
