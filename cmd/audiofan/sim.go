package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/cmd/audiofan/sim"
)

// SimSettings are the settings of `audiofan sim`: flags for the simulation,
// the environment for the bus it verifies against.
type SimSettings struct {
	LogSettings
	NATS   NATSSettings
	Stream broker.StreamRef
	sim    sim.Config
	wav    string
	json   bool
}

func (s *SimSettings) validate() error {
	if s.wav != "" {
		s.sim.WAV = strings.Split(s.wav, ",")
	}
	if s.NATS.URL == "" {
		s.NATS.URL = "nats://127.0.0.1:4222"
	}
	if err := s.sim.Validate(); err != nil {
		return err
	}
	return s.Stream.Validate()
}

// errFailed makes the process exit non-zero after the summary said why.
var errFailed = errors.New("simulation failed")

var simCommand = command{
	name:    "sim",
	summary: "a fake ACS: stream calls into a receiver (and, with --verify, check what the bus stored)",
	config: func() any {
		s := &SimSettings{sim: sim.Defaults()}
		return s
	},
	flags: func(fs *flag.FlagSet, cfg any) {
		s := cfg.(*SimSettings)
		c := &s.sim
		fs.StringVar(&c.URL, "url", c.URL, "the receiver's WebSocket endpoint")
		fs.IntVar(&c.Calls, "calls", c.Calls, "concurrent calls")
		fs.IntVar(&c.Participants, "participants", c.Participants, "speakers per call (one stream each, unless --mixed)")
		fs.BoolVar(&c.Mixed, "mixed", c.Mixed, "one mixed stream per call instead of one per participant")
		fs.IntVar(&c.Rate, "rate", c.Rate, "sample rate: 16000 or 24000")
		fs.DurationVar(&c.Duration, "duration", c.Duration, "call length (with --wav, 0 plays each file once)")
		fs.DurationVar(&c.Ramp, "ramp", c.Ramp, "spread the call starts over this long")
		fs.BoolVar(&c.Realtime, "realtime", c.Realtime, "pace each socket on a 20 ms clock; false: as fast as the receiver reads")
		fs.StringVar(&s.wav, "wav", "", "comma-separated WAV files (16-bit PCM, mono or stereo, resampled if needed), one per participant, cycled")
		fs.BoolVar(&c.Transcripts, "transcription", c.Transcripts, "open a transcription socket per call and send intermediate and final results")
		fs.BoolVar(&c.DTMF, "dtmf", c.DTMF, "send a DTMF tone every 5 s of call time")
		fs.StringVar(&c.Bearer, "bearer", c.Bearer, "send this JWT as Authorization: Bearer")
		fs.StringVar(&c.Secret, "secret", c.Secret, "send this secret as the token query parameter")
		fs.StringVar(&c.CAFile, "ca", c.CAFile, "PEM CA of a wss:// receiver's certificate (default: the system's roots)")
		fs.StringVar(&c.CallPrefix, "call-prefix", c.CallPrefix, "call ids are <prefix>-<n> (default sim-<random>)")
		fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the synthetic conversations")
		fs.BoolVar(&c.Verify, "verify", c.Verify, "read the bus (NATS_URL) while sending and report what was stored; exit 1 on any loss")
		fs.DurationVar(&c.Settle, "settle", c.Settle, "with --verify, how long to wait for the last messages to be stored")
		fs.BoolVar(&s.json, "json", false, "print the summary as JSON")
	},
	run: func(ctx context.Context, cfg any, log *slog.Logger, stdout io.Writer) error {
		s := cfg.(*SimSettings)
		var js jetstream.JetStream
		if s.sim.Verify {
			nc, err := connect(s.NATS.URL, s.NATS, "audiofan sim", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			if js, err = jetstream.New(nc); err != nil {
				return err
			}
		}
		var progress io.Writer
		if !s.json && isTerminal(os.Stderr) {
			progress = os.Stderr
		}
		sum, err := sim.Run(ctx, s.sim, js, s.Stream, progress)
		if err != nil {
			return err
		}
		if s.json {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(sum); err != nil {
				return err
			}
		} else {
			sum.WriteText(stdout)
		}
		if !sum.OK {
			return errFailed
		}
		return nil
	},
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
