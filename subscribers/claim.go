package subscribers

import (
	"context"
	"fmt"
	"time"

	"github.com/audiofan/audiofan/codec"
)

// Claiming a partition: taking it over from the checkpoint, noticing it
// moved to another replica, and handing it over.

// takeover makes this replica the partition's owner: from the last
// checkpoint, each call then in progress is started again, reading its
// messages back from the stream up to the checkpoint's floor (rebuilding
// its state; what it emits is dropped, as it was emitted before) before
// what comes after; the calls parked stay parked; and the next delivery
// reads from the floor on. The reads are the calls' own, so the partition
// takes deliveries at once.
func (p *partition) takeover(ctx context.Context, pin string) error {
	start := time.Now()
	ck, err := p.ownCheckpoint(ctx)
	if err != nil {
		return err
	}
	info, err := p.cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("partition %d: %w", p.n, err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	p.callCtx, p.ccancel = cctx, cancel
	p.calls, p.ended, p.parked = map[codec.Token]*callWork{}, map[codec.Token]int64{}, map[codec.Token]*parkedCall{}
	cutoff := time.Now().Add(-p.g.cfg.DoneTTL).Unix()
	for _, e := range ck.Ended {
		if e.At >= cutoff {
			p.ended[e.Token] = e.At
		}
	}
	p.base, p.priors = ck.Base, spansOf(ck.Priors)
	floor := max(ck.Floor, ck.Base)
	// The acknowledgement floor passes the checkpoint's only if the
	// checkpoint was lost: then what lies below it was applied, and is
	// replayed from the stream's start.
	p.replayTo = max(floor, p.base+info.AckFloor.Stream)
	p.owned, p.pin = true, pin
	p.isOwned.Store(true)
	p.led.reset(floor)
	p.written = floor
	for _, cc := range ck.Calls {
		id, err := codec.DecodeToken(cc.Token)
		if err != nil {
			continue
		}
		if cc.Parked != nil {
			p.parked[cc.Token] = parkedFrom(cc, id, start, p.g.cfg.RedriveBackoff)
			continue
		}
		p.startCall(cc.origin(id), &history{to: floor, replayTo: floor}, nil)
	}
	p.nparked.Store(int64(len(p.parked)))
	// dirty: the first housekeeping writes the checkpoint, which tells a
	// previous owner that lost its pin that the partition is taken.
	p.dirty = true
	p.checked, p.wroteAt, p.idleAt = time.Now(), time.Time{}, time.Now()
	p.repairs, p.asked = p.g.repairs.Load(), p.g.asked.Load()
	p.g.m.partitions.Inc()
	p.log.Info("partition taken", "calls", len(ck.Calls), "from", floor, "previous", ck.Owner, "acked", info.AckFloor.Stream,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// adoptOrphan takes the partition over without waiting for a delivery when
// its previous owner left calls in progress but nothing to deliver: it
// applied and acknowledged everything, then stopped before their end (a
// call waiting for its idle timeout, or one whose End was cut short). The
// server would deliver nothing, so nobody would finish them. Looked at once
// a lease while the partition is this replica's and not taken.
func (p *partition) adoptOrphan(ctx context.Context) {
	if time.Since(p.checked) < p.g.cfg.Lease {
		return
	}
	p.checked = time.Now()
	ck, err := p.ownCheckpoint(ctx)
	if err != nil || len(ck.Calls) == 0 {
		return
	}
	info, err := p.cons.Info(ctx)
	if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
		return // there is something to deliver: the pin decides who
	}
	p.log.Info("partition left with calls in progress and nothing to deliver; taking it over", "calls", len(ck.Calls), "previous", ck.Owner)
	if err := p.takeover(ctx, ""); err != nil {
		p.log.Warn("taking the partition over", "err", err)
	}
}

// stillPinned asks the server whether the pin is still this replica's. A
// replica that stalled past the lease (its process frozen, its network cut)
// has lost the partition to another; it must then drop its calls, so the
// two never both apply them.
func (p *partition) stillPinned(ctx context.Context) bool {
	if p.pin == "" {
		return true // adopted before any delivery: nothing to compare yet
	}
	info, err := p.cons.Info(ctx)
	if err != nil {
		return true // cannot tell; the pin is the server's to move
	}
	for _, pg := range info.PriorityGroups {
		if pg.Group == ownerGroup && pg.PinnedClientID != "" && pg.PinnedClientID != p.pin {
			return false
		}
	}
	return true
}

// takenElsewhere reports whether another replica has written the
// partition's checkpoint since this one last did: the pin it lost went to a
// replica that took the partition over, not back to this one (a pin lapses
// when a replica starved of CPU pulls late; the server then pins its next
// pull). A new owner writes its checkpoint at once, so a real takeover
// shows within a checkpoint interval.
func (p *partition) takenElsewhere(ctx context.Context) bool {
	ck, err := p.ownCheckpoint(ctx)
	if err != nil {
		return false // cannot tell now; asked again soon
	}
	return ck.Owner != p.g.id || ck.Floor != p.written
}

// drop forgets the partition's calls without a word to the server: another
// replica has it, or will read it again from the checkpoint.
func (p *partition) drop() {
	if !p.owned && p.ccancel == nil {
		return
	}
	if p.ccancel != nil {
		p.ccancel()
	}
	p.wg.Wait()
	p.mu.Lock()
	p.done = nil
	p.mu.Unlock()
	p.owned, p.calls, p.parked, p.ccancel = false, nil, nil, nil
	p.led.reset(0)
	p.ncalls.Store(0)
	p.nparked.Store(0)
	if p.isOwned.Swap(false) {
		p.g.m.partitions.Dec()
	}
}

// release hands the partition over: its calls stop, what was applied is
// checkpointed and acknowledged (so the next owner starts where this one
// stopped), and the pin is lifted so the next owner is served at once.
func (p *partition) release() {
	if !p.owned {
		p.drop()
		return
	}
	p.ccancel()
	p.wg.Wait()
	p.reap()
	p.led.advance()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.flush(ctx, true)
	if p.stillPinned(ctx) {
		if err := p.stream.UnpinConsumer(ctx, p.name, ownerGroup); err != nil {
			p.log.Debug("unpin partition consumer", "err", err)
		}
	}
	p.drop()
}
