package subscribers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// After a move of the bus (audiofan reshard), a partition's checkpoint
// names the stream it was read from, now retired: it binds no subject, so
// what it holds is all it will ever hold. The partition reads it to its end
// with its consumer there, as before the move, while the shard collects
// what comes after; then it moves to the shard (switchStream) with its
// calls as they are, their positions going on past the retired stream's
// (see span), so a call in flight across the move reads on without a gap
// and a role that was behind, or down, when the bus moved loses nothing.

// drainState is a partition reading a retired stream before its shard.
type drainState struct {
	shard     jetstream.Stream
	shardCons jetstream.Consumer
	// last is the retired stream's last sequence of the partition
	// (known once looked up): read to it, the stream is drained.
	last      uint64
	lastKnown bool
	checked   time.Time
}

// drainCheckEvery is how often a partition reading a retired stream looks
// whether it is at its end (and reports its shard's backlog).
const drainCheckEvery = time.Second

// errSwitched: the partition moved from a retired stream to its shard;
// consume subscribes again, to the shard's consumer.
var errSwitched = errors.New("partition moved to its shard")

// prepare picks what the partition reads: the retired stream its
// checkpoint names, if that stream is still there with the role's
// consumer, else its shard.
func (p *partition) prepare(ctx context.Context) error {
	p.stream, p.cons, p.next = p.cur, p.curCons, nil
	shard := p.cur.CachedInfo().Config.Name
	ck, err := readCheckpoint(ctx, p.g.kv, p.n, p.g.ref.Name)
	if err != nil || ck.Stream == shard {
		return err
	}
	if !slices.Contains(p.g.bus.Retired, ck.Stream) {
		if ck.Floor > 0 && len(ck.Calls) > 0 {
			p.g.warnings.Warn("the stream this partition was read from is gone: its calls in progress are read from the shard on only",
				"partition", p.n, "stream", ck.Stream, "calls", len(ck.Calls))
		}
		return nil
	}
	old, err := p.g.js.Stream(ctx, ck.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("retired stream %s: %w", ck.Stream, err)
	}
	cons, err := old.Consumer(ctx, p.name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// Removed by hand: a partition read to the retired stream's end
		// names its shard in its checkpoint before its consumer there goes.
		p.log.Warn("the role's consumer of the retired stream this partition was read from is gone: what it had not read there is skipped, its calls in progress are read from the shard on only",
			"stream", ck.Stream, "consumer", p.name, "calls", len(ck.Calls))
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer %s of retired stream %s: %w", p.name, ck.Stream, err)
	}
	p.stream, p.cons = old, cons
	p.next = &drainState{shard: p.cur, shardCons: p.curCons}
	p.log.Info("the bus was moved: reading the retired stream to its end before the shard", "stream", ck.Stream, "shard", shard)
	return nil
}

// drainIdle takes the partition over when the retired stream has nothing
// left to deliver: no delivery would come to make this replica its owner,
// and the move to the shard needs one.
func (p *partition) drainIdle(ctx context.Context) {
	d := p.next
	if time.Since(d.checked) < drainCheckEvery || !p.lookLast(ctx) {
		return
	}
	ck, err := p.ownCheckpoint(ctx)
	if err != nil || ck.Floor < ck.Base+d.last {
		return
	}
	info, err := p.cons.Info(ctx)
	if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
		return // there is something to deliver: the pin decides who
	}
	if err := p.takeover(ctx, ""); err != nil {
		p.log.Warn("taking the partition over to move it to its shard", "err", err)
	}
}

// drainCheck moves the partition to its shard once everything of the
// retired stream is applied and checkpointed; it says whether it did.
func (p *partition) drainCheck(ctx context.Context) bool {
	d := p.next
	if time.Since(d.checked) < drainCheckEvery || !p.lookLast(ctx) {
		return false
	}
	if p.led.hw < p.base+d.last || p.led.outstanding() > 0 {
		return false
	}
	p.flush(ctx, true)
	if p.dirty || p.written < p.led.floor {
		return false // not checkpointed yet: at the next look
	}
	return p.switchStream(ctx)
}

// lookLast looks the retired stream's last message of the partition up
// (once), and the shard's backlog (each time): what the role's lag counts.
func (p *partition) lookLast(ctx context.Context) bool {
	d := p.next
	d.checked = time.Now()
	if info, err := d.shardCons.Info(ctx); err == nil {
		p.nextPending.Store(info.NumPending)
	}
	if d.lastKnown {
		return true
	}
	m, err := p.stream.GetLastMsgForSubject(ctx, p.g.subj.PartitionAll(p.n))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		d.last = 0
	case err != nil:
		p.g.warnings.Warn("looking up the end of a retired stream failed; looking again", "partition", p.n, "err", err)
		return false
	default:
		d.last = m.Sequence
	}
	d.lastKnown = true
	return true
}

// switchStream moves the owned partition, read to the end of the retired
// stream, to its shard: the shard's positions start past the retired
// stream's last sequence, the retired stream stays a prior span while its
// calls need it, and the checkpoint naming the shard is written before
// anything is read from it. Then the role's consumer of the retired stream
// is removed: a retired stream without consumers is read by every role
// (audiofan reshard removes those before the next move).
func (p *partition) switchStream(ctx context.Context) bool {
	d := p.next
	info, err := p.stream.Info(ctx)
	if err != nil {
		p.g.warnings.Warn("reading the retired stream's info before moving to the shard failed; trying again", "partition", p.n, "err", err)
		return false
	}
	old := p.span()
	oldCons, priors, floor := p.cons, p.priors, p.led.floor
	p.priors = append(slices.Clone(p.priors), old)
	p.base = old.base + max(info.State.LastSeq, d.last)
	p.stream, p.cons = d.shard, d.shardCons
	p.led.reset(p.base)
	p.written, p.dirty = p.base, true
	if !p.checkpoint(ctx) {
		// Not moved: the retired stream's checkpoint stands.
		p.stream, p.cons, p.base, p.priors = old.stream, oldCons, old.base, priors
		p.led.reset(floor)
		p.written, p.dirty = floor, false
		return false
	}
	p.next, p.pin, p.replayTo = nil, "", p.base
	p.nextPending.Store(0)
	p.pending.Store(0)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := old.stream.DeleteConsumer(dctx, p.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		p.log.Warn("removing the consumer of the retired stream read to its end", "stream", old.name, "err", err)
	}
	p.log.Info("retired stream read to its end: reading the shard", "stream", old.name, "shard", p.stream.CachedInfo().Config.Name,
		"calls", len(p.calls), "parked", len(p.parked), "base", p.base)
	return true
}
