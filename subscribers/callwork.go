package subscribers

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/audiofan/audiofan/codec"
)

// callWork is a replica's work on one call of a partition it owns: the call's
// messages, queued by the partition in stream order, applied by a goroutine
// of the call's own, so a call that is slow or keeps failing never holds up
// the other calls of its partition.
type callWork struct {
	p      *partition
	info   CallInfo
	first  uint64 // stream sequence of its first message in the partition
	legacy bool   // it began before the stream was partitioned

	mu     sync.Mutex
	queue  []item
	spare  []item
	idle   bool // asked to end for want of messages
	closed bool // finished here: what comes now is late
	wake   chan struct{}
	active atomic.Int64 // unix nanoseconds of the last message queued

	// The goroutine's own.
	h        CallHandler
	conns    map[string]bool
	out      Output
	unavail  bool
	replayed bool
	last     uint64 // stream sequence of the last message applied
	result   string // set when the goroutine returns
}

// item is one message of the call as the partition hands it over.
type item struct {
	subject string
	data    []byte
	seq     uint64
	stored  time.Time
	replay  bool
	e       *entry // its place in the partition's acknowledgement order; nil for none
}

func (it *item) markDone() {
	if it.e != nil {
		it.e.done.Store(true)
	}
}

func newCallWork(p *partition, info CallInfo, first uint64) *callWork {
	g := p.g
	c := &callWork{p: p, info: info, first: first, wake: make(chan struct{}, 1), conns: map[string]bool{},
		out: Output{js: g.js, subj: g.subj, role: g.role.Name, call: info}}
	c.active.Store(time.Now().UnixNano())
	return c
}

// push queues a message; false when the call is already finished here.
func (c *callWork) push(it item) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, it)
	c.idle = false
	c.mu.Unlock()
	c.active.Store(time.Now().UnixNano())
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

