package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
)

type reshardSettings struct {
	LogSettings
	NATS   NATSSettings
	Stream broker.StreamConfig
}

func (s *reshardSettings) validate() error {
	if s.NATS.URL == "" {
		return fmt.Errorf("NATS_URL is empty: reshard moves the bus of a NATS server (serve moves its embedded one at start)")
	}
	return s.Stream.Validate()
}

// reshardCommand moves the bus to AUDIOFAN_STREAM_SHARDS streams: an
// operator's step (the receivers refuse a bus laid out otherwise than
// their settings, so replicas with old settings cannot move it back).
var reshardCommand = command{
	name:    "reshard",
	summary: "move the bus to AUDIOFAN_STREAM_SHARDS streams: retire the old ones (the roles read them to their end, then the shards) and create the new (see the README's \"Changing S\")",
	config:  func() any { return &reshardSettings{} },
	run: func(ctx context.Context, cfg any, log *slog.Logger, stdout io.Writer) error {
		s := cfg.(*reshardSettings)
		nc, err := connect(s.NATS.URL, s.NATS, "audiofan reshard", log)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		bus, err := broker.Reshard(ctx, js, s.Stream, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "the bus is %s: %v; retired, read by the roles to their end (each role's consumers there go once it has; the next move removes a retired stream without consumers): %v\n",
			bus.Layout, bus.Layout.Streams(), bus.Retired)
		if err := broker.CheckMapping(ctx, nc, bus.Subjects()); err != nil {
			fmt.Fprintf(stdout, "the server this ran on does not map as the bus needs yet: reload every node with `audiofan nats-accounts`'s mappings now (%v)\n", err)
		}
		return nil
	},
}
