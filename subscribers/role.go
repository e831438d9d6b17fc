package subscribers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// Role is what a subscriber role plugs into a Group: its name and kinds, and
// how to start the state of one call.
type Role struct {
	// Name names the role's consumers, metrics and event ids ("recording").
	// It must be a subject token of letters, digits and '-'.
	Name string
	// Kinds are the message kinds the role reads (broker.KindAudio, ...).
	// Lifecycle messages are always read: they say when a call is over.
	Kinds []broker.Kind
	// NewCall starts the state of one call on this replica. It is called
	// when the replica is given the call: at its start, or on a takeover,
	// when the messages already handled elsewhere are replayed first.
	NewCall func(ctx context.Context, call CallInfo) (CallHandler, error)
	// Ready, when set, says whether what the role writes to (a store) is
	// usable: the replica reports itself unready with its error (and keeps
	// running, so it is ready again once the store is). Nil: always.
	Ready func() error
}

// CallInfo names a call.
type CallInfo struct {
	ID    string      // the call id, as in the payloads' call field
	Token codec.Token // its subject token
}

// CallHandler holds a role's state for one call. The Group calls it from one
// goroutine, with the call's messages in stream order, each once per handler
// (a redelivery of what this handler already applied is filtered out), so it
// needs no locking. A handler for the same call on another replica, after a
// takeover, is first given the messages applied before with Replay set.
type CallHandler interface {
	// Handle applies one message. An error is retried with back-off (the
	// same message, in place, so order holds) up to a limit; Permanent
	// errors are not retried, and ErrUnavailable ones are retried until
	// they stop. out is valid for this call only.
	Handle(ctx context.Context, d Delivery, out *Output) error
	// End is called once, when every socket of the call has ended or it
	// has been idle too long (reason "ended" or "idle"). It writes the
	// role's final output. It is retried like Handle.
	End(ctx context.Context, reason EndReason, out *Output) error
	// Close releases what the handler holds. It is called last, whether
	// the call ended here or was handed to another replica.
	Close() error
}

// Delivery is one message of a call.
type Delivery struct {
	Message
	// Seq is the message's position in its partition: its stream
	// sequence, offset past the retired stream's after a move of the bus
	// (audiofan reshard). The call's messages come in increasing Seq, and
	// a message read again keeps its Seq.
	Seq uint64
	// Stored is when the stream stored the message: the only time an
	// Outbound message carries.
	Stored time.Time
	// Replay is set while a handler catches up, after a takeover, on
	// messages another replica already applied: it rebuilds state, and
	// what it emits is dropped, since the other replica emitted it.
	Replay bool
}

// EndReason is why a call ends, given to CallHandler.End: its own type,
// so it is never compared by accident with a Result (the Group's count of
// how a call finished, which has an "ended" of its own).
type EndReason string

// Reasons a call ends.
const (
	EndEnded EndReason = "ended" // every socket of the call sent its ended message
	EndIdle  EndReason = "idle"  // nothing came for the idle timeout
)

// ErrUnavailable marks a failure of something the role depends on (a full
// disk, an unreachable store), as opposed to a bad message: the message is
// retried until it succeeds, never given up, and the replica reports itself
// not ready meanwhile.
var ErrUnavailable = errors.New("resource unavailable")

// permanent marks an error that no retry can cure.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks err as one no retry can cure: the message is skipped
// (counted as terminated) instead of retried.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}

// ErrPanic wraps a handler's panic; the message is retried like any failure.
var ErrPanic = errors.New("handler panicked")

// Output publishes a handler's events. Each event gets a Nats-Msg-Id made
// of the role, the call, the message being handled and the event's rank
// among those it caused, so an event emitted again (the same message handled
// again after a crash) is stored once. Handlers must therefore emit the same
// events, in the same order, for the same messages: derive them from the
// messages (capture times, not the clock).
//
// The events of one step (a message handled, the call's End) are published
// once the handler has returned from it without error, in the order
// emitted; a publish that fails is retried alone, with the same ids, without
// running the handler again: a handler's state moves once per message, so a
// refused publish can neither skip an event nor apply a message twice.
type Output struct {
	js      jetstream.JetStream
	subj    broker.Subjects
	role    string
	call    CallInfo
	seq     uint64 // of the message being handled; 0 while the call ends
	key     string // names the step in the events' ids when it is not a message's nor End
	n       int
	replay  bool
	pending []*nats.Msg // emitted by this step, not yet stored
}

// reset readies the output for one attempt at a message (seq 0: at End):
// the events it emits are counted from 1 again, so a retry emits the same
// ids as the attempt that failed, and what a failed attempt emitted is
// dropped.
func (o *Output) reset(seq uint64, replay bool) {
	o.seq, o.n, o.replay, o.key = seq, 0, replay, ""
	clear(o.pending)
	o.pending = o.pending[:0]
}

// Emit queues ev for calls.<call>.events.<ev.Source> (the role's name when
// Source is empty); it is published, and waited for, when the handler
// returns from this step without error. During a replay it does nothing.
// It fails only when ev cannot be encoded.
func (o *Output) Emit(_ context.Context, ev codec.Event) error {
	if o.replay {
		return nil
	}
	o.n++
	ev.V = codec.Version
	if ev.Call == "" {
		ev.Call = o.call.ID
	}
	if ev.Source == "" {
		ev.Source = o.role
	}
	if ev.Data == nil {
		ev.Data = map[string]any{}
	}
	data, err := codec.Marshal(&ev)
	if err != nil {
		return Permanent(fmt.Errorf("encode %s event: %w", ev.Type, err))
	}
	msg := &nats.Msg{Subject: o.subj.Events(o.call.Token, ev.Source), Data: data, Header: nats.Header{}}
	key := o.key
	switch {
	case key != "":
	case o.seq > 0:
		key = strconv.FormatUint(o.seq, 10)
	default:
		key = "end"
	}
	msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s/%s/%s/%d", o.role, o.call.Token, key, o.n))
	o.pending = append(o.pending, msg)
	return nil
}

// flush publishes the step's events in order, each once the one before is
// stored; a failure leaves the rest queued for the next flush.
func (o *Output) flush(ctx context.Context) error {
	for len(o.pending) > 0 {
		msg := o.pending[0]
		if _, err := o.js.PublishMsg(ctx, msg); err != nil {
			if broker.Transient(err) {
				// The stream did not answer in time (a burst of calls ending
				// at once, a leader moving): the bus is unavailable, not the
				// event wrong. Waited out like any outage.
				return fmt.Errorf("%w: publish %s: %w", ErrUnavailable, msg.Subject, err)
			}
			return fmt.Errorf("publish %s: %w", msg.Subject, err)
		}
		o.pending[0] = nil
		o.pending = o.pending[1:]
	}
	return nil
}
