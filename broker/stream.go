package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamRef names the stream and its subjects: all that a role reading the
// bus needs to know.
type StreamRef struct {
	Name   string `env:"AUDIOFAN_STREAM" envDefault:"CALLS" help:"JetStream stream that stores everything under the prefix"`
	Prefix string `env:"AUDIOFAN_SUBJECT_PREFIX" envDefault:"calls" help:"first subject token"`
}

// Published returns the published subjects of this prefix: what a
// publisher needs. The stored scheme is the bus's (FindBus).
func (c StreamRef) Published() Published { return Published{Prefix: c.Prefix} }

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
	MaxAge   time.Duration `env:"AUDIOFAN_STREAM_MAX_AGE" envDefault:"24h" help:"how long messages are kept (0 = no limit)"`
	MaxBytes ByteSize      `env:"AUDIOFAN_STREAM_MAX_BYTES" envDefault:"10GiB" help:"the bus's size limit (-1 = no limit), split evenly over its shards; past it a shard's oldest messages go"`
	// The window costs the server memory for every message in it (about
	// 200 bytes of heap each: 120 MB at 100 real-time streams for 2 min); it
	// must outlast the longest a publisher sends one message again (the
	// receiver checks it against its AUDIOFAN_PUBLISH_RETRY_FOR).
	Duplicates time.Duration `env:"AUDIOFAN_STREAM_DUPLICATE_WINDOW" envDefault:"1m" help:"how long a Nats-Msg-Id is remembered for de-duplication: at least AUDIOFAN_PUBLISH_RETRY_FOR + AUDIOFAN_PUBLISH_ACK_TIMEOUT (the receiver refuses less); each message in it costs the server about 200 bytes"`
	Replicas   int           `env:"AUDIOFAN_STREAM_REPLICAS" envDefault:"1" help:"stream replicas (3 on a cluster)"`
	Storage    string        `env:"AUDIOFAN_STREAM_STORAGE" envDefault:"file" help:"file or memory"`
	Provision  bool          `env:"AUDIOFAN_STREAM_PROVISION" envDefault:"true" help:"create or update the stream at start; false = it must exist already"`
	// Partitions is fixed for the life of a deployment: changing it moves
	// calls in progress to other partitions (see the README's upgrade notes).
	Partitions int `env:"AUDIOFAN_PARTITIONS" envDefault:"32" help:"partitions the stream spreads calls over (its subject transform); each subscriber role has one consumer per partition, and at most this many busy replicas"`
	// Shards is how many streams the partitions are spread over (see
	// shards.go); more than one needs the server's subject mapping.
	Shards       int `env:"AUDIOFAN_STREAM_SHARDS" envDefault:"1" help:"streams the partitions are spread over, each on its own leader: 1 = the single stream AUDIOFAN_STREAM (no server mapping needed); S > 1 = streams AUDIOFAN_STREAM-<i>of<S>, S dividing AUDIOFAN_PARTITIONS, fed by the NATS account's subject mapping (audiofan nats-accounts); change it with audiofan reshard"`
	MaxConsumers int `env:"AUDIOFAN_STREAM_MAX_CONSUMERS" envDefault:"1000" help:"consumers the stream allows: the roles' partitions x roles, plus the console's and tools' short-lived readers"`
	// Batched asks for allow_batched, for receivers that publish in fast
	// batches (their AUDIOFAN_PUBLISH_MODE). Provisioning never turns it
	// off: another receiver may be batching.
	Batched bool `env:"-"`
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
	case c.Partitions < 1 || c.Partitions > MaxPartitions:
		return fmt.Errorf("AUDIOFAN_PARTITIONS %d: want 1 to %d", c.Partitions, MaxPartitions)
	case c.Layout().Validate() != nil:
		return c.Layout().Validate()
	case c.MaxConsumers < 4*c.Partitions:
		return fmt.Errorf("AUDIOFAN_STREAM_MAX_CONSUMERS %d: want at least 4 x AUDIOFAN_PARTITIONS (%d): three roles' partition consumers and room for readers", c.MaxConsumers, 4*c.Partitions)
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
		// Stored as <prefix>.<partition>.<call>...: see partition.go.
		SubjectTransform: c.Subjects().transform(c.Partitions),
		MaxConsumers:     c.MaxConsumers,
		Retention:        jetstream.LimitsPolicy,
		// Old calls make way for live ones: refusing new audio when full would
		// lose the calls people are on right now.
		Discard:           jetstream.DiscardOld,
		MaxAge:            c.MaxAge,
		MaxBytes:          maxBytes,
		Duplicates:        c.Duplicates,
		Replicas:          c.Replicas,
		Storage:           storage,
		AllowBatchPublish: c.Batched,
	}
}

