package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamRef names the stream and its subjects: all that a role reading the
// bus needs to know.
type StreamRef struct {
	Name   string `env:"AUDIOFAN_STREAM" envDefault:"CALLS" help:"JetStream stream that stores everything under the prefix"`
	Prefix string `env:"AUDIOFAN_SUBJECT_PREFIX" envDefault:"calls" help:"first subject token"`
}

// Subjects returns the subject scheme of this stream's prefix.
func (c StreamRef) Subjects() Subjects { return Subjects{Prefix: c.Prefix} }

// Validate checks the names.
func (c StreamRef) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("AUDIOFAN_STREAM is empty")
	case !validToken(c.Prefix):
		return fmt.Errorf("AUDIOFAN_SUBJECT_PREFIX %q must be one subject token of letters, digits, '-' or '_'", c.Prefix)
	}
	return nil
}

// StreamConfig says how the CALLS stream is named and kept.
type StreamConfig struct {
	StreamRef
	MaxAge     time.Duration `env:"AUDIOFAN_STREAM_MAX_AGE" envDefault:"24h" help:"how long messages are kept (0 = no limit)"`
	MaxBytes   ByteSize      `env:"AUDIOFAN_STREAM_MAX_BYTES" envDefault:"10GiB" help:"stream size limit (-1 = no limit); past it the oldest messages go"`
	Duplicates time.Duration `env:"AUDIOFAN_STREAM_DUPLICATE_WINDOW" envDefault:"2m" help:"how long a Nats-Msg-Id is remembered for de-duplication"`
	Replicas   int           `env:"AUDIOFAN_STREAM_REPLICAS" envDefault:"1" help:"stream replicas (3 on a cluster)"`
	Storage    string        `env:"AUDIOFAN_STREAM_STORAGE" envDefault:"file" help:"file or memory"`
	Provision  bool          `env:"AUDIOFAN_STREAM_PROVISION" envDefault:"true" help:"create or update the stream at start; false = it must exist already"`
}

// Validate checks the settings before anything connects.
func (c StreamConfig) Validate() error {
	if err := c.StreamRef.Validate(); err != nil {
		return err
	}
	switch {
	case c.Storage != "file" && c.Storage != "memory":
		return fmt.Errorf("AUDIOFAN_STREAM_STORAGE %q: want file or memory", c.Storage)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("AUDIOFAN_STREAM_REPLICAS %d: want 1 to 5", c.Replicas)
	case c.Duplicates < 0 || c.MaxAge < 0:
		return errors.New("AUDIOFAN_STREAM_DUPLICATE_WINDOW and AUDIOFAN_STREAM_MAX_AGE must not be negative")
	case c.MaxAge > 0 && c.Duplicates > c.MaxAge:
		return errors.New("AUDIOFAN_STREAM_DUPLICATE_WINDOW must not exceed AUDIOFAN_STREAM_MAX_AGE")
	}
	return nil
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (c StreamConfig) jetstream() jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if c.Storage == "memory" {
		storage = jetstream.MemoryStorage
	}
	maxBytes := int64(c.MaxBytes)
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:        c.Name,
		Description: "audiofan: ACS call audio, transcripts, DTMF, lifecycle and events",
		Subjects:    []string{c.Subjects().All()},
		Retention:   jetstream.LimitsPolicy,
		// Old calls make way for live ones: refusing new audio when full would
		// lose the calls people are on right now.
		Discard:    jetstream.DiscardOld,
		MaxAge:     c.MaxAge,
		MaxBytes:   maxBytes,
		Duplicates: c.Duplicates,
		Replicas:   c.Replicas,
		Storage:    storage,
	}
}

// EnsureStream creates the stream or brings its settings in line with c (when
// c.Provision), or only checks that it exists.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c StreamConfig) (jetstream.Stream, error) {
	if !c.Provision {
		s, err := js.Stream(ctx, c.Name)
		if err != nil {
			return nil, fmt.Errorf("stream %s (AUDIOFAN_STREAM_PROVISION=false, so it must exist): %w", c.Name, err)
		}
		return s, nil
	}
	s, err := js.CreateOrUpdateStream(ctx, c.jetstream())
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", c.Name, err)
	}
	return s, nil
}
