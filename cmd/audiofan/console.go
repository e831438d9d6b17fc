package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/httpserve"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/console"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// ConsoleSettings are the settings of `audiofan console`.
type ConsoleSettings struct {
	ReaderSettings
	DataDir string `env:"AUDIOFAN_DATA_DIR" envDefault:"./data" help:"where the recorders write (recordings/), to play them from disk; else the Object Store"`
}

var consoleCommand = command{
	service: true,
	name:    "console",
	summary: "serve the live web console (calls, meters, transcripts, listening in, recordings, bus health)",
	config:  func() any { return &ConsoleSettings{} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, _ io.Writer) error {
		s := cfg.(*ConsoleSettings)
		if s.NATS.URL == "" {
			return errors.New("NATS_URL is empty: the console role needs a NATS server (or run `audiofan serve`, which serves it at /)")
		}
		on, err := s.Console.Enabled(s.HTTPAddr)
		switch {
		case err != nil:
			return err
		case !on:
			return fmt.Errorf("the console is off on %s: it listens beyond loopback, so it needs AUDIOFAN_CONSOLE_TOKEN or AUDIOFAN_CONSOLE_USER and AUDIOFAN_CONSOLE_PASSWORD (or AUDIOFAN_CONSOLE is off)", s.HTTPAddr)
		}
		reg := newRegistry()
		c, stop, err := startConsole(ctx, s.NATS.URL, s.NATS, s.Stream, s.Console, s.DataDir, reg, log)
		if err != nil {
			return err
		}
		defer stop()
		ln, err := net.Listen("tcp", s.HTTPAddr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.HTTPAddr, err)
		}
		log.Info("console listening", "url", "http://"+ln.Addr().String()+"/")
		return httpserve.Serve(ctx, ln, c.Ready, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), c.Handler())
	},
}

// startConsole connects and runs a console until ctx ends; stop waits for
// it and closes the connection.
func startConsole(ctx context.Context, url string, nopts NATSSettings, ref broker.StreamRef, cfg console.Config, dataDir string,
	reg prometheus.Registerer, log *slog.Logger) (*console.Console, func(), error) {
	deps := console.Deps{Stream: ref, DataDir: dataDir, Reg: reg, Log: log, Roles: roleNames()}
	var blobs *recording.BlobSource
	if cfg.Recordings != "" {
		var err error
		if blobs, err = recording.OpenBlobSource(ctx, cfg.Recordings); err != nil {
			return nil, nil, fmt.Errorf("the console's recordings (AUDIOFAN_CONSOLE_RECORDINGS, or the recorder's store): %w", err)
		}
		deps.Blobs = blobs
	}
	closeBlobs := func() {
		if blobs != nil {
			_ = blobs.Close()
		}
	}
	nc, js, err := connectJS(url, nopts, "audiofan console", log)
	if err != nil {
		closeBlobs()
		return nil, nil, err
	}
	deps.NC, deps.JS = nc, js
	c, err := console.New(cfg, deps)
	if err != nil {
		nc.Close()
		closeBlobs()
		return nil, nil, err
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.Run(ctx); err != nil {
			log.Error("console stopped", "err", err)
		}
	})
	return c, func() {
		wg.Wait()
		drainConn(nc, log)
		closeBlobs()
	}, nil
}

// besideRecorder is the console's settings beside the roles' own: with no
// blob store of its own, it plays the recordings from the recorder's.
func besideRecorder(cfg console.Config, own ...subscribers.Settings) console.Config {
	if cfg.Recordings != "" {
		return cfg
	}
	for _, o := range own {
		if rc, ok := o.(*recording.Config); ok {
			cfg.Recordings = rc.BlobStore()
			break
		}
	}
	return cfg
}

// consoleRoot is the console's handler for a role's listener at addr, or
// nil when the console is off there (logged).
func consoleRoot(ctx context.Context, cfg console.Config, addr, dataDir, url string, nopts NATSSettings, ref broker.StreamRef,
	reg prometheus.Registerer, log *slog.Logger) (http.Handler, func(), error) {
	on, err := cfg.Enabled(addr)
	if err != nil || !on {
		if err == nil && cfg.Mode != "off" {
			log.Info("console off: the listener is not loopback and no console credential is set", "addr", addr)
		}
		return nil, func() {}, err
	}
	c, stop, err := startConsole(ctx, url, nopts, ref, cfg, dataDir, reg, log)
	if err != nil {
		return nil, nil, err
	}
	return c.Handler(), stop, nil
}
