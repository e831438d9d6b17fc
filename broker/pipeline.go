package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishConfig bounds what a socket may have in flight and says how long a
// message is retried. Memory is bounded twice: per socket by Window, and
// across sockets by MaxPending (the JetStream client's own limit).
type PublishConfig struct {
	Window     int           `env:"AUDIOFAN_PUBLISH_WINDOW" envDefault:"512" help:"messages a socket may have unacknowledged; past it new audio frames are dropped (counted)"`
	MaxPending int           `env:"AUDIOFAN_PUBLISH_MAX_PENDING" envDefault:"16384" help:"messages the receiver may have unacknowledged across all sockets"`
	AckTimeout time.Duration `env:"AUDIOFAN_PUBLISH_ACK_TIMEOUT" envDefault:"5s" help:"how long to wait for JetStream's acknowledgement before sending again"`
	RetryFor   time.Duration `env:"AUDIOFAN_PUBLISH_RETRY_FOR" envDefault:"30s" help:"how long a message is sent again (same Nats-Msg-Id) before it is dropped (counted)"`
}

// Validate checks the settings.
func (c PublishConfig) Validate() error {
	if c.Window < 1 || c.MaxPending < 1 || c.AckTimeout <= 0 || c.RetryFor < 0 {
		return errors.New("AUDIOFAN_PUBLISH_WINDOW, _MAX_PENDING and _ACK_TIMEOUT must be positive, _RETRY_FOR not negative")
	}
	return nil
}

// NewJetStream wraps nc for publishing with the limits of c.
func NewJetStream(nc *nats.Conn, c PublishConfig) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(c.MaxPending), jetstream.WithPublishAsyncTimeout(c.AckTimeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nil
}

// errWindowFull says a message was not sent because the socket's window (or
// the client's) had no room.
var errWindowFull = errors.New("publish window full")

// pending is one message sent and not yet acknowledged.
type pending struct {
	fut      jetstream.PubAckFuture
	msg      *nats.Msg
	kind     string
	part     *participant // audio only: whose frame count to bump
	received time.Time
	deadline time.Time // retry until then
}

// pipeline publishes one socket's messages in order with a bounded window of
// unacknowledged ones. It is used by the socket's goroutine alone: no locks.
// A failed publish is sent again in place with the same Nats-Msg-Id, so
// JetStream stores it once however often it is sent.
type pipeline struct {
	js      jetstream.JetStream
	cfg     PublishConfig
	m       *metrics
	connID  string
	n       uint64 // messages given a Nats-Msg-Id so far
	q       []pending
	head    int
	stall   time.Duration
	onError func(kind string, err error, dropped bool)
}

func (p *pipeline) inflight() int { return len(p.q) - p.head }

// msgID returns the next Nats-Msg-Id of this socket: <connection>/<n>.
func (p *pipeline) msgID() string {
	p.n++
	var buf [64]byte
	b := append(buf[:0], p.connID...)
	b = append(b, '/')
	return string(strconv.AppendUint(b, p.n, 10))
}

func (p *pipeline) newMsg(subject string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{p.msgID()}}}
}

// publish sends a message. Audio frames (droppable) are dropped when the
// window is full; anything else waits for room, up to the retry deadline.
func (p *pipeline) publish(ctx context.Context, subject, kind string, data []byte, part *participant, received time.Time, droppable bool) error {
	p.reap(ctx, false)
	if p.inflight() >= p.cfg.Window {
		if droppable {
			return errWindowFull
		}
		if !p.waitHead(ctx) && p.inflight() >= p.cfg.Window {
			return errWindowFull
		}
	}
	msg := p.newMsg(subject, data)
	stall := time.Duration(0)
	if !droppable {
		stall = p.cfg.AckTimeout
	}
	fut, err := p.send(msg, stall)
	if err != nil {
		if droppable {
			return fmt.Errorf("%w: %v", errWindowFull, err)
		}
		// Not sent at all (disconnected with a full reconnect buffer, say):
		// keep it in line; the retry below sends it again.
		fut = nil
	}
	p.q = append(p.q, pending{fut: fut, msg: msg, kind: kind, part: part, received: received, deadline: received.Add(p.cfg.RetryFor)})
	p.m.inflight.Inc()
	return nil
}

func (p *pipeline) send(msg *nats.Msg, stall time.Duration) (jetstream.PubAckFuture, error) {
	opts := []jetstream.PublishOpt{jetstream.WithRetryAttempts(3), jetstream.WithRetryWait(100 * time.Millisecond)}
	if stall > 0 {
		opts = append(opts, jetstream.WithStallWait(stall))
	}
	return p.js.PublishMsgAsync(msg, opts...)
}

