package subscribers

import (
	"time"

	"github.com/audiofan/audiofan/codec"
)

// Parking: a call whose handling keeps failing is not retried in place
// forever, holding its partition's floor (and with it the server's window
// of unacknowledged messages, so its neighbours' audio would stop) nor one
// of the role's End slots. After bounded retries it is parked: its messages
// are passed over as they come (they stay on the bus), the floor moves on,
// and the call is kept in the checkpoint with how far it was applied. Later
// (a backoff, a success of the role after failures, or `audiofan redrive`)
// it is re-driven: a new handler reads the call back from the bus, replays
// what was applied before (output dropped, as at a takeover) and applies
// the rest live. Dead-letter queues do the same for a poison message; a call
// is the unit here because its state needs every message in order.

// parkRule says when a failing call stops being retried in place.
type parkRule struct {
	retries int           // attempts at a failure that is not an outage
	after   time.Duration // how long an outage (ErrUnavailable) is waited out in place
}

// park reports whether a call that has just failed its attempt-th try at
// one step (failing for failingFor, unavailable when the failure is an
// outage) should be parked.
func (r parkRule) park(attempt int, unavailable bool, failingFor time.Duration) bool {
	if unavailable {
		return failingFor >= r.after
	}
	return attempt >= r.retries
}

// redriveDelay is how long a call parked for the tries-th time waits
// before it is re-driven: base doubling, up to maxRedriveDelay.
func redriveDelay(base time.Duration, tries int) time.Duration {
	return min(base<<min(max(tries-1, 0), 16), maxRedriveDelay)
}

// maxRedriveDelay bounds the wait between re-drives of a parked call: a
// fault repaired is noticed within it even when nothing else succeeds.
const maxRedriveDelay = 5 * time.Minute

// maxParked bounds the calls a partition keeps parked (each is a line of
// its checkpoint); past it the oldest is given up, logged and counted.
const maxParked = 500

// parkedCall is a call parked on this partition.
type parkedCall struct {
	callOrigin
	applied uint64 // every message of it up to this was applied (its output emitted)
	since   time.Time
	reason  string
	tries   int // times parked
	next    time.Time
}

func (pc *parkedCall) checkpointed() ckCall {
	cc := pc.callOrigin.checkpointed()
	cc.Parked = &ckParked{Applied: pc.applied, Since: pc.since, Reason: pc.reason, Tries: pc.tries}
	return cc
}

// parkedFrom rebuilds a parked call from its checkpoint line.
func parkedFrom(cc ckCall, id string, now time.Time, base time.Duration) *parkedCall {
	return &parkedCall{callOrigin: cc.origin(id), applied: cc.Parked.Applied, since: cc.Parked.Since, reason: cc.Parked.Reason, tries: cc.Parked.Tries,
		next: now.Add(base)}
}

// parkedEvent is the data of the event a call parking emits.
func parkedEvent(reason string, cause error, applied uint64) codec.Event {
	data := map[string]any{"reason": reason, "applied": applied}
	if cause != nil {
		data["error"] = cause.Error()
	}
	return codec.Event{Type: codec.EventParked, Data: data}
}

// park keeps a call that parked, to be re-driven after a backoff; past
// maxParked the oldest parked call is given up.
func (p *partition) park(c *callWork, now time.Time) {
	pc := c.from
	if pc == nil {
		pc = &parkedCall{callOrigin: c.callOrigin, since: now}
	}
	pc.applied = max(pc.applied, c.applied.Load())
	pc.reason = c.parkReason
	pc.tries++
	pc.next = now.Add(redriveDelay(p.g.cfg.RedriveBackoff, pc.tries))
	p.parked[c.info.Token] = pc
	if len(p.parked) <= maxParked {
		return
	}
	var oldest *parkedCall
	for _, q := range p.parked {
		if oldest == nil || q.since.Before(oldest.since) {
			oldest = q
		}
	}
	delete(p.parked, oldest.info.Token)
	p.ended[oldest.info.Token] = now.Unix()
	p.g.m.calls.WithLabelValues(string(ResultFailed)).Inc()
	p.g.log.Error("too many calls parked on a partition; the oldest is given up, its output missing", "partition", p.n,
		"call", oldest.info.ID, "since", oldest.since, "reason", oldest.reason, "limit", maxParked)
}

// redrive starts the parked calls that are due (all makes every one due: a
// repair was seen, or an operator asked), at most redrivesAtOnce on the
// partition at a time: each reads its call back from the stream; the rest
// go as those finish.
func (p *partition) redrive(all bool, inFlight int) {
	now := time.Now()
	if all {
		for _, pc := range p.parked {
			pc.next = now
		}
	}
	for tok, pc := range p.parked {
		if inFlight >= redrivesAtOnce {
			return
		}
		if now.Before(pc.next) {
			continue
		}
		delete(p.parked, tok)
		inFlight++
		p.g.m.redrives.Inc()
		p.log.Info("re-driving a parked call from the bus", "call", pc.info.ID, "parked", now.Sub(pc.since).Round(time.Second),
			"tries", pc.tries, "applied", pc.applied)
		p.startCall(pc.callOrigin, &history{to: p.led.hw, replayTo: pc.applied}, pc)
	}
	p.nparked.Store(int64(len(p.parked)))
}

// redrivesAtOnce bounds the re-drives in flight on one partition: a
// partition full of parked calls re-drives them a few at a time.
const redrivesAtOnce = 2
