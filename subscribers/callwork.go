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
	p *partition
	callOrigin
	// hist, when set, is read from the stream before the queue: at a
	// takeover or a re-drive, the messages that came before this handler.
	hist *history
	// spans are the streams its history is read from (the partition's as
	// the work started: the partition may move to its shard meanwhile).
	spans []span
	// from is the parked call this work re-drives; nil otherwise.
	from *parkedCall

	mu       sync.Mutex
	queue    []item
	spare    []item
	idle     bool    // asked to end for want of messages
	closed   bool    // finished or parked here: what comes now is not applied
	closedAs Outcome // how what comes now is counted
	wake     chan struct{}
	active   atomic.Int64 // unix nanoseconds of the last message queued

	// Read by the partition's goroutine.
	applied   atomic.Uint64 // every message up to this was applied, its output emitted
	failing   atomic.Int64  // unix nanoseconds since when its current step fails; 0 when it does not
	attemptAt atomic.Int64  // unix nanoseconds the running attempt started at; 0 between attempts
	redriving atomic.Bool   // reading its history while re-driven: checkpointed as still parked

	// pctx ends the call's attempts when the partition asks it to park
	// (its failures hold the partition); it derives from the call's context.
	pctx    context.Context
	pcancel context.CancelFunc

	// The goroutine's own.
	h          CallHandler
	conns      map[string]bool
	out        Output
	unavail    bool
	replayed   bool
	last       uint64 // position of the last message applied
	result     Result // set when the goroutine returns
	parkReason string
	parkCause  error
}

// callOrigin is where a call begins in its partition: what a checkpoint
// keeps of a call in progress or parked.
type callOrigin struct {
	info    CallInfo
	first   uint64    // position of its first message in the partition
	firstAt time.Time // when the stream stored it
	legacy  bool      // it began before the stream was partitioned
}

// checkpointed is the origin as a checkpoint line.
func (o callOrigin) checkpointed() ckCall {
	return ckCall{Token: o.info.Token, First: o.first, FirstAt: o.firstAt, Legacy: o.legacy}
}