// endIdle asks the call to end for want of messages, unless one comes first.
func (c *callWork) endIdle() {
	c.mu.Lock()
	c.idle = true
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// run applies the call until it is finished or ctx ends (the partition
// released), then tells the partition.
func (c *callWork) run(ctx context.Context) {
	result := c.work(ctx)
	if result != ResultReleased {
		c.close(nil) // late messages are dropped from now on
	}
	if c.h != nil {
		if err := c.h.Close(); err != nil {
			c.p.g.log.Warn("closing call state", "call", c.info.ID, "err", err)
		}
	}
	c.setUnavailable(false)
	c.p.g.m.calls.WithLabelValues(result).Inc()
	c.result = result
	c.p.finished(c, result)
	c.p.log.Debug("call left", "call", c.info.ID, "result", result, "first", c.first, "replayed", c.replayed)
}

func (c *callWork) work(ctx context.Context) string {
	for {
		select {
		case <-c.wake:
		case <-ctx.Done():
			return ResultReleased
		}
		for {
			c.mu.Lock()
			batch := c.queue
			c.queue, c.spare = c.spare[:0], nil
			idle := c.idle && len(batch) == 0
			c.mu.Unlock()
			if len(batch) == 0 {
				if idle {
					return c.end(ctx, EndIdle)
				}
				break
			}
			for i := range batch {
				if r := c.handle(ctx, &batch[i]); r != "" {
					if r != ResultReleased {
						c.close(batch[i+1:])
					}
					return r
				}
			}
			clear(batch)
			c.mu.Lock()
			c.spare = batch[:0]
			c.mu.Unlock()
		}
	}
}

// close refuses what comes next and drops what is queued (rest, and the
// queue): messages that came after the call ended here.
func (c *callWork) close(rest []item) {
	c.mu.Lock()
	c.closed = true
	rest = append(rest, c.queue...)
	c.queue = nil
	c.mu.Unlock()
	for i := range rest {
		rest[i].markDone()
		c.p.g.m.messages.WithLabelValues(OutcomeLate).Inc()
	}
}

// handle applies one message; it returns the call's result when the call is
// over ("" while it goes on). The message counts as done only once applied,
// and the call's last one only once End has written the output.
func (c *callWork) handle(ctx context.Context, it *item) string {
	if c.h == nil {
		if r := c.start(ctx); r != "" {
			if r == ResultFailed {
				it.markDone()
			}
			return r
		}
	}
	if it.seq <= c.last {
		// Never applied twice or out of order, whatever the partition's
		// bookkeeping did: count it and say so, it is a bug to look at.
		c.p.g.m.messages.WithLabelValues(OutcomeLate).Inc()
		c.p.g.log.Warn("message at or before one already applied; skipped", "call", c.info.ID, "seq", it.seq, "last", c.last, "replay", it.replay)
		it.markDone()
		return ""
	}
	c.last = it.seq
	if it.replay && !c.replayed {
		c.replayed = true
		c.p.g.m.takeovers.Inc()
	}
	if err := c.apply(ctx, it); err != nil {
		return ResultReleased
	}
	if c.complete() {
		if it.replay { // finished by the replica that had it before
			return ResultElsewhere
		}
		r := c.end(ctx, EndEnded)
		if r != ResultReleased {
			it.markDone()
		}
		return r
	}
	it.markDone()
	return ""
}

// start builds the call's state. A failure other than ErrUnavailable is
// tried Retries times, then the call is given up (every message of it
// skipped), so no input can hold a call, and its partition's
// acknowledgements, forever.
func (c *callWork) start(ctx context.Context) string {
	g := c.p.g
	for attempt := 1; ; attempt++ {
		h, err := g.role.NewCall(ctx, c.info)
		if err == nil {
			c.h = h
			c.setUnavailable(false)
			return ""
		}
		if ctx.Err() != nil {
			return ResultReleased
		}
		if !errors.Is(err, ErrUnavailable) && attempt >= g.cfg.Retries {
			g.log.Error("cannot start call; its messages are skipped", "call", c.info.ID, "err", err)
			return ResultFailed
		}
		g.warnings.Warn("cannot start call; retrying", "call", c.info.ID, "attempt", attempt, "err", err)
		if errors.Is(err, ErrUnavailable) {
			c.setUnavailable(true)
		}
		sleep(ctx, c.backoff(attempt))
	}
}

// end has the handler write the call's output; the result of the call.
func (c *callWork) end(ctx context.Context, reason string) string {
	if c.h == nil { // no message ever applied (every start failed)
		return ResultFailed
	}
	select {
	case c.p.g.ends <- struct{}{}:
		defer func() { <-c.p.g.ends }()
	case <-ctx.Done():
		return ResultReleased
	}
	outcome, cause, err := c.retry(ctx, nil, reason)
	switch {
	case err != nil:
		return ResultReleased
	case outcome != "":
		c.p.g.log.Error("call could not be finished; its output is missing", "call", c.info.ID, "err", cause)
		return ResultFailed
	}
	return reason
}

// apply decodes a message and has the handler apply it, retrying in place.
// It returns an error only when ctx ends first.
func (c *callWork) apply(ctx context.Context, it *item) error {
	g := c.p.g
	m, err := Decode(g.subj, it.subject, it.data)
	if err != nil {
		g.m.messages.WithLabelValues(OutcomeTerminated).Inc()
		g.warnings.Warn("undecodable message skipped", "call", c.info.ID, "subject", it.subject, "seq", it.seq, "err", err)
		return nil
	}
	if lc, ok := m.Payload.(*codec.Lifecycle); ok {
		switch lc.Type {
		case codec.LifecycleStarted:
			if _, seen := c.conns[lc.Connection]; !seen {
				c.conns[lc.Connection] = false
			}
		case codec.LifecycleEnded:
			c.conns[lc.Connection] = true
		}
	}
	d := Delivery{Message: m, Seq: it.seq, Stored: it.stored, Replay: it.replay}
	outcome, cause, err := c.retry(ctx, &d, "")
	switch outcome {
	case OutcomeGaveUp:
		g.log.Error("message still failing after every retry; skipped", "call", c.info.ID, "subject", it.subject, "seq", it.seq, "err", cause)
	case OutcomeTerminated:
		g.warnings.Warn("message failed for good; skipped", "call", c.info.ID, "subject", it.subject, "seq", it.seq, "err", cause)
	}
	return err
}

// retry has the handler apply d (or, without d, End the call for reason)
// until it succeeds, fails for good, or fails Retries times (ErrUnavailable
// failures: until ctx ends); each outcome is counted. A message skipped
// returns its outcome (terminated, gave_up) and the last failure; err is
// ctx's, when it ended first.
func (c *callWork) retry(ctx context.Context, d *Delivery, reason string) (outcome string, cause, err error) {
	g := c.p.g
	replay := d != nil && d.Replay
	var seq uint64
	if d != nil {
		seq = d.Seq
	}
	for attempt := 1; ; attempt++ {
		c.out.reset(seq, replay)
		start := time.Now()
		err := c.attempt(ctx, d, reason)
		g.m.handle.Observe(time.Since(start).Seconds())
		if err == nil {
			c.setUnavailable(false)
			if replay {
				g.m.replayed.Inc()
			} else {
				g.m.handled.Inc()
			}
			return "", nil, nil
		}
		if ctx.Err() != nil {
			return "", err, ctx.Err()
		}
		unavailable := errors.Is(err, ErrUnavailable)
		switch {
		case IsPermanent(err):
			g.m.messages.WithLabelValues(OutcomeTerminated).Inc()
			return OutcomeTerminated, err, nil
		case !unavailable && attempt >= g.cfg.Retries:
			g.m.messages.WithLabelValues(OutcomeGaveUp).Inc()
			return OutcomeGaveUp, err, nil
		}
		g.m.messages.WithLabelValues(OutcomeRetried).Inc()
		if unavailable {
			c.setUnavailable(true)
			g.warnings.Warn("waiting on an unavailable resource; not ready", "call", c.info.ID, "err", err)
		} else {
			g.warnings.Warn("handler failed; retrying", "call", c.info.ID, "attempt", attempt, "err", err)
		}
		sleep(ctx, c.backoff(attempt))
	}
}

// attempt runs the handler once, turning a panic into an error so one bad
// message cannot take the replica down.
func (c *callWork) attempt(ctx context.Context, d *Delivery, reason string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrPanic, r, debug.Stack())
		}
	}()
	if d != nil {
		return c.h.Handle(ctx, *d, &c.out)
	}
	return c.h.End(ctx, reason, &c.out)
}

// complete reports whether every socket of the call that started has ended.
func (c *callWork) complete() bool {
	if len(c.conns) == 0 {
		return false
	}
	for _, ended := range c.conns {
		if !ended {
			return false
		}
	}
	return true
}

func (c *callWork) setUnavailable(on bool) {
	if on == c.unavail {
		return
	}
	c.unavail = on
	if on {
		c.p.g.unavail.Add(1)
	} else {
		c.p.g.unavail.Add(-1)
	}
}

func (c *callWork) backoff(attempt int) time.Duration {
	b := c.p.g.cfg.Backoff
	return min(b<<min(attempt-1, 10), 50*b, c.p.g.cfg.Lease/3)
}
