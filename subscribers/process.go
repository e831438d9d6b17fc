package subscribers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
)

// Handler does a role's work for one decoded message. It must be idempotent:
// a message is delivered again when the handler fails, panics, or its
// replica dies before acknowledging.
type Handler func(ctx context.Context, m Message) error

// permanent marks an error that no retry can cure.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks err as one no retry can cure: the message is terminated
// (never delivered again) instead of retried.
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

// Outcomes of one delivery, the label of the processed metric.
const (
	OutcomeAcked      = "acked"
	OutcomeRetried    = "retried"
	OutcomeTerminated = "terminated" // permanent failure or undecodable
	OutcomeGaveUp     = "gave_up"    // still failing after MaxDeliver attempts
	OutcomeCanceled   = "canceled"   // stopping: left for redelivery
	OutcomeAckLost    = "ack_lost"   // handled, but the server did not confirm the ack: it comes again
)

// ProcessorConfig is the ack policy of a role.
type ProcessorConfig struct {
	// Role names the role in metrics and logs (recording, analytics, ...).
	Role string
	// Backoff is the delay before each retry (the last one repeats).
	Backoff []time.Duration
	// MaxDeliver is how many deliveries a failing message gets before it is
	// terminated and counted as given up. It should match the consumer's own
	// MaxDeliver, which guards the same limit on the server.
	MaxDeliver int
}

// Processor applies the ack policy every role shares: decode, call the
// handler (recovering a panic), ack on success, retry with back-off on
// failure, terminate what can never succeed, count every outcome. Write it
// once, here, so no role gets it subtly wrong.
type Processor struct {
	cfg     ProcessorConfig
	subj    broker.Subjects
	handler Handler
	log     *slog.Logger
	outcome *prometheus.CounterVec
	seconds prometheus.Observer
}

// NewProcessor builds the processor of a role; its metrics register on reg.
func NewProcessor(cfg ProcessorConfig, subj broker.Subjects, h Handler, reg prometheus.Registerer, log *slog.Logger) (*Processor, error) {
	if cfg.Role == "" || cfg.MaxDeliver < 1 || len(cfg.Backoff) == 0 {
		return nil, errors.New("processor: role, MaxDeliver and Backoff are required")
	}
	p := &Processor{cfg: cfg, subj: subj, handler: h, log: log.With("role", cfg.Role),
		outcome: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_subscriber_messages_total",
			Help:        "Deliveries handled by a subscriber role, by outcome: acked, retried, terminated, gave_up, canceled.",
			ConstLabels: prometheus.Labels{"role": cfg.Role}}, []string{"outcome"}),
	}
	h2 := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "audiofan_subscriber_handle_seconds",
		Help: "Time a role's handler takes for one message.", ConstLabels: prometheus.Labels{"role": cfg.Role},
		Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10)})
	p.seconds = h2
	if err := reg.Register(p.outcome); err != nil {
		return nil, fmt.Errorf("processor metrics: %w", err)
	}
	if err := reg.Register(h2); err != nil {
		return nil, fmt.Errorf("processor metrics: %w", err)
	}
	for _, o := range []string{OutcomeAcked, OutcomeRetried, OutcomeTerminated, OutcomeGaveUp, OutcomeCanceled, OutcomeAckLost} {
		p.outcome.WithLabelValues(o)
	}
	return p, nil
}

// Process handles one delivery and settles it with the server. It returns
// the outcome; the error is the handler's (or the decoding's), for callers
// that keep their own account.
func (p *Processor) Process(ctx context.Context, msg jetstream.Msg) (string, error) {
	delivered := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		delivered = md.NumDelivered
	}
	m, err := Decode(p.subj, msg.Subject(), msg.Data())
	if err != nil {
		p.log.Warn("undecodable message terminated", "subject", msg.Subject(), "err", err)
		return p.settle(OutcomeTerminated, msg.Term())
	}
	start := time.Now()
	err = p.call(ctx, m)
	p.seconds.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		// DoubleAck: the server confirms the ack. When it does not, the
		// message will be delivered again (the handler is idempotent), and
		// that is worth knowing rather than counting as done.
		if aerr := msg.DoubleAck(context.WithoutCancel(ctx)); aerr != nil {
			return p.settle(OutcomeAckLost, aerr)
		}
		return p.settle(OutcomeAcked, nil)
	case ctx.Err() != nil:
		// Stopping: hand the message straight to the next owner.
		_ = msg.Nak()
		return p.settle(OutcomeCanceled, err)
	case IsPermanent(err):
		p.log.Warn("message failed for good; terminated", "subject", msg.Subject(), "err", err)
		return p.settle(OutcomeTerminated, errors.Join(err, msg.Term()))
	case delivered >= uint64(p.cfg.MaxDeliver):
		p.log.Error("message still failing after every retry; terminated", "subject", msg.Subject(), "deliveries", delivered, "err", err)
		return p.settle(OutcomeGaveUp, errors.Join(err, msg.Term()))
	}
	delay := p.cfg.Backoff[min(int(delivered)-1, len(p.cfg.Backoff)-1)]
	p.log.Debug("message failed; retrying", "subject", msg.Subject(), "deliveries", delivered, "in", delay, "err", err)
	return p.settle(OutcomeRetried, errors.Join(err, msg.NakWithDelay(delay)))
}

func (p *Processor) settle(outcome string, err error) (string, error) {
	p.outcome.WithLabelValues(outcome).Inc()
	return outcome, err
}

// call runs the handler, turning a panic into an error so one bad message
// cannot take the replica down.
func (p *Processor) call(ctx context.Context, m Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("handler panicked", "subject", m.Subject, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrPanic, r)
		}
	}()
	return p.handler(ctx, m)
}
