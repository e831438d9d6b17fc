package receiver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/audiofan/audiofan/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishConfig bounds what a socket may have in flight and says how long a
// message is retried. Memory is bounded twice: per socket by Window, and
// across sockets by MaxPending (the JetStream client's own limit).
type PublishConfig struct {
	Window     int           `env:"AUDIOFAN_PUBLISH_WINDOW" envDefault:"512" help:"messages a socket may have unacknowledged; when full, the socket waits up to AUDIOFAN_PUBLISH_BLOCK, then sheds audio (counted)"`
	MaxPending int           `env:"AUDIOFAN_PUBLISH_MAX_PENDING" envDefault:"16384" help:"messages the receiver may have unacknowledged across all sockets"`
	AckTimeout time.Duration `env:"AUDIOFAN_PUBLISH_ACK_TIMEOUT" envDefault:"5s" help:"how long to wait for JetStream's acknowledgement before sending again"`
	RetryFor   time.Duration `env:"AUDIOFAN_PUBLISH_RETRY_FOR" envDefault:"30s" help:"how long a message is sent again (same Nats-Msg-Id) before it is dropped (counted)"`
	Block      time.Duration `env:"AUDIOFAN_PUBLISH_BLOCK" envDefault:"500ms" help:"how long a socket waits for room in a full window before it sheds audio until half the window is free"`
	Mode       string        `env:"AUDIOFAN_PUBLISH_MODE" envDefault:"async" help:"async: each message acknowledged on its own; batch: the receiver's messages go in fast batches (ADR-50: nats-server 2.14+, the stream gets allow_batched), acknowledged every so many, for far less publishing CPU; auto: batch when the server supports it, else async"`
}

// Publish modes.
const (
	ModeAsync = "async"
	ModeBatch = "batch"
	ModeAuto  = "auto"
)

// Validate checks the settings.
func (c PublishConfig) Validate() error {
	if c.Window < 1 || c.MaxPending < 1 || c.AckTimeout <= 0 || c.RetryFor < 0 || c.Block < 0 {
		return errors.New("AUDIOFAN_PUBLISH_WINDOW, _MAX_PENDING and _ACK_TIMEOUT must be positive, _RETRY_FOR and _BLOCK not negative")
	}
	switch c.Mode {
	case ModeAsync, ModeBatch, ModeAuto:
	default:
		return fmt.Errorf("AUDIOFAN_PUBLISH_MODE %q: want async, batch or auto", c.Mode)
	}
	return nil
}

