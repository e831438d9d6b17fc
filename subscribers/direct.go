package subscribers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// Direct applies role to every call the stream holds, in one goroutine,
// from one ordered consumer: no partitions, replicas, checkpoints,
// acknowledgements or retries (a failing step fails the run). It is what a
// role's own work costs, the baseline against which the benchmarks measure
// what the Group adds, and the simplest correct reading of the contract. It
// returns the calls it finished.
func Direct(ctx context.Context, js jetstream.JetStream, ref broker.StreamRef, role Role) (int, error) {
	bus, err := broker.FindBus(ctx, js, ref)
	if err != nil {
		return 0, err
	}
	finished := 0
	// A call lives in one shard: the shards are read one after another.
	for _, s := range bus.Shards() {
		n, err := directShard(ctx, js, s, bus.Subjects(), role)
		finished += n
		if err != nil {
			return finished, err
		}
	}
	return finished, nil
}

// directShard is Direct on one shard's stream.
func directShard(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, subj broker.Subjects, role Role) (int, error) {
	if s.CachedInfo().State.Msgs == 0 {
		return 0, nil
	}
	oc, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj.All()}})
	if err != nil {
		return 0, fmt.Errorf("direct %s: %w", role.Name, err)
	}
	it, err := oc.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return 0, fmt.Errorf("direct %s: %w", role.Name, err)
	}
	defer it.Stop()
	type call struct {
		h     CallHandler
		out   Output
		conns map[string]bool
	}
	calls := map[codec.Token]*call{}
	finished := 0
	step := func(c *call, f func() error) error {
		if err := f(); err != nil {
			return err
		}
		return c.out.flush(ctx)
	}
	end := func(tok codec.Token, c *call, reason EndReason) error {
		c.out.reset(0, false)
		err := step(c, func() error { return c.h.End(ctx, reason, &c.out) })
		delete(calls, tok)
		finished++
		return errors.Join(err, c.h.Close())
	}
	for {
		msg, err := it.Next(jetstream.NextMaxWait(5 * time.Second))
		if err != nil {
			return finished, fmt.Errorf("direct %s: %w", role.Name, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return finished, err
		}
		tok, kind, ok := subj.CallTokenKind(msg.Subject())
		if ok && (kind == broker.KindLifecycle || slices.Contains(role.Kinds, kind)) {
			c := calls[tok]
			if c == nil {
				id, err := codec.DecodeToken(tok)
				if err != nil {
					return finished, err
				}
				info := CallInfo{ID: id, Token: tok}
				h, err := role.NewCall(ctx, info)
				if err != nil {
					return finished, err
				}
				c = &call{h: h, conns: map[string]bool{}, out: Output{js: js, subj: subj, role: role.Name, call: info}}
				calls[tok] = c
			}
			m, err := Decode(subj, msg.Subject(), msg.Data())
			if err != nil {
				return finished, err
			}
			if lc, ok := m.Payload.(*codec.Lifecycle); ok {
				c.conns[lc.Connection] = c.conns[lc.Connection] || lc.Type == codec.LifecycleEnded
			}
			c.out.reset(md.Sequence.Stream, false)
			if err := step(c, func() error {
				return c.h.Handle(ctx, Delivery{Message: m, Seq: md.Sequence.Stream, Stored: md.Timestamp}, &c.out)
			}); err != nil {
				return finished, err
			}
			if allEnded(c.conns) {
				if err := end(tok, c, EndEnded); err != nil {
					return finished, err
				}
			}
		}
		if md.NumPending == 0 {
			break
		}
	}
	for tok, c := range calls {
		if err := end(tok, c, EndIdle); err != nil {
			return finished, err
		}
	}
	return finished, nil
}

// allEnded reports whether every socket of a call that started has ended.
func allEnded(conns map[string]bool) bool {
	if len(conns) == 0 {
		return false
	}
	for _, ended := range conns {
		if !ended {
			return false
		}
	}
	return true
}
