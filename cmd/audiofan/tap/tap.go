// Package tap prints what flows on the bus, decoded, one JSON object a line:
// the `audiofan tap` role, for people debugging a deployment.
package tap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	Subject  string    `json:"subject"`
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
	subj, err := broker.ReadSubjects(ctx, js, sc)
	if err != nil && !errors.Is(err, broker.ErrNotPartitioned) {
		return fmt.Errorf("tap: %w", err)
	}
	filter := cfg.Filter
	switch {
	case cfg.Call != "":
		filter = subj.StoredCall(codec.EncodeToken(cfg.Call))
	case filter == "":
		filter = subj.All()
	}
	policy := jetstream.DeliverNewPolicy
	if cfg.All {
		policy = jetstream.DeliverAllPolicy
	}
	cons, err := js.OrderedConsumer(ctx, sc.Name, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: policy})
	if err != nil {
		return fmt.Errorf("tap %s on %s: %w", filter, sc.Name, err)
	}
	enc := json.NewEncoder(w)
	for n := 0; cfg.Limit == 0 || n < cfg.Limit; n++ {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tap: %w", err)
		}
		line := Line{Subject: msg.Subject()}
		if md, err := msg.Metadata(); err == nil {
			line.Sequence, line.Stored = md.Sequence.Stream, md.Timestamp.UTC()
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
