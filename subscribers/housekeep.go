package subscribers

import (
	"context"
	"time"
)

// housekeep advances the acknowledgement floor, checkpoints, parks a call
// whose failures hold the partition, re-drives the parked calls due, ends
// idle calls and checks the pin; and, while a retired stream is read
// first, moves to the shard once it is read to its end (switched: consume
// must subscribe to the shard's consumer).
func (p *partition) housekeep(ctx context.Context) (switched bool) {
	if p.next != nil && !p.owned {
		p.drainIdle(ctx)
	}
	if !p.owned {
		p.adoptOrphan(ctx)
		return false
	}
	p.reap()
	p.led.advance()
	p.relieve()
	if (p.led.floor > p.written || p.dirty || p.hasAck()) && time.Since(p.wroteAt) >= p.g.cfg.Checkpoint {
		p.flush(ctx, false)
	}
	if p.next != nil && p.drainCheck(ctx) {
		return true
	}
	if time.Since(p.idleAt) >= time.Second {
		p.idleAt = time.Now()
		limit := time.Now().Add(-p.g.cfg.IdleTimeout).UnixNano()
		redriving := 0
		for _, c := range p.calls {
			if c.active.Load() < limit {
				c.endIdle()
			}
			if c.redriving.Load() {
				redriving++
			}
		}
		if len(p.parked) > 0 {
			// A repair re-drives every parked call, at most once a backoff:
			// where failures come and go, calls that stay broken are not
			// read back at each success of another.
			all := false
			if repairs := p.g.repairs.Load(); repairs != p.repairs && time.Since(p.repaired) >= p.g.cfg.RedriveBackoff {
				all, p.repairs, p.repaired = true, repairs, time.Now()
			}
			if asked := p.g.asked.Load(); asked != p.asked {
				all, p.asked = true, asked
			}
			p.redrive(all, redriving)
		}
	}
	if len(p.calls) > 0 && time.Since(p.checked) >= p.g.cfg.Lease/2 {
		p.checked = time.Now()
		if !p.stillPinned(ctx) && p.takenElsewhere(ctx) {
			p.log.Warn("partition moved to another replica; dropping its calls here")
			p.drop()
		}
	}
	return false
}

// relieve parks the call that holds the floor when the messages waiting
// behind it near the consumer's window (past it, the server delivers
// nothing more and every call of the partition stops): if that call is
// failing, or stuck in one attempt for a lease, it parks now rather than
// after its retries, so its neighbours flow on.
func (p *partition) relieve() {
	if p.led.outstanding() < p.g.cfg.MaxAckPending/2 {
		return
	}
	e := p.led.head()
	if e == nil || e.call == nil {
		return
	}
	if e.call.holding(time.Now().Add(-p.g.cfg.Lease).UnixNano()) {
		e.call.requestPark("its failures held the partition's window")
	}
}

// hasAck reports whether a delivery waits to acknowledge what is
// checkpointed already (a redelivery of something applied).
func (p *partition) hasAck() bool {
	m, _ := p.led.toAck(p.written)
	return m != nil
}