// history is what a call's goroutine reads from the stream before its
// queue: its messages from its first up to to, those up to replayTo as a
// replay (applied before, by another replica or an earlier handler).
type history struct {
	to, replayTo uint64
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

// newCallWork prepares the work on a call; ctx is the calls' context of
// its partition, and run must be given the same.
func newCallWork(ctx context.Context, p *partition, o callOrigin, hist *history) *callWork {
	g := p.g
	c := &callWork{p: p, callOrigin: o, hist: hist, spans: p.spans(), wake: make(chan struct{}, 1), conns: map[string]bool{},
		out: Output{js: g.js, subj: g.subj, role: g.role.Name, call: o.info}}
	c.pctx, c.pcancel = context.WithCancel(ctx)
	c.active.Store(time.Now().UnixNano())
	if hist != nil {
		c.applied.Store(min(hist.replayTo, hist.to))
	}
	return c
}

// push queues a message; when the call is finished or parked here it is
// refused, with the outcome to count it as.
func (c *callWork) push(it item) (Outcome, bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closedAs, false
	}
	c.queue = append(c.queue, it)
	c.idle = false
	c.mu.Unlock()
	c.active.Store(time.Now().UnixNano())
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return "", true
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

// requestPark asks a call whose failures hold its partition to park now:
// its running attempt and its retries are cut short.
func (c *callWork) requestPark(reason string) {
	c.setParkReason(reason)
	c.pcancel()
}

// holding reports whether the call is failing (or stuck in one attempt
// since before stuckSince): what parking under pressure looks for.
func (c *callWork) holding(stuckSince int64) bool {
	at := c.attemptAt.Load()
	return c.failing.Load() != 0 || (at != 0 && at < stuckSince)
}

// run applies the call until it is finished, parked or ctx ends (the
// partition released), then tells the partition.
func (c *callWork) run(ctx context.Context) {
	defer c.pcancel()
	result := c.work(ctx)
	switch result {
	case ResultReleased:
	case ResultParked:
		c.close(nil, OutcomeParked) // its messages wait on the bus for the re-drive
		c.announcePark()
	default:
		c.close(nil, OutcomeLate) // late messages are dropped from now on
	}
	if c.h != nil {
		if err := c.h.Close(); err != nil {
			c.p.g.log.Warn("closing call state", "call", c.info.ID, "err", err)
		}
	}
	c.setUnavailable(false)
	c.failing.Store(0)
	c.p.g.m.calls.WithLabelValues(string(result)).Inc()
	c.result = result
	c.p.finished(c)
	c.p.log.Debug("call left", "call", c.info.ID, "result", result, "first", c.first, "replayed", c.replayed)
}

func (c *callWork) work(ctx context.Context) Result {
	if c.hist != nil {
		if r := c.readHistory(ctx); r != "" {
			return r
		}
	}
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
						// The call leaves here with this message: applied
						// (ended), finished elsewhere, or left on the bus for
						// the re-drive (parked). Either way the floor passes it.
						if r == ResultParked {
							c.p.g.m.messages.WithLabelValues(string(OutcomeParked)).Inc()
						}
						batch[i].markDone()
						c.close(batch[i+1:], closeOutcome(r))
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

// readHistory applies the call's messages stored before this handler came:
// read from the stream (one of the role's history readers at a time), the
// call's own subjects only, from its first message. A read that fails is
// tried again; one that keeps failing parks the call.
func (c *callWork) readHistory(ctx context.Context) Result {
	g := c.p.g
	select {
	case g.readers <- struct{}{}:
		defer func() { <-g.readers }()
	case <-ctx.Done():
		return ResultReleased
	}
	var result Result
	apply := func(it item) bool {
		c.active.Store(time.Now().UnixNano()) // a long replay is not idleness
		if r := c.handle(ctx, &it); r != "" {
			result = r
			return false
		}
		return true
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := c.p.readCall(ctx, c, apply)
		switch {
		case result != "":
			return result
		case err == nil:
			c.redriving.Store(false)
			c.failing.Store(0)
			return ""
		case ctx.Err() != nil:
			return ResultReleased
		}
		// Read again from what was applied: those messages are not
		// applied twice (handle skips them).
		if c.failing.Load() == 0 {
			c.failing.Store(start.UnixNano())
		}
		if c.pctx.Err() != nil || g.parking.park(attempt, true, time.Since(start)) {
			c.parkCause = err
			c.setParkReason("its history could not be read")
			return ResultParked
		}
		g.warnings.Warn("reading a call's history failed; reading again", "call", c.info.ID, "err", err)
		sleep(c.pctx, c.backoff(attempt))
	}
}

// closeOutcome is how a call's messages that come after it left with r
// are counted.
func closeOutcome(r Result) Outcome {
	if r == ResultParked {
		return OutcomeParked
	}
	return OutcomeLate
}

// close refuses what comes next and passes over what is queued (rest, and
// the queue), counted as outcome.
func (c *callWork) close(rest []item, outcome Outcome) {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.closedAs = true, outcome
	}
	rest = append(rest, c.queue...)
	c.queue = nil
	c.mu.Unlock()
	for i := range rest {
		rest[i].markDone()
		c.p.g.m.messages.WithLabelValues(string(outcome)).Inc()
	}
}

// handle applies one message; it returns the call's result when the call is
// over ("" while it goes on). The message counts as done only once applied,
// and the call's last one only once End has written the output.
func (c *callWork) handle(ctx context.Context, it *item) Result {
	if c.h == nil {
		if r := c.start(ctx); r != "" {
			if r == ResultFailed {
				it.markDone()
			}
			return r
		}
	}
	if it.seq <= c.last {
		// Read twice (a history read again after a failure, a message
		// both read and queued): applied once.
		it.markDone()
		return ""
	}
	if it.replay && !c.replayed {
		c.replayed = true
		c.p.g.m.takeovers.Inc()
	}
	if r := c.apply(ctx, it); r != "" {
		return r
	}
	c.last = it.seq
	if c.complete() {
		if it.replay { // finished by the replica that had it before
			return ResultElsewhere
		}
		r := c.end(ctx, EndEnded)
		if r != ResultReleased && r != ResultParked {
			c.applied.Store(it.seq)
			it.markDone()
		}
		return r
	}
	c.applied.Store(it.seq)
	it.markDone()
	return ""
}

// start builds the call's state. A failure is retried, then the call is
// parked (it starts again when re-driven).
func (c *callWork) start(ctx context.Context) Result {
	g := c.p.g
	since := time.Now()
	for attempt := 1; ; attempt++ {
		h, err := g.role.NewCall(c.pctx, c.info)
		if err == nil {
			c.h = h
			c.setUnavailable(false)
			c.failing.Store(0)
			return ""
		}
		if ctx.Err() != nil {
			return ResultReleased
		}
		unavailable := errors.Is(err, ErrUnavailable)
		c.failing.CompareAndSwap(0, since.UnixNano())
		switch {
		case IsPermanent(err):
			g.log.Error("cannot start call; its messages are skipped", "call", c.info.ID, "err", err)
			return ResultFailed
		case c.pctx.Err() != nil || g.parking.park(attempt, unavailable, time.Since(since)):
			c.parkCause = err
			c.setParkReason("the call could not start")
			return ResultParked
		}
		g.warnings.Warn("cannot start call; retrying", "call", c.info.ID, "attempt", attempt, "err", err)
		if unavailable {
			c.setUnavailable(true)
		}
		sleep(c.pctx, c.backoff(attempt))
	}
}

// end has the handler write the call's output; the result of the call.
func (c *callWork) end(ctx context.Context, reason EndReason) Result {
	if c.h == nil { // no message ever applied (every start failed)
		return ResultFailed
	}
	outcome, cause, err := c.retry(ctx, nil, reason)
	switch {
	case err != nil:
		return ResultReleased
	case outcome == OutcomeParked:
		return ResultParked
	case outcome != "":
		c.p.g.log.Error("call could not be finished; its output is missing", "call", c.info.ID, "err", cause)
		return ResultFailed
	}
	if reason == EndIdle {
		return ResultIdle
	}
	return ResultEnded
}

// apply decodes a message and has the handler apply it, retrying in place.
// It returns a result only when the call cannot go on here: released (ctx
// ended first) or parked.
func (c *callWork) apply(ctx context.Context, it *item) Result {
	g := c.p.g
	m, err := Decode(g.subj, it.subject, it.data)
	if err != nil {
		g.m.messages.WithLabelValues(string(OutcomeTerminated)).Inc()
		g.warnings.Warn("undecodable message skipped", "call", c.info.ID, "subject", it.subject, "seq", it.seq, "err", err)
		return ""
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
	switch {
	case err != nil:
		return ResultReleased
	case outcome == OutcomeParked:
		return ResultParked
	case outcome == OutcomeTerminated:
		g.warnings.Warn("message failed for good; skipped", "call", c.info.ID, "subject", it.subject, "seq", it.seq, "err", cause)
	}
	return ""
}

// retry has the handler apply d (or, without d, End the call for reason)
// until it succeeds, fails for good (terminated), or keeps failing past the
// parking rule (parked: the call parks, and is re-driven later); each
// outcome is counted. err is ctx's, when it ended first.
func (c *callWork) retry(ctx context.Context, d *Delivery, reason EndReason) (outcome Outcome, cause, err error) {
	g := c.p.g
	replay := d != nil && d.Replay
	var seq uint64
	if d != nil {
		seq = d.Seq
	}
	var since time.Time
	handled := false
	for attempt := 1; ; attempt++ {
		var err error
		if !handled {
			c.out.reset(seq, replay)
			err = c.attempt(d, reason)
			handled = err == nil
		}
		if handled {
			err = c.out.flush(c.pctx) // what the step emitted; only that is tried again
		}
		if err == nil {
			c.setUnavailable(false)
			if c.failing.Load() != 0 && c.failing.Swap(0) != 0 { // a load on the path of every message
				g.repaired() // whatever failed works again: parked calls may too
			}
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
		if attempt == 1 {
			since = time.Now()
			c.failing.CompareAndSwap(0, since.UnixNano())
		}
		unavailable := errors.Is(err, ErrUnavailable)
		switch {
		case IsPermanent(err) && c.pctx.Err() == nil:
			c.failing.Store(0)
			g.m.messages.WithLabelValues(string(OutcomeTerminated)).Inc()
			return OutcomeTerminated, err, nil
		case c.pctx.Err() != nil || g.parking.park(attempt, unavailable, time.Since(since)):
			c.parkCause = err
			c.setParkReason("its handler kept failing")
			return OutcomeParked, err, nil
		}
		g.m.messages.WithLabelValues(string(OutcomeRetried)).Inc()
		if unavailable {
			c.setUnavailable(true)
			g.warnings.Warn("waiting on an unavailable resource; not ready", "call", c.info.ID, "err", err)
		} else {
			g.warnings.Warn("handler failed; retrying", "call", c.info.ID, "attempt", attempt, "err", err)
		}
		sleep(c.pctx, c.backoff(attempt))
	}
}

// attempt runs the handler once, turning a panic into an error so one bad
// message cannot take the replica down. End takes one of the role's End
// slots for the attempt alone: a call waiting to retry holds none.
func (c *callWork) attempt(d *Delivery, reason EndReason) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrPanic, r, debug.Stack())
		}
	}()
	start := time.Now()
	c.attemptAt.Store(start.UnixNano())
	defer func() {
		c.attemptAt.Store(0)
		c.p.g.m.handle.Observe(time.Since(start).Seconds())
	}()
	if d != nil {
		return c.h.Handle(c.pctx, *d, &c.out)
	}
	select {
	case c.p.g.ends <- struct{}{}:
		defer func() { <-c.p.g.ends }()
	case <-c.pctx.Done():
		return c.pctx.Err()
	}
	return c.h.End(c.pctx, reason, &c.out)
}