// reap settles acknowledged messages at the head of the queue, in order. With
// block it waits for each one; otherwise it stops at the first still open.
func (p *pipeline) reap(ctx context.Context, block bool) {
	for p.head < len(p.q) {
		if !p.settleHead(ctx, block) {
			return
		}
	}
}

// waitHead blocks until the head settles (stored, or dropped for good).
func (p *pipeline) waitHead(ctx context.Context) bool {
	if p.head >= len(p.q) {
		return true
	}
	return p.settleHead(ctx, true)
}

// settleHead handles the head's outcome; false means it is still open.
func (p *pipeline) settleHead(ctx context.Context, block bool) bool {
	h := &p.q[p.head]
	var err error
	if h.fut == nil {
		err = nats.ErrConnectionReconnecting
	} else if block {
		var timer <-chan time.Time
		if wait := time.Until(h.deadline); wait > 0 {
			t := time.NewTimer(wait + p.cfg.AckTimeout)
			defer t.Stop()
			timer = t.C
		}
		select {
		case ack := <-h.fut.Ok():
			_ = ack
		case err = <-h.fut.Err():
		case <-timer:
			err = jetstream.ErrAsyncPublishTimeout
		case <-ctx.Done():
			return false
		}
	} else {
		select {
		case <-h.fut.Ok():
		case err = <-h.fut.Err():
		default:
			return false
		}
	}
	if err == nil {
		p.m.stored.WithLabelValues(h.kind).Inc()
		p.m.ackLatency.Observe(time.Since(h.received).Seconds())
		if h.part != nil {
			h.part.stored++
		}
		p.pop()
		return true
	}
	if retryable(err) && time.Now().Before(h.deadline) {
		p.m.retries.Inc()
		if h.fut == nil && block {
			// Nothing in flight to wait on: pace the resends.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return false
			}
		}
		fut, serr := p.send(h.msg, 0)
		if serr != nil {
			fut = nil
		}
		h.fut = fut
		return false
	}
	reason := dropRejected
	if retryable(err) {
		reason = dropPublishFailed
	}
	p.m.dropped.WithLabelValues(reason).Inc()
	p.onError(h.kind, err, true)
	p.pop()
	return true
}

func (p *pipeline) pop() {
	p.q[p.head] = pending{}
	p.head++
	p.m.inflight.Dec()
	if p.head == len(p.q) {
		p.q, p.head = p.q[:0], 0
	} else if p.head > 64 && p.head*2 > len(p.q) {
		n := copy(p.q, p.q[p.head:])
		clear(p.q[n:])
		p.q, p.head = p.q[:n], 0
	}
}

// flush waits until every message is stored or given up, then publishes msg
// (the ended lifecycle) synchronously, so it is stored after all of them.
func (p *pipeline) flush(ctx context.Context) {
	for p.head < len(p.q) {
		if !p.settleHead(ctx, true) && ctx.Err() != nil {
			break
		}
	}
	// What is left could not be settled before ctx ended: count it.
	for p.head < len(p.q) {
		p.m.dropped.WithLabelValues(dropPublishFailed).Inc()
		p.onError(p.q[p.head].kind, ctx.Err(), true)
		p.pop()
	}
	if cap(p.q) > 0 {
		p.q = nil
	}
}

// publishSync sends one message and waits for its acknowledgement, retrying
// with the same Nats-Msg-Id until the retry deadline.
func (p *pipeline) publishSync(ctx context.Context, subject, kind string, data []byte) error {
	msg := p.newMsg(subject, data)
	deadline := time.Now().Add(p.cfg.RetryFor)
	for {
		actx, cancel := context.WithTimeout(ctx, p.cfg.AckTimeout)
		_, err := p.js.PublishMsg(actx, msg, jetstream.WithRetryAttempts(3), jetstream.WithRetryWait(100*time.Millisecond))
		cancel()
		if err == nil {
			p.m.stored.WithLabelValues(kind).Inc()
			return nil
		}
		if !retryable(err) || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("publish %s: %w", subject, err)
		}
		p.m.retries.Inc()
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("publish %s: %w", subject, ctx.Err())
		}
	}
}

// retryable tells failures that may pass (a timeout, no leader yet, a lost
// connection) from refusals that will not (a message too large, a stream
// that does not take the subject).
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503 is "JetStream not available" (no leader, restarting).
		return apiErr.Code == 503 || apiErr.Code == 0
	}
	return errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs)
}
