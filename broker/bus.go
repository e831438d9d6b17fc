package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bus is the bus as found on the server: its layout and its streams, by
// shard. Every reader of stored messages starts from one (FindBus).
type Bus struct {
	Layout  Layout
	streams []jetstream.Stream
	// Retired are the streams of an earlier layout (Reshard): they bind no
	// subjects any more, and hold what was stored before the move, which
	// the roles read to its end.
	Retired []string
}

// Subjects is the bus's subject scheme.
func (b *Bus) Subjects() Subjects { return b.Layout.Subjects() }

// Stream is the stream that holds partition p.
func (b *Bus) Stream(p int) jetstream.Stream { return b.streams[b.Layout.ShardOf(p)] }

// Shards are the bus's streams, by shard.
func (b *Bus) Shards() []jetstream.Stream { return slices.Clone(b.streams) }

// Config is the configuration the shards share (shard 0's, as last read).
func (b *Bus) Config() jetstream.StreamConfig { return b.streams[0].CachedInfo().Config }

// FindBus reads the bus's layout from the server: the stream that holds
// partition 0 says which layout it belongs to, and the others are looked up
// by name. No stream yet, or a shard missing, is ErrNotReady (the receivers
// that create them may start later, or be creating them now); a shard that
// is there but binds the wrong subjects is an error of its own.
func FindBus(ctx context.Context, js jetstream.JetStream, ref StreamRef) (*Bus, error) {
	b, err := findBus(ctx, js, ref, true)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("stream %s: %w: no stream stores %s", ref.Name, ErrNotReady, Layout{Prefix: ref.Prefix, Partitions: 1, Shards: 1}.Subjects().PartitionAll(0))
	}
	return b, nil
}

// findBus is FindBus, with a nil Bus and no error when there is no stream.
// Unless strict, a shard missing or misconfigured is no error: the Bus
// says the layout found, for provisioning to repair (a missing shard's
// stream is nil).
func findBus(ctx context.Context, js jetstream.JetStream, ref StreamRef, strict bool) (*Bus, error) {
	names := js.StreamNames(ctx, jetstream.WithStreamListSubject(Layout{Prefix: ref.Prefix, Partitions: 1, Shards: 1}.Subjects().PartitionAll(0)))
	var holder []string
	for n := range names.Name() {
		holder = append(holder, n)
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	holder = slices.DeleteFunc(holder, func(n string) bool { return !ownStream(ref.Name, n) })
	if len(holder) == 0 {
		return nil, nil
	}
	first, err := js.Stream(ctx, holder[0])
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", holder[0], err)
	}
	cfg := first.CachedInfo().Config
	b := &Bus{}
	if l, _, ok := layoutOf(ref.Name, cfg.Name, cfg.Metadata); ok {
		if l.Prefix != ref.Prefix {
			return nil, fmt.Errorf("stream %s holds prefix %q, AUDIOFAN_SUBJECT_PREFIX is %q", cfg.Name, l.Prefix, ref.Prefix)
		}
		b.Layout = l
		b.streams = make([]jetstream.Stream, l.Shards)
		for i := range l.Shards {
			s, err := js.Stream(ctx, l.ShardStream(i))
			if errors.Is(err, jetstream.ErrStreamNotFound) && !strict {
				continue
			}
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, fmt.Errorf("shard %s of %s: %w: %w", l.ShardStream(i), l, ErrNotReady, err)
			}
			if err != nil {
				return nil, fmt.Errorf("shard %s: %w", l.ShardStream(i), err)
			}
			c := s.CachedInfo().Config
			if err := l.checkShard(i, c.Subjects, c.SubjectTransform != nil); err != nil && strict {
				return nil, err
			}
			b.streams[i] = s
		}
	} else {
		subj, err := SubjectsOf(ref, cfg)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotReady, err)
		}
		b.Layout = Layout{Stream: ref.Name, Prefix: ref.Prefix, Partitions: subj.partitions, Shards: 1}
		b.streams = []jetstream.Stream{first}
	}
	all := js.StreamNames(ctx)
	for n := range all.Name() {
		if ownStream(ref.Name, n) && !slices.Contains(b.Layout.Streams(), n) {
			b.Retired = append(b.Retired, n)
		}
	}
	if err := all.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	slices.Sort(b.Retired)
	return b, nil
}

// ErrLayoutDiffers is EnsureBus finding the bus laid out otherwise than its
// settings ask: only Reshard moves it.
var ErrLayoutDiffers = errors.New("the bus is laid out otherwise")

