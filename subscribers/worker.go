package subscribers

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// ackEvery bounds how long applied messages wait for their acknowledgement:
// one ack (AckAll) covers everything applied before it, so a busy call costs
// a few acks a second, not one a message.
const ackEvery = 200 * time.Millisecond

// worker is a replica's work on one call: it holds the call's leases and, when
// the server pins this replica to the call's consumer, applies its messages.
type worker struct {
	g      *Group
	call   CallInfo
	name   string
	leases []jetstream.Msg // guarded by g.mu

	owned   atomic.Bool   // applying the call (pinned)
	pending atomic.Uint64 // the call's messages stored but not yet delivered

	// State of the call on this replica, touched only by run's goroutine.
	h         CallHandler
	pin       string // the pin id the server gave this replica's pulls
	processed uint64 // stream sequence of the last message applied
	last      jetstream.Msg
	acked     uint64 // stream sequence last acknowledged
	dseq      uint64 // the consumer's delivery sequence of the last message delivered here
	ackedAt   time.Time
	active    time.Time // when the last message came
	checked   time.Time // when the pin was last confirmed, or the consumer last looked at while not owning
	conns     map[string]bool
	unavail   bool
	out       Output // reused for every message: handlers must not keep it
}

func newWorker(g *Group, call CallInfo, lease jetstream.Msg) *worker {
	return &worker{g: g, call: call, name: CallConsumer(g.role.Name, call.Token), leases: []jetstream.Msg{lease},
		conns: map[string]bool{}, out: Output{js: g.js, subj: g.subj.Prefix + "." + call.Token + "." + broker.KindEvents,
			role: g.role.Name, call: call}}
}

func (w *worker) run(ctx context.Context) {
	result := w.work(ctx)
	if w.h != nil {
		if err := w.h.Close(); err != nil {
			w.g.log.Warn("closing call state", "call", w.call.ID, "err", err)
		}
	}
	w.setUnavailable(false)
	w.owned.Store(false)
	w.pending.Store(0)
	for _, l := range w.g.remove(w) {
		if result == ResultReleased {
			_ = l.Nak() // at once: another replica takes the call
		} else {
			_ = l.Ack()
		}
	}
	w.g.m.calls.WithLabelValues(result).Inc()
	w.g.log.Debug("call left", "call", w.call.ID, "result", result)
}

// consumerConfig is the call's own consumer: its messages of the kinds the
// role reads, one pinned client at a time.
func (w *worker) consumerConfig() jetstream.ConsumerConfig {
	subj := w.g.subj
	filters := []string{subj.Lifecycle(w.call.Token)}
	for _, k := range w.g.role.Kinds {
		switch k {
		case broker.KindOutbound:
			filters = append(filters, subj.Outbound(w.call.Token))
		case broker.KindLifecycle:
		default:
			filters = append(filters, subj.Prefix+"."+w.call.Token+"."+k+".>")
		}
	}
	return jetstream.ConsumerConfig{
		Durable:        w.name,
		Description:    "audiofan " + w.g.role.Name + " of call " + w.call.ID,
		FilterSubjects: filters,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckAllPolicy,
		// A message delivered to a replica that died comes back after a
		// lease, which is also when the server gives the call to another.
		AckWait:           w.g.cfg.Lease,
		MaxDeliver:        -1,
		MaxAckPending:     20_000,
		InactiveThreshold: max(time.Hour, 2*w.g.cfg.IdleTimeout),
		PriorityPolicy:    jetstream.PriorityPolicyPinned,
		PriorityGroups:    []string{ownerGroup},
		PinnedTTL:         w.g.cfg.Lease,
	}
}

// work holds the call until it is finished (here or elsewhere) or ctx ends.
func (w *worker) work(ctx context.Context) string {
	for {
		if ctx.Err() != nil {
			return ResultReleased
		}
		cons, err := w.g.stream.CreateOrUpdateConsumer(ctx, w.consumerConfig())
		if err != nil {
			w.g.log.Warn("call consumer", "call", w.call.ID, "err", err)
			sleep(ctx, time.Second)
			continue
		}
		// Checked after the consumer exists: a replica that finishes the
		// call marks it done before deleting the consumer, so either this
		// sees the mark, or it joined the consumer before the delete and
		// hears of the delete below.
		done, err := w.g.isDone(ctx, w.call.Token)
		if err != nil {
			w.g.log.Warn("call state", "call", w.call.ID, "err", err)
			sleep(ctx, time.Second)
			continue
		}
		if done {
			if w.h == nil {
				_ = w.g.stream.DeleteConsumer(ctx, w.name)
			}
			return ResultElsewhere
		}
		if result := w.consume(ctx, cons); result != "" {
			return result
		}
	}
}

