package main

import (
	"context"
	"flag"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/cmd/audiofan/tap"
)

type tapSettings struct {
	LogSettings
	NATS   NATSSettings
	Stream broker.StreamRef
	tap    tap.Config
	call   string
}

func (s *tapSettings) validate() error {
	if s.NATS.URL == "" {
		// The embedded server of a local `audiofan serve`.
		s.NATS.URL = "nats://127.0.0.1:4222"
	}
	s.tap.Call = s.call
	return s.Stream.Validate()
}

var tapCommand = command{
	name:    "tap",
	summary: "print what flows on the bus, decoded, one JSON object a line",
	config:  func() any { return &tapSettings{} },
	flags: func(fs *flag.FlagSet, cfg any) {
		s := cfg.(*tapSettings)
		fs.StringVar(&s.call, "call", "", "only this call (its id, not its token)")
		fs.StringVar(&s.tap.Filter, "subject", "", "subject filter on stored subjects, <prefix>.<partition>.<call token>.<kind>... (default: everything under the prefix)")
		fs.BoolVar(&s.tap.All, "all", false, "start at the first stored message instead of new ones")
		fs.BoolVar(&s.tap.Data, "data", false, "print audio as base64 instead of only its length")
		fs.IntVar(&s.tap.Limit, "n", 0, "stop after this many messages (0 = until interrupted)")
	},
	run: func(ctx context.Context, cfg any, log *slog.Logger, stdout io.Writer) error {
		s := cfg.(*tapSettings)
		nc, err := connect(s.NATS.URL, s.NATS, "audiofan tap", log)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		return tap.Run(ctx, js, s.Stream, s.tap, stdout)
	},
}
