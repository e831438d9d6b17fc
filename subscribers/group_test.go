package subscribers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// digest is the simplest stateful role: a running hash of a call's messages
// in order, reported every 100 messages and at the end. Any message lost,
// applied twice or out of order changes its events.
type digest struct {
	n   int
	sum []byte
}

func (d *digest) Handle(ctx context.Context, m subscribers.Delivery, out *subscribers.Output) error {
	h := sha256.New()
	h.Write(d.sum)
	h.Write([]byte(m.Subject))
	if f, ok := m.Payload.(*codec.Frame); ok {
		h.Write(f.Data)
	}
	d.sum = h.Sum(nil)
	if d.n++; d.n%100 == 0 {
		return out.Emit(ctx, codec.Event{Type: "progress", Data: map[string]any{"n": d.n, "sum": hex.EncodeToString(d.sum)}})
	}
	return nil
}

func (d *digest) End(ctx context.Context, reason string, out *subscribers.Output) error {
	return out.Emit(ctx, codec.Event{Type: "summary", Data: map[string]any{"n": d.n, "sum": hex.EncodeToString(d.sum), "reason": reason}})
}

func (d *digest) Close() error { return nil }

func digestRole() subscribers.Role {
	return subscribers.Role{Name: "digest", Kinds: []string{broker.KindAudio, broker.KindTranscript},
		NewCall: func(context.Context, subscribers.CallInfo) (subscribers.CallHandler, error) { return &digest{}, nil }}
}

func TestConformanceDigest(t *testing.T) {
	conformance.Run(t, conformance.Spec{
		NewRole: func(*testing.T, string, *nats.Conn, jetstream.JetStream) subscribers.Role { return digestRole() },
		Result:  func(*testing.T, string, jetstream.JetStream, subscribers.CallInfo) any { return nil },
	})
}