func (c *callWork) setParkReason(reason string) {
	c.mu.Lock()
	if c.parkReason == "" {
		c.parkReason = reason
	}
	c.mu.Unlock()
}

// announcePark says that the call parked: a log line (rate-limited), and
// an event on the call's subjects, best effort (the bus may be what fails).
func (c *callWork) announcePark() {
	g := c.p.g
	c.mu.Lock()
	reason := c.parkReason
	c.mu.Unlock()
	g.warnings.Warn("call parked: its messages wait on the bus, and it is re-driven from there", "call", c.info.ID,
		"reason", reason, "applied", c.applied.Load(), "err", c.parkCause)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	tries := 1
	if c.from != nil {
		tries = c.from.tries + 1
	}
	c.out.reset(0, false)
	c.out.key = fmt.Sprintf("parked-%d", tries)
	err := c.out.Emit(ctx, parkedEvent(reason, c.parkCause, c.applied.Load()))
	if err == nil {
		err = c.out.flush(ctx)
	}
	if err != nil {
		g.log.Debug("parked event not published", "call", c.info.ID, "err", err)
	}
}

// lostStart says that the stream no longer holds the call's start (its
// retention removed it before a takeover or a re-drive read the call
// back): the call is rebuilt from what is left, the first message left
// being it, and says so with a metric, a warning and a partial event naming
// the span missing (best effort, like a parked event).
func (c *callWork) lostStart(ctx context.Context, it item) {
	g := c.p.g
	g.m.historyLost.Inc()
	g.warnings.Warn("a call's start is gone from the stream (retention); it is rebuilt from what is left",
		"call", c.info.ID, "first", c.first, "from", it.seq, "missingFrom", c.firstAt, "missingTo", it.stored)
	data := map[string]any{"reason": "retention", "firstSeq": c.first, "resumedSeq": it.seq, "missingTo": it.stored}
	if !c.firstAt.IsZero() {
		data["missingFrom"] = c.firstAt
	}
	c.out.reset(0, false)
	c.out.key = "partial"
	ectx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := c.out.Emit(ectx, codec.Event{Type: codec.EventPartial, Data: data})
	if err == nil {
		err = c.out.flush(ectx)
	}
	if err != nil {
		g.log.Debug("partial event not published", "call", c.info.ID, "err", err)
	}
}

// complete reports whether every socket of the call that started has ended.
func (c *callWork) complete() bool { return allEnded(c.conns) }

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