// Resolve settles Mode against the stream as provisioned (with
// broker.StreamConfig.Batched set unless Mode is async): batch where the
// stream allows fast batches; for auto, async where it does not (a server
// older than 2.14 drops allow_batched); for batch, an error. A stream whose
// de-duplication window is shorter than the longest a message may be sent
// again (RetryFor, then one more AckTimeout) is refused: a message sent
// again after the window would be stored twice.
func (c *PublishConfig) Resolve(stream jetstream.StreamConfig) error {
	if resend := c.RetryFor + c.AckTimeout; stream.Duplicates < resend {
		return fmt.Errorf("stream %s remembers message ids for %s (AUDIOFAN_STREAM_DUPLICATE_WINDOW), less than a message may be sent again "+
			"(AUDIOFAN_PUBLISH_RETRY_FOR %s + AUDIOFAN_PUBLISH_ACK_TIMEOUT %s): lengthen the window or shorten the retries",
			stream.Name, stream.Duplicates, c.RetryFor, c.AckTimeout)
	}
	switch {
	case c.Mode == ModeAsync:
	case stream.AllowBatchPublish:
		c.Mode = ModeBatch
	case c.Mode == ModeBatch:
		return fmt.Errorf("AUDIOFAN_PUBLISH_MODE=batch: stream %s does not allow fast batches (allow_batched: nats-server 2.14 or later, and AUDIOFAN_STREAM_PROVISION=true or an operator to set it)", stream.Name)
	default:
		c.Mode = ModeAsync
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

// ErrTooLarge says a message, once encoded, is larger than the NATS
// server's max_payload: no retry can store it, so it is refused at once.
var ErrTooLarge = errors.New("message larger than the server's max payload")

// msgIDOverhead is what the Nats-Msg-Id header adds to a message's size
// besides the id itself: "NATS/1.0\r\n", "Nats-Msg-Id: ", "\r\n", "\r\n".
const msgIDOverhead = len("NATS/1.0\r\n") + len(jetstream.MsgIDHeader) + len(": \r\n\r\n")

// wireSize is the size the server counts against max_payload: headers and
// payload.
func wireSize(msg *nats.Msg) int64 {
	n := len(msg.Data) + msgIDOverhead
	for _, v := range msg.Header[jetstream.MsgIDHeader] {
		n += len(v)
	}
	return int64(n)
}

// pending is one message not yet acknowledged: sent, or held back while the
// pipeline recovers (fut nil).
type pending struct {
	fut      jetstream.PubAckFuture
	msg      *nats.Msg
	kind     broker.Kind
	part     *participant // audio only: whose frame count to bump
	received time.Time
	sent     time.Time // zero: never sent
	deadline time.Time // retry until then
	// settled is set when the outcome was read off fut ahead of its turn
	// (by resume); result is that outcome.
	settled bool
	result  error
}

// resendPause paces resends of a message JetStream refused at once (no
// responders while a stream leader is elected, a client with no connection).
const resendPause = 100 * time.Millisecond

// publisher is what a socket needs of JetStream (jetstream.JetStream has it).
type publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
	PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// pipeline publishes one socket's messages in order with a bounded window of
// unacknowledged ones. It is used by the socket's goroutine alone: no locks.
// A failed publish is sent again in place with the same Nats-Msg-Id, so
// JetStream stores it once however often it is sent.
//
// Order survives a failure: once a message is refused (no stream leader
// during an election, a lost connection), the pipeline recovers. New
// messages are held, unsent, in the window, and only the oldest is sent
// again until the stream takes it. Then everything behind it is sent again
// in order. Sending new messages meanwhile would store them ahead of the
// ones being retried: a stream reordered for the whole election.
type pipeline struct {
	js     publisher
	cfg    PublishConfig
	m      *metrics
	connID string
	// maxPayload is the server's max_payload when the socket opened (0:
	// unknown, not checked): larger messages are refused before sending.
	maxPayload int64
	n          uint64 // messages given a Nats-Msg-Id so far
	q          []pending
	head       int
	// shedding is set when the window stayed full for cfg.Block: audio is then
	// dropped at once, so the socket keeps pace with ACS during an outage,
	// until half the window is free again.
	shedding bool
	// recovering: a message was refused; new ones are held (see pipeline).
	recovering bool
	events     pipelineEvents
}

// pipelineEvents hears what the pipeline does not handle itself: it is the
// socket, which knows how to say it in the log.
type pipelineEvents interface {
	notStored(kind broker.Kind, err error)
	shedding(on bool)
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

// msgPool recycles messages with their header map and payload buffer. A
// message goes back once JetStream has settled it (stored, or given up for
// good): the client keeps no reference to it after that, so the hot path
// allocates no payload and no header per frame.
var msgPool = sync.Pool{New: func() any {
	return &nats.Msg{Header: nats.Header{jetstream.MsgIDHeader: make([]string, 1)}, Data: make([]byte, 0, 1024)}
}}

// maxPooledPayload keeps a rare large message from pinning a large buffer.
const maxPooledPayload = 4 << 10

// newMsg returns a message for subject with the next Nats-Msg-Id and an empty
// payload buffer to append to.
func (p *pipeline) newMsg(subject string) *nats.Msg {
	m := msgPool.Get().(*nats.Msg)
	m.Subject = subject
	m.Header[jetstream.MsgIDHeader][0] = p.msgID()
	m.Data = m.Data[:0]
	return m
}

func recycle(m *nats.Msg) {
	if cap(m.Data) > maxPooledPayload {
		m.Data = nil
	}
	m.Subject, m.Reply = "", ""
	msgPool.Put(m)
}

// publish sends msg, which comes from newMsg and is the pipeline's from here
// on. When the window is full it waits for room: up to cfg.Block for audio
// frames (then the socket sheds audio, see shedding), up to the retry
// deadline for anything else.
func (p *pipeline) publish(ctx context.Context, msg *nats.Msg, kind broker.Kind, part *participant, received time.Time, droppable bool) error {
	p.reap(ctx)
	if err := p.tooLarge(msg); err != nil {
		return err
	}
	if p.shedding && p.inflight() <= p.cfg.Window/2 {
		p.shedding = false
		p.events.shedding(false)
	}
	if p.inflight() >= p.cfg.Window {
		if droppable && p.shedding {
			recycle(msg)
			return errWindowFull
		}
		wait := p.cfg.RetryFor + p.cfg.AckTimeout
		if droppable {
			wait = p.cfg.Block
		}
		deadline := time.Now().Add(wait)
		for p.inflight() >= p.cfg.Window {
			left := time.Until(deadline)
			if left <= 0 || ctx.Err() != nil {
				if droppable {
					p.shedding = true
					p.events.shedding(true)
				}
				recycle(msg)
				return errWindowFull
			}
			p.settleHead(ctx, left)
		}
	}
	// The process-wide limit (MaxPending) gets the same patience as the
	// socket's own window.
	stall := p.cfg.Block
	if !droppable {
		stall = p.cfg.AckTimeout
	}
	if p.recovering {
		p.q = append(p.q, pending{msg: msg, kind: kind, part: part, received: received, deadline: received.Add(p.cfg.RetryFor)})
		p.m.inflight.Inc()
		return nil
	}
	fut, err := p.send(msg, stall)
	if errors.Is(err, nats.ErrMaxPayload) {
		// The server's limit is lower than when the socket opened (a
		// reconnect to another server).
		p.m.dropped.WithLabelValues(dropTooLarge).Inc()
		recycle(msg)
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	if err != nil {
		if droppable {
			recycle(msg)
			return fmt.Errorf("%w: %v", errWindowFull, err)
		}
		// Not sent at all (disconnected with a full reconnect buffer, say):
		// keep it in line; the retry below sends it again.
		fut = nil
	}
	p.q = append(p.q, pending{fut: fut, msg: msg, kind: kind, part: part, received: received, sent: time.Now(), deadline: received.Add(p.cfg.RetryFor)})
	p.m.inflight.Inc()
	return nil
}

// tooLarge refuses, counted, a message the server could never store,
// rather than send it and retry it as if the connection were down while
// the socket's audio waits behind it.
func (p *pipeline) tooLarge(msg *nats.Msg) error {
	if p.maxPayload <= 0 {
		return nil
	}
	if n := wireSize(msg); n > p.maxPayload {
		p.m.dropped.WithLabelValues(dropTooLarge).Inc()
		recycle(msg)
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, p.maxPayload)
	}
	return nil
}

// send publishes asynchronously. The client's own retries are off: ours
// (settleHead) are the only ones, so once a future has settled nothing else
// still holds the message and it can be recycled.
func (p *pipeline) send(msg *nats.Msg, stall time.Duration) (jetstream.PubAckFuture, error) {
	if stall > 0 { // 0: the client's default (200 ms)
		return p.js.PublishMsgAsync(msg, jetstream.WithRetryAttempts(0), jetstream.WithStallWait(stall))
	}
	return p.js.PublishMsgAsync(msg, jetstream.WithRetryAttempts(0))
}

// reap settles the messages at the head of the queue that are done, in
// order, without waiting.
func (p *pipeline) reap(ctx context.Context) {
	for p.head < len(p.q) && p.settleHead(ctx, 0) {
	}
}

// settleHead handles the head's outcome, waiting up to wait for it; false
// means it is still open (or was sent again).
func (p *pipeline) settleHead(ctx context.Context, wait time.Duration) bool {
	h := &p.q[p.head]
	var err error
	switch {
	case h.settled:
		err = h.result
	case h.fut == nil:
		// Never got out (the client refused it): send it again below.
		err = nats.ErrConnectionReconnecting
	case wait > 0:
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-h.fut.Ok():
		case err = <-h.fut.Err():
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	default:
		select {
		case <-h.fut.Ok():
		case err = <-h.fut.Err():
		default:
			return false
		}
	}
	if err == nil {
		p.m.storedBy[h.kind].Inc()
		p.m.ackLatency.Observe(time.Since(h.received).Seconds())
		if h.part != nil {
			h.part.stored++
		}
		recycle(h.msg)
		p.pop()
		p.resume()
		return true
	}
	if retryable(err) && time.Now().Before(h.deadline) {
		p.recovering = true
		if pause := resendPause - time.Since(h.sent); pause > 0 {
			if wait <= 0 {
				h.fut = nil // resend at a later look
				return false
			}
			select {
			case <-time.After(min(pause, wait)):
			case <-ctx.Done():
				return false
			}
		}
		if !h.sent.IsZero() {
			p.m.retries.Inc()
		}
		h.sent, h.settled, h.result = time.Now(), false, nil
		fut, serr := p.send(h.msg, 0)
		if serr != nil {
			fut = nil
		}
		h.fut = fut
		return false
	}
	reason := dropRejected
	if errors.Is(err, nats.ErrMaxPayload) {
		reason = dropTooLarge
	} else if retryable(err) {
		reason = dropPublishFailed
	}
	p.m.dropped.WithLabelValues(reason).Inc()
	p.events.notStored(h.kind, err)
	recycle(h.msg)
	p.pop()
	p.resume()
	return true
}

// resume ends a recovery once the oldest message is settled: what is behind
// it, held or refused, is sent again in order. A message still awaiting its
// answer from before the failure stops the walk (sending what follows it
// could store that ahead of it); the walk goes on when it settles.
func (p *pipeline) resume() {
	if !p.recovering {
		return
	}
	for i := p.head; i < len(p.q); i++ {
		e := &p.q[i]
		if e.fut != nil && !e.settled {
			select {
			case <-e.fut.Ok():
				e.settled, e.result = true, nil
			case err := <-e.fut.Err():
				e.settled, e.result = true, err
			default:
				return // still awaited
			}
		}
		if e.settled && (e.result == nil || !retryable(e.result)) {
			continue // stored, or refused for good: settled at its turn
		}
		if !e.sent.IsZero() {
			p.m.retries.Inc()
		}
		e.sent, e.settled, e.result = time.Now(), false, nil
		fut, err := p.send(e.msg, 0)
		if err != nil {
			// The client would not take it: the head retries it, and
			// the recovery goes on from there.
			e.fut = nil
			return
		}
		e.fut = fut
	}
	p.recovering = false
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

// flush waits until every message is stored or given up (each is retried
// until its own deadline), or ctx ends; what is left then is counted as
// dropped. The caller then publishes "ended", stored after all of them.
func (p *pipeline) flush(ctx context.Context) {
	for p.head < len(p.q) && ctx.Err() == nil {
		// A future settles within one ack timeout of its last send, and there
		// is none after the deadline; the floor keeps a late timer from
		// turning this into a busy loop.
		p.settleHead(ctx, max(time.Until(p.q[p.head].deadline)+p.cfg.AckTimeout, 10*time.Millisecond))
	}
	for p.head < len(p.q) {
		p.m.dropped.WithLabelValues(dropPublishFailed).Inc()
		p.events.notStored(p.q[p.head].kind, ctx.Err())
		recycle(p.q[p.head].msg)
		p.pop()
	}
	p.q = nil
}

// publishAwait sends a message and waits up to one ack timeout for it to be
// stored, so that nothing is left in flight after it; if JetStream does not
// answer in time it joins the queue like any message (same Nats-Msg-Id), and
// the socket goes on reading.
func (p *pipeline) publishAwait(ctx context.Context, subject string, kind broker.Kind, data []byte, received time.Time) error {
	p.reap(ctx)
	msg := p.newMsg(subject)
	msg.Data = append(msg.Data, data...)
	if err := p.tooLarge(msg); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	actx, cancel := context.WithTimeout(ctx, p.cfg.AckTimeout)
	_, err := p.js.PublishMsg(actx, msg, jetstream.WithRetryAttempts(3), jetstream.WithRetryWait(100*time.Millisecond))
	cancel()
	if err == nil {
		p.m.storedBy[kind].Inc()
		recycle(msg)
		return nil
	}
	if !retryable(err) {
		recycle(msg)
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	p.m.retries.Inc()
	p.q = append(p.q, pending{msg: msg, kind: kind, received: received, sent: time.Now(), deadline: received.Add(p.cfg.RetryFor)})
	p.m.inflight.Inc()
	return nil
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
	return errors.Is(err, errBatchEnded) || // its batch ended first: sent again in the next
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs)
}