// EnsureStream creates the stream or brings the settings it owns in line with
// c (when c.Provision), or only checks that it exists. It reads the stream
// first and writes only what differs, so replicas starting together do not
// all propose the same update, and settings an operator added (placement,
// sources, compression, ...) are kept. JetStream's answers that say "not now"
// (a cluster still forming, a meta leader being elected, a request lost on a
// node's death) are retried with a short deadline per attempt until ctx ends;
// anything else, such as a configuration the server refuses, fails at once.
// Waits are logged on log.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c StreamConfig, log *slog.Logger) (jetstream.Stream, error) {
	var s jetstream.Stream
	err := Provision(ctx, log, "stream "+c.Name, func(ctx context.Context) (err error) {
		s, err = ensureStream(ctx, js, c)
		return err
	})
	switch {
	case err == nil:
		return s, nil
	case !c.Provision:
		return nil, fmt.Errorf("stream %s (AUDIOFAN_STREAM_PROVISION=false, so it must exist): %w", c.Name, err)
	}
	return nil, fmt.Errorf("create or update stream %s: %w", c.Name, err)
}

// Provision runs op, one JetStream set-up step (a stream, a consumer, a
// bucket), with a deadline of its own, again and again while it fails with an
// error that means "not now" and ctx lasts. Parts of a deployment start in any
// order and a cluster takes seconds to elect its leaders: failing the process
// on that would only trade a short wait for a restart loop. Each wait is
// logged on log (the first, then every tenth), naming what.
func Provision(ctx context.Context, log *slog.Logger, what string, op func(context.Context) error) error {
	var last error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, provisionAttempt)
		err := op(actx)
		cancel()
		if err == nil || !Transient(err) || ctx.Err() != nil {
			if err != nil && attempt > 1 {
				if last != nil && ctx.Err() != nil && !errors.Is(last, ctx.Err()) {
					// The deadline cut the last attempt short: the one
					// before says what was wrong.
					return fmt.Errorf("after %d attempts: %w (before that: %w)", attempt, err, last)
				}
				return fmt.Errorf("after %d attempts: %w", attempt, err)
			}
			return err
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			last = err
		}
		if attempt == 1 || attempt%10 == 0 {
			log.Warn("JetStream not ready, trying again", "what", what, "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(attempt)*provisionBackoff, 8*provisionBackoff)):
		}
	}
}

// provisionAttempt bounds one JetStream API request of provisioning: a
// request the cluster lost is never answered, and waiting out the caller's
// whole deadline on it would leave no time to ask again.
const provisionAttempt = 5 * time.Second

// provisionBackoff is the first wait between attempts; it grows by as much
// each time, up to eight times.
var provisionBackoff = 250 * time.Millisecond

// errCreateRace: another replica created the stream between our read and
// our create; reading again settles it.
var errCreateRace = errors.New("stream created concurrently")

// ErrNotReady marks an error that Provision should wait out like JetStream's
// own "not now" answers: a reader of the stream wraps the stream's absence
// in it, since the receiver that creates the stream may start later.
var ErrNotReady = errors.New("not ready")

func ensureStream(ctx context.Context, js jetstream.JetStream, c StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, c.Name)
	if !c.Provision || err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return s, err
	}
	want := c.jetstream()
	if err != nil { // not found
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, errCreateRace
		}
		return s, err
	}
	cfg, changed := overlay(s.CachedInfo().Config, want)
	if !changed {
		return s, nil
	}
	return js.UpdateStream(ctx, cfg)
}

// overlay sets the fields audiofan owns on the stream's current
// configuration, leaving the rest as found, and says whether any changed.
func overlay(cur, want jetstream.StreamConfig) (jetstream.StreamConfig, bool) {
	same := cur.Description == want.Description && slices.Equal(cur.Subjects, want.Subjects) &&
		cur.Retention == want.Retention && cur.Discard == want.Discard && cur.MaxAge == want.MaxAge &&
		cur.MaxBytes == want.MaxBytes && cur.Duplicates == want.Duplicates && cur.Replicas == want.Replicas &&
		cur.Storage == want.Storage && cur.MaxConsumers == want.MaxConsumers &&
		reflect.DeepEqual(cur.SubjectTransform, want.SubjectTransform) && (cur.AllowBatchPublish || !want.AllowBatchPublish)
	cur.AllowBatchPublish = cur.AllowBatchPublish || want.AllowBatchPublish
	cur.SubjectTransform, cur.MaxConsumers = want.SubjectTransform, want.MaxConsumers
	cur.Description, cur.Subjects, cur.Retention, cur.Discard = want.Description, want.Subjects, want.Retention, want.Discard
	cur.MaxAge, cur.MaxBytes, cur.Duplicates, cur.Replicas, cur.Storage = want.MaxAge, want.MaxBytes, want.Duplicates, want.Replicas, want.Storage
	return cur, !same
}

// Transient says whether a JetStream error means "not now" rather than
// "no": no answer in time, nobody to answer, JetStream not (yet) running, or
// the server's 503 family (cluster unavailable, no peers for placement yet).
func Transient(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, errCreateRace), errors.Is(err, ErrNotReady), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, jetstream.ErrNoStreamResponse):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503
	}
	return false
}

// Subjects returns the subject scheme of the bus as configured,
// partitions included.
func (c StreamConfig) Subjects() Subjects { return c.Layout().Subjects() }

// Layout is the bus's layout as configured.
func (c StreamConfig) Layout() Layout {
	return Layout{Stream: c.Name, Prefix: c.Prefix, Partitions: c.Partitions, Shards: c.Shards}
}
