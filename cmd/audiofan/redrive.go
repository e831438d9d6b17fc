package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/subscribers"
)

type redriveSettings struct {
	LogSettings
	NATS   NATSSettings
	Stream broker.StreamRef
	roles  string
}

func (s *redriveSettings) validate() error {
	if s.NATS.URL == "" {
		s.NATS.URL = "nats://127.0.0.1:4222" // the embedded server of a local `audiofan serve`
	}
	for _, r := range s.list() {
		if !slices.Contains(roleNames(), r) {
			return fmt.Errorf("--role %q: want one of %s", r, strings.Join(roleNames(), ", "))
		}
	}
	return s.Stream.Validate()
}

func (s *redriveSettings) list() []string {
	if s.roles == "" {
		return roleNames()
	}
	return strings.Split(s.roles, ",")
}

// redriveCommand asks the roles' replicas to re-drive their parked calls now:
// what an operator runs once a fault (a disk, a bucket, a permission) is
// repaired, instead of waiting for each call's next backoff.
var redriveCommand = command{
	name:    "redrive",
	summary: "re-drive the calls a role parked (after repairing what failed them), from the bus, now",
	config:  func() any { return &redriveSettings{} },
	flags: func(fs *flag.FlagSet, cfg any) {
		fs.StringVar(&cfg.(*redriveSettings).roles, "role", "", "roles to ask, comma-separated (default: every role); run with the role's NATS user, which may publish its members subject")
	},
	run: func(ctx context.Context, cfg any, log *slog.Logger, stdout io.Writer) error {
		s := cfg.(*redriveSettings)
		nc, err := connect(s.NATS.URL, s.NATS, "audiofan redrive", log)
		if err != nil {
			return err
		}
		defer nc.Close()
		for _, r := range s.list() {
			if err := subscribers.AskRedrive(nc, s.Stream.Name, r); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "asked %s to re-drive its parked calls\n", r)
		}
		return nil
	},
}