// consume applies the call's messages while the server pins this replica.
// It returns "" when the consumer went away (look again), else the result.
func (w *worker) consume(ctx context.Context, cons jetstream.Consumer) string {
	// The server keeps the pin while pulls come within the lease: pull
	// at least three times a lease.
	expiry := max(time.Second, w.g.cfg.Lease/3)
	it, err := cons.Messages(jetstream.PullPriorityGroup(ownerGroup), jetstream.PullMaxMessages(512),
		jetstream.PullExpiry(expiry), jetstream.PullHeartbeat(max(500*time.Millisecond, expiry/4)))
	if err != nil {
		w.g.log.Debug("call consumer", "call", w.call.ID, "err", err)
		sleep(ctx, 250*time.Millisecond)
		return ""
	}
	// One goroutine waits in Next, without a deadline: nats.go watches the
	// server's heartbeats only while Next waits, and a Next cut short every
	// few hundred milliseconds never notices pull requests lost in a
	// server's failure, so it would wait forever.
	in := &deliveries{ch: make(chan delivery), quit: make(chan struct{})}
	go in.forward(it)
	defer func() {
		it.Stop()
		close(in.quit)
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		var msg jetstream.Msg
		err := nats.ErrTimeout // housekeeping, when nothing came
		select {
		case d, ok := <-in.ch:
			if !ok {
				return ""
			}
			msg, err = d.msg, d.err
		case <-tick.C:
		case <-ctx.Done():
		}
		w.flushAck(ctx, false)
		if ctx.Err() != nil {
			return w.release(cons, it, in, msg)
		}
		if err != nil {
			switch {
			case errors.Is(err, nats.ErrTimeout):
				if w.h == nil && w.orphaned(ctx, cons) {
					if !w.own(ctx, cons, nil) {
						return w.release(cons, it, in, nil)
					}
					w.pin = ""
					if w.complete() {
						return w.finish(ctx, cons, EndEnded)
					}
					continue
				}
				if !w.stillPinned(ctx, cons, false) {
					continue
				}
				if w.h != nil && time.Since(w.active) > w.g.cfg.IdleTimeout {
					return w.finish(ctx, cons, EndIdle)
				}
			case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrMsgIteratorClosed):
				return ""
			default:
				w.g.log.Debug("call consumer", "call", w.call.ID, "err", err)
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		w.pending.Store(md.NumPending)
		if pin := msg.Headers().Get("Nats-Pin-Id"); pin != "" {
			w.pin = pin
		}
		seq := md.Sequence.Stream
		switch {
		case w.h == nil:
			if !w.own(ctx, cons, md) {
				return w.release(cons, it, in, msg)
			}
			if w.complete() {
				return w.finish(ctx, cons, EndEnded)
			}
		case seq > w.processed && (md.NumDelivered > 1 || md.Sequence.Consumer != w.dseq+1):
			// Not the next delivery after the last one: deliveries were
			// lost on the way (a reconnect dropped what the client held),
			// or this is a redelivery, and the server sends those between
			// new messages. Read what may lie between from the stream, so
			// nothing is skipped.
			if err := w.catchUp(ctx, w.processed+1, w.processed); err != nil {
				if ctx.Err() != nil {
					return w.release(cons, it, in, msg)
				}
				w.g.log.Warn("call catch-up", "call", w.call.ID, "err", err)
				continue // the message comes again after the ack wait
			}
			if w.complete() {
				return w.finish(ctx, cons, EndEnded)
			}
		}
		w.dseq = max(w.dseq, md.Sequence.Consumer)
		if seq <= w.processed {
			// Applied already: read while catching up, or redelivered
			// because its ack was pending. Acknowledging it covers the rest.
			if seq > w.acked {
				w.last = msg
			}
			continue
		}
		if err := w.apply(ctx, msg, md, false, true); err != nil {
			return w.release(cons, it, in, msg)
		}
		w.processed, w.last, w.active = seq, msg, time.Now()
		if w.complete() {
			return w.finish(ctx, cons, EndEnded)
		}
		if !w.stillPinned(ctx, cons, false) {
			continue
		}
	}
}

// own starts the call's state on this replica, the first time the server
// delivers to it (first is that message; nil for an orphaned call). Unless
// first is the consumer's very first delivery, the call is read from the
// stream up to its end: what the previous owner applied (up to the
// consumer's acknowledgement floor) is replayed to rebuild state, the rest
// applied. The previous owner may have held messages unacknowledged when it
// stopped; the server redelivers them after the ack wait, between new
// messages, too late for order: read here, they are skipped when they come.
func (w *worker) own(ctx context.Context, cons jetstream.Consumer, first *jetstream.MsgMetadata) bool {
	for attempt := 1; ; attempt++ {
		info, err := cons.Info(ctx)
		var h CallHandler
		if err == nil {
			h, err = w.g.role.NewCall(ctx, w.call)
			if err == nil {
				w.h, w.processed, w.dseq, w.conns = h, 0, 0, map[string]bool{}
				if first == nil || first.NumDelivered > 1 || first.Sequence.Consumer > 1 {
					w.g.m.takeovers.Inc() // the call was delivered elsewhere before
					err = w.catchUp(ctx, 1, info.AckFloor.Stream)
				}
			}
		}
		if err == nil {
			w.setUnavailable(false)
			w.owned.Store(true)
			w.active, w.checked, w.ackedAt = time.Now(), time.Now(), time.Now()
			return true
		}
		if w.h != nil {
			_ = w.h.Close()
			w.h = nil
		}
		if ctx.Err() != nil {
			return false
		}
		w.g.log.Error("cannot start call", "call", w.call.ID, "attempt", attempt, "err", err)
		w.setUnavailable(true)
		sleep(ctx, w.backoff(attempt))
	}
}

// catchUp feeds the handler the call's messages stored from stream sequence
// from to the stream's end, in order: up to floor as a replay, the rest live.
func (w *worker) catchUp(ctx context.Context, from, floor uint64) error {
	cfg := w.consumerConfig()
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: cfg.FilterSubjects}
	if from > 1 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	oc, err := w.g.stream.OrderedConsumer(ctx, occ)
	if err != nil {
		return fmt.Errorf("read call %s: %w", w.call.ID, err)
	}
	it, err := oc.Messages()
	if err != nil {
		return fmt.Errorf("read call %s: %w", w.call.ID, err)
	}
	defer it.Stop()
	start := time.Now()
	replayed := 0
	for {
		msg, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
		if err != nil {
			return fmt.Errorf("read call %s from %d: %w", w.call.ID, from, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		if seq := md.Sequence.Stream; seq > w.processed {
			if err := w.apply(ctx, msg, md, seq <= floor, false); err != nil {
				return err
			}
			w.processed = seq
			if seq <= floor {
				replayed++
			}
		}
		if md.NumPending == 0 {
			break
		}
	}
	if replayed > 0 {
		w.g.log.Info("call taken over", "call", w.call.ID, "replayed", replayed, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// orphaned reports, at most once a lease, whether the call's consumer has
// nothing left to deliver and nobody pinned although part of it was applied:
// its owner stopped after applying everything but before finishing it. The
// server would never deliver to this replica then (there is nothing to
// deliver), so it takes the call over by replaying it.
func (w *worker) orphaned(ctx context.Context, cons jetstream.Consumer) bool {
	if time.Since(w.checked) < w.g.cfg.Lease {
		return false
	}
	w.checked = time.Now()
	info, err := cons.Info(ctx)
	if err != nil || info.NumPending > 0 || info.NumAckPending > 0 || info.AckFloor.Stream == 0 {
		return false
	}
	for _, pg := range info.PriorityGroups {
		if pg.PinnedClientID != "" {
			return false
		}
	}
	w.g.log.Info("call left unfinished by its owner; taking it over", "call", w.call.ID)
	return true
}

// apply decodes a message and has the handler apply it, retrying in place.
// It returns an error only when ctx ends first.
func (w *worker) apply(ctx context.Context, raw jetstream.Msg, md *jetstream.MsgMetadata, replay, ackable bool) error {
	seq := md.Sequence.Stream
	m, err := Decode(w.g.subj, raw.Subject(), raw.Data())
	if err != nil {
		w.g.m.messages.WithLabelValues(OutcomeTerminated).Inc()
		w.g.warn("undecodable message skipped", "call", w.call.ID, "subject", raw.Subject(), "seq", seq, "err", err)
		return nil
	}
	if lc, ok := m.Payload.(*codec.Lifecycle); ok {
		switch lc.Type {
		case codec.LifecycleStarted:
			if _, seen := w.conns[lc.Connection]; !seen {
				w.conns[lc.Connection] = false
			}
		case codec.LifecycleEnded:
			w.conns[lc.Connection] = true
		}
	}
	d := Delivery{Message: m, Seq: seq, Stored: md.Timestamp, Replay: replay}
	var live jetstream.Msg
	if ackable {
		live = raw
	}
	outcome, cause, err := w.retry(ctx, live, &d, "")
	switch outcome {
	case OutcomeGaveUp:
		w.g.log.Error("message still failing after every retry; skipped", "call", w.call.ID, "subject", raw.Subject(), "seq", seq, "err", cause)
	case OutcomeTerminated:
		w.g.warn("message failed for good; skipped", "call", w.call.ID, "subject", raw.Subject(), "seq", seq, "err", cause)
	}
	return err
}

// retry has the handler apply d (or, without d, End the call for reason)
// until it succeeds, fails for good, or fails Retries times (ErrUnavailable
// failures: until ctx ends); each outcome is counted. A message skipped
// returns its outcome (terminated, gave_up) and the last failure; err is
// ctx's, when it ended first.
func (w *worker) retry(ctx context.Context, live jetstream.Msg, d *Delivery, reason string) (outcome string, cause, err error) {
	replay := d != nil && d.Replay
	for attempt := 1; ; attempt++ {
		var seq uint64
		if d != nil {
			seq = d.Seq
		}
		w.out.reset(seq, replay)
		start := time.Now()
		err := w.attempt(ctx, d, reason)
		w.g.m.handle.Observe(time.Since(start).Seconds())
		if err == nil {
			w.setUnavailable(false)
			if replay {
				w.g.m.messages.WithLabelValues(OutcomeReplayed).Inc()
			} else {
				w.g.m.messages.WithLabelValues(OutcomeHandled).Inc()
			}
			return "", nil, nil
		}
		if ctx.Err() != nil {
			return "", err, ctx.Err()
		}
		unavailable := errors.Is(err, ErrUnavailable)
		switch {
		case IsPermanent(err):
			w.g.m.messages.WithLabelValues(OutcomeTerminated).Inc()
			return OutcomeTerminated, err, nil
		case !unavailable && attempt >= w.g.cfg.Retries:
			w.g.m.messages.WithLabelValues(OutcomeGaveUp).Inc()
			return OutcomeGaveUp, err, nil
		}
		w.g.m.messages.WithLabelValues(OutcomeRetried).Inc()
		if unavailable {
			w.setUnavailable(true)
			w.g.warn("waiting on an unavailable resource; not ready", "call", w.call.ID, "err", err)
		} else {
			w.g.warn("handler failed; retrying", "call", w.call.ID, "attempt", attempt, "err", err)
		}
		sleep(ctx, min(w.backoff(attempt), w.g.cfg.Lease/3))
		if live != nil {
			_ = live.InProgress() // still on it: no redelivery meanwhile
		}
	}
}

// finish ends the call here: the handler's End, then the finished mark, then
// the call's consumer is deleted (in that order: see work).
func (w *worker) finish(ctx context.Context, cons jetstream.Consumer, reason string) string {
	if !w.stillPinned(ctx, cons, true) {
		return ""
	}
	result := reason
	outcome, cause, err := w.retry(ctx, nil, nil, reason)
	if outcome != "" {
		result = ResultFailed
		w.g.log.Error("call could not be finished; its output is missing", "call", w.call.ID, "err", cause)
	}
	if err != nil {
		return w.release(cons, nil, nil, nil)
	}
	for attempt := 1; ; attempt++ {
		if err := w.g.markDone(ctx, w.call.Token); err == nil {
			break
		} else if ctx.Err() != nil {
			return w.release(cons, nil, nil, nil)
		} else {
			w.g.warn("cannot mark call finished; retrying", "call", w.call.ID, "err", err)
			sleep(ctx, w.backoff(attempt))
		}
	}
	if err := w.g.stream.DeleteConsumer(ctx, w.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		w.g.log.Warn("call consumer left for the server to expire", "call", w.call.ID, "err", err)
	}
	w.g.log.Debug("call finished", "call", w.call.ID, "reason", reason)
	return result
}

// release hands the call over: what was applied is acknowledged, what was
// delivered but not applied is given back (so the next owner is served at
// once, not after the ack wait), the pin is lifted, and run returns the
// leases. cur is the message in hand, if any.
func (w *worker) release(cons jetstream.Consumer, it jetstream.MessagesContext, in *deliveries, cur jetstream.Msg) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if it != nil {
		it.Drain()
		w.giveBack(in, cur)
	}
	if w.h == nil {
		return ResultReleased
	}
	w.flushAck(ctx, true)
	if w.stillPinned(ctx, cons, true) {
		if err := w.g.stream.UnpinConsumer(ctx, w.name, ownerGroup); err != nil {
			w.g.log.Debug("unpin call consumer", "call", w.call.ID, "err", err)
		}
	}
	return ResultReleased
}

// giveBack returns to the server the messages delivered here but not
// applied: cur, and what the draining iterator still hands over.
func (w *worker) giveBack(in *deliveries, cur jetstream.Msg) {
	for m := cur; ; {
		if m != nil && w.h != nil {
			if md, err := m.Metadata(); err == nil && md.Sequence.Stream > w.processed {
				_ = m.Nak()
			}
		}
		select {
		case d, ok := <-in.ch:
			if !ok || d.err != nil {
				return
			}
			m = d.msg
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

// delivery is what the consumer's Next gave: a message or an error.
type delivery struct {
	msg jetstream.Msg
	err error
}

// deliveries hands a call consumer's messages to its worker.
type deliveries struct {
	ch   chan delivery
	quit chan struct{}
}

// forward waits in Next and passes on what it gives, until the iterator is
// closed (the error is passed on too) or quit.
func (d *deliveries) forward(it jetstream.MessagesContext) {
	defer close(d.ch)
	for {
		msg, err := it.Next()
		select {
		case d.ch <- delivery{msg, err}:
		case <-d.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

// flushAck acknowledges everything applied so far, at most every ackEvery
// unless now is set (then it waits for the server's confirmation).
func (w *worker) flushAck(ctx context.Context, now bool) {
	if w.last == nil || w.acked == w.processed || (!now && time.Since(w.ackedAt) < ackEvery) {
		return
	}
	var err error
	if now {
		err = w.last.DoubleAck(ctx)
	} else {
		err = w.last.Ack()
	}
	if err == nil {
		w.acked, w.ackedAt = w.processed, time.Now()
	}
}

// stillPinned checks, every half lease, that the server still delivers this
// call to this replica. A replica that stalled past the lease (a long outage
// of its disk) has lost the call to another; it drops its state, so the two
// never both apply the call, and may be given it again later.
func (w *worker) stillPinned(ctx context.Context, cons jetstream.Consumer, force bool) bool {
	if w.h == nil {
		return !force
	}
	if !force && time.Since(w.checked) < w.g.cfg.Lease/2 {
		return true
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return true // cannot tell; the pin is the server's to move
	}
	w.checked = time.Now()
	for _, pg := range info.PriorityGroups {
		if pg.Group == ownerGroup && pg.PinnedClientID != "" && pg.PinnedClientID != w.pin {
			w.g.log.Warn("call moved to another replica; dropping its state here", "call", w.call.ID)
			_ = w.h.Close()
			w.h, w.last, w.processed, w.acked = nil, nil, 0, 0
			w.owned.Store(false)
			return false
		}
	}
	return true
}

// complete reports whether every socket of the call that started has ended.
func (w *worker) complete() bool {
	if len(w.conns) == 0 {
		return false
	}
	for _, ended := range w.conns {
		if !ended {
			return false
		}
	}
	return true
}

func (w *worker) setUnavailable(on bool) {
	if on == w.unavail {
		return
	}
	w.unavail = on
	if on {
		w.g.setUnavailable(1)
	} else {
		w.g.setUnavailable(-1)
	}
}

// attempt runs the handler once, turning a panic into an error so one bad
// message cannot take the replica down.
func (w *worker) attempt(ctx context.Context, d *Delivery, reason string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrPanic, r, debug.Stack())
		}
	}()
	if d != nil {
		return w.h.Handle(ctx, *d, &w.out)
	}
	return w.h.End(ctx, reason, &w.out)
}

func (w *worker) backoff(attempt int) time.Duration {
	b := w.g.cfg.Backoff
	return min(b<<min(attempt-1, 10), 50*b)
}