// EnsureBus puts the bus's streams in place as c lays them out (or, with
// c.Provision off, checks they are), and checks that the server maps
// published subjects as the layout needs. A bus laid out otherwise is
// ErrLayoutDiffers: replicas with old settings must not move it back and
// forth, so moving it is a step of its own (Reshard).
func EnsureBus(ctx context.Context, js jetstream.JetStream, c StreamConfig, log *slog.Logger) (*Bus, error) {
	want := c.Layout()
	var b *Bus
	err := Provision(ctx, log, "bus "+want.String(), func(ctx context.Context) (err error) {
		b, err = ensureBus(ctx, js, c, false, log)
		return err
	})
	if err != nil {
		if !c.Provision {
			return nil, fmt.Errorf("bus %s (AUDIOFAN_STREAM_PROVISION=false, so it must exist as AUDIOFAN_STREAM_SHARDS=%d and AUDIOFAN_PARTITIONS=%d lay it out): %w",
				want, want.Shards, want.Partitions, err)
		}
		return nil, fmt.Errorf("bus %s: %w", want, err)
	}
	return b, nil
}

// Reshard moves the bus to the layout c asks for: it retires the streams of
// the layout found (they keep what they hold and bind nothing; the roles
// read them to their end) and creates the new ones. Between the two (a
// stream update and a create per stream), publishes find no stream and
// are sent again by their publishers (the receivers', for AUDIOFAN_PUBLISH_RETRY_FOR). Moving
// between the single stream and shards also changes the server's mapping:
// to shards, the mapping may be added before or after (a publish not yet
// mapped finds no stream and is sent again); back to one stream, Reshard
// waits for the mapping to be gone before creating it, since that stream's
// own transform would partition mapped subjects twice.
func Reshard(ctx context.Context, js jetstream.JetStream, c StreamConfig, log *slog.Logger) (*Bus, error) {
	if !c.Provision {
		return nil, errors.New("reshard needs AUDIOFAN_STREAM_PROVISION=true: it creates and changes streams")
	}
	var b *Bus
	err := Provision(ctx, log, "reshard to "+c.Layout().String(), func(ctx context.Context) (err error) {
		b, err = ensureBus(ctx, js, c, true, log)
		return err
	})
	return b, err
}

func ensureBus(ctx context.Context, js jetstream.JetStream, c StreamConfig, move bool, log *slog.Logger) (*Bus, error) {
	want := c.Layout()
	if !c.Provision {
		found, err := FindBus(ctx, js, c.StreamRef)
		if err != nil {
			return nil, err
		}
		if found.Layout != want {
			return nil, fmt.Errorf("%w: it is %s; AUDIOFAN_STREAM_SHARDS=%d and AUDIOFAN_PARTITIONS=%d ask for %s",
				ErrLayoutDiffers, found.Layout, want.Shards, want.Partitions, want)
		}
		return found, CheckMapping(ctx, js.Conn(), want.Subjects())
	}
	found, err := findBus(ctx, js, c.StreamRef, false)
	if err != nil && !errors.Is(err, ErrNotReady) {
		return nil, err
	}
	if err := CheckMapping(ctx, js.Conn(), want.Subjects()); err != nil {
		// Before anything is retired: a move the mapping refuses leaves
		// the bus as it was. A bus of shards may be created before the
		// mapping is (see Reshard); the single stream may not, and a
		// mapping of another partition count never.
		if !want.Sharded() || !move || !errors.Is(err, ErrNotMapped) {
			return nil, err
		}
		log.Warn("the NATS server does not map published subjects yet: publishes are refused until it does", "err", err)
	}
	if found != nil && found.Layout != want {
		switch {
		case !move:
			return nil, fmt.Errorf("%w: it is %s; AUDIOFAN_STREAM_SHARDS=%d and AUDIOFAN_PARTITIONS=%d ask for %s: move it with `audiofan reshard` (see the operations guide)",
				ErrLayoutDiffers, found.Layout, want.Shards, want.Partitions, want)
		case found.Layout.Partitions != want.Partitions:
			return nil, fmt.Errorf("%w: AUDIOFAN_PARTITIONS is fixed for the bus's life (%d found, %d asked): reshard changes only AUDIOFAN_STREAM_SHARDS",
				ErrLayout, found.Layout.Partitions, want.Partitions)
		}
		if err := dropRead(ctx, js, found.Retired, log); err != nil {
			return nil, err
		}
		for _, s := range found.streams {
			if s == nil {
				continue // a shard missing
			}
			if err := retire(ctx, js, s); err != nil {
				return nil, err
			}
			log.Info("stream retired: it keeps what it holds until read, and stores nothing new", "stream", s.CachedInfo().Config.Name)
		}
		found = nil
	}
	if !want.Sharded() {
		if _, err := ensureStream(ctx, js, c); err != nil {
			return nil, err
		}
		return findBusAfter(ctx, js, c)
	}
	for i := range want.Shards {
		if _, err := ensureShard(ctx, js, c, i); err != nil {
			return nil, fmt.Errorf("shard %s: %w", want.ShardStream(i), err)
		}
	}
	return findBusAfter(ctx, js, c)
}

