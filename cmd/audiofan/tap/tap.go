// Package tap prints what flows on the bus, decoded, one JSON object a line:
// the `audiofan tap` role, for people debugging a deployment.
package tap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
)

// Config says what to print.
type Config struct {
	// Filter is the subject filter on stored subjects
	// (<prefix>.<partition>.<call>...); empty means the whole prefix.
	Filter string
	// Call, when set, prints only this call (its id, not its token).
	Call string
	// All starts at the first stored message instead of new ones.
	All bool
	// Data prints audio as base64 instead of only its length.
	Data bool
	// Limit stops after this many messages (0 = until ctx ends).
	Limit int
}

// Line is one printed message.
type Line struct {
	Subject string `json:"subject"`
	// Stream is the stream (the shard) that holds it: Sequence is its.
	Stream   string    `json:"stream"`
	Sequence uint64    `json:"seq"`
	Stored   time.Time `json:"stored"`
	Kind     string    `json:"kind"`
	Payload  any       `json:"payload,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// frameJSON shows a frame without its PCM unless asked for.
type frameJSON struct {
	*codec.Frame
	Data    []byte `json:"data,omitempty"`
	DataLen int    `json:"dataLen"`
}

// Run prints the stream's messages matching cfg.Filter to w until ctx ends or
// cfg.Limit is reached. It reads with an ordered consumer, which the server
// forgets when tap goes: it leaves nothing behind.
func Run(ctx context.Context, js jetstream.JetStream, sc broker.StreamRef, cfg Config, w io.Writer) error {
	bus, err := broker.FindBus(ctx, js, sc)
	if err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	subj := bus.Subjects()
	filter := cfg.Filter
	streams := bus.Shards()
	switch {
	case cfg.Call != "":
		tok := codec.EncodeToken(cfg.Call)
		filter = subj.StoredCall(tok)
		streams = []jetstream.Stream{bus.Stream(subj.Partition(tok))} // a call lives in one shard
	case filter == "":
		filter = subj.All()
	}
	policy := jetstream.DeliverNewPolicy
	if cfg.All {
		policy = jetstream.DeliverAllPolicy
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: every reader is gone when Run returns
	defer cancel()
	// One ordered consumer a shard, their messages interleaved as they
	// come: each call's stay in order, as it lives in one shard.
	msgs := make(chan jetstream.Msg, 64)
	errs := make(chan error, len(streams))
	for _, s := range streams {
		name := s.CachedInfo().Config.Name
		// MaxResetAttempts: nats.go recreates an ordered consumer whose
		// server went, by default forever and deaf to ctx.
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: policy,
			MaxResetAttempts: 5})
		if err != nil {
			return fmt.Errorf("tap %s on %s: %w", filter, name, err)
		}
		wg.Go(func() {
			for {
				msg, err := cons.Next(jetstream.FetchContext(ctx))
				if err != nil {
					errs <- err
					return
				}
				select {
				case msgs <- msg:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	enc := json.NewEncoder(w)
	for n := 0; cfg.Limit == 0 || n < cfg.Limit; n++ {
		var msg jetstream.Msg
		select {
		case msg = <-msgs:
		case err := <-errs:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tap: %w", err)
		case <-ctx.Done():
			return nil
		}
		line := Line{Subject: msg.Subject()}
		if md, err := msg.Metadata(); err == nil {
			line.Stream, line.Sequence, line.Stored = md.Stream, md.Sequence.Stream, md.Timestamp.UTC()
		}
		m, err := subscribers.Decode(subj, msg.Subject(), msg.Data())
		switch {
		case err != nil:
			line.Error = err.Error()
		default:
			line.Kind, line.Payload = string(m.Info.Kind), m.Payload
			if f, ok := m.Payload.(*codec.Frame); ok {
				fj := frameJSON{Frame: f, DataLen: len(f.Data)}
				if cfg.Data {
					fj.Data = f.Data
				}
				line.Payload = fj
			}
		}
		if err := enc.Encode(line); err != nil {
			if errors.Is(err, io.ErrClosedPipe) {
				return nil
			}
			return fmt.Errorf("tap: write: %w", err)
		}
	}
	return nil
}