// findBusAfter reads the bus back after provisioning, as a reader finds it.
func findBusAfter(ctx context.Context, js jetstream.JetStream, c StreamConfig) (*Bus, error) {
	b, err := FindBus(ctx, js, c.StreamRef)
	if err != nil {
		return nil, err
	}
	if b.Layout != c.Layout() {
		return nil, fmt.Errorf("%w: after provisioning the bus is %s, not %s", errCreateRace, b.Layout, c.Layout())
	}
	return b, nil
}

// ensureShard creates shard i or brings what audiofan owns of it in line.
func ensureShard(ctx context.Context, js jetstream.JetStream, c StreamConfig, i int) (jetstream.Stream, error) {
	l := c.Layout()
	want := c.jetstream()
	want.Name = l.ShardStream(i)
	want.Description = fmt.Sprintf("audiofan: ACS calls' audio, transcripts, DTMF, lifecycle and events; shard %d of %d (partitions %v)",
		i, l.Shards, l.ShardPartitions(i))
	want.Subjects, want.SubjectTransform, want.Metadata = l.shardSubjects(i), nil, l.metadata(i)
	if want.MaxBytes > 0 {
		// AUDIOFAN_STREAM_MAX_BYTES is the bus's: each shard holds as
		// many calls, so as much of it.
		want.MaxBytes /= int64(l.Shards)
	}
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, errCreateRace
		}
		return s, err
	}
	if err != nil {
		return nil, err
	}
	cur := s.CachedInfo().Config
	cfg, changed := overlay(cur, want)
	md := maps.Clone(cur.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	for k, v := range want.Metadata {
		if md[k] != v {
			md[k], changed = v, true
		}
	}
	if _, ok := md[mdRetired]; ok {
		delete(md, mdRetired) // made the bus again after a move back
		changed = true
	}
	cfg.Metadata = md
	if !changed {
		return s, nil
	}
	return js.UpdateStream(ctx, cfg)
}

// ErrNotDrained is a move refused while the last move's retired streams
// are still being read: a role whose consumer is still on one has not read
// it to its end.
var ErrNotDrained = errors.New("a retired stream is not read to its end")

// dropRead removes the retired streams every role has read to its end
// (each role's partition removes its consumer there once it has), so that
// a move never leaves a partition two retired streams to read, and a move
// back to a layout of before gets fresh streams of its names. One still
// read refuses the move, naming the consumers.
func dropRead(ctx context.Context, js jetstream.JetStream, retired []string, log *slog.Logger) error {
	for _, name := range retired {
		s, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("retired stream %s: %w", name, err)
		}
		var readers []string
		list := s.ListConsumers(ctx)
		for ci := range list.Info() {
			if ci.Config.Durable != "" {
				readers = append(readers, ci.Name)
			}
		}
		if err := list.Err(); err != nil {
			return fmt.Errorf("retired stream %s: %w", name, err)
		}
		if len(readers) > 0 {
			slices.Sort(readers)
			return fmt.Errorf("%w: stream %s, retired by the last move, still has the consumers %v: their roles must run until they have read it (they remove their consumers then), or the consumers be removed by hand if those roles are gone",
				ErrNotDrained, name, readers)
		}
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("remove retired stream %s: %w", name, err)
		}
		log.Info("retired stream removed: every role had read it to its end", "stream", name)
	}
	return nil
}

// retire makes s store nothing new: it binds only its own name (a stream
// must bind something); the rest, what it holds included, stays until its
// retention or an operator removes it. The single stream keeps its
// transform: the server stores what it had queued before the update after
// it, with the transform then in place (removed, a message published in
// that moment was stored unpartitioned, where no partition reads it).
func retire(ctx context.Context, js jetstream.JetStream, s jetstream.Stream) error {
	cfg := s.CachedInfo().Config
	cfg.Subjects = []string{cfg.Name}
	cfg.Metadata = maps.Clone(cfg.Metadata)
	if cfg.Metadata == nil {
		cfg.Metadata = map[string]string{}
	}
	cfg.Metadata[mdRetired] = time.Now().UTC().Format(time.RFC3339)
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("retire stream %s: %w", cfg.Name, err)
	}
	return nil
}
