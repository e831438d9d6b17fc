package subscribers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/codec"
)

// partition is a replica's work on one partition of a role: while the
// partition consumer's pin is with this replica, it demultiplexes the
// partition's messages into its calls, keeps the acknowledgement floor (the
// highest sequence below which every message is applied) and checkpoints it.
type partition struct {
	g       *Group
	n       int
	name    string
	filters []string
	log     *slog.Logger
	stream  jetstream.Stream // the shard that holds the partition
	cons    jetstream.Consumer

	// The run goroutine's own.
	owned    bool
	pin      string
	led      ledger
	replayTo uint64 // messages up to this were applied by the previous owner
	written  uint64 // the floor of the last checkpoint written
	wroteAt  time.Time
	dirty    bool
	calls    map[codec.Token]*callWork
	parked   map[codec.Token]*parkedCall
	ended    map[codec.Token]int64
	repairs  uint64    // the Group's repairs seen: a new one re-drives the parked calls
	repaired time.Time // when a repair last re-drove them
	asked    uint64    // the Group's operator requests seen
	checked  time.Time
	idleAt   time.Time
	callCtx  context.Context // the calls' context: canceled when the partition goes
	ccancel  context.CancelFunc
	wg       sync.WaitGroup

	// dropDelivery, set by tests, loses the deliveries it says (as a slow
	// client does).
	dropDelivery func() bool

	mu   sync.Mutex
	done []*callWork // calls whose goroutine returned, for run to forget

	pending atomic.Uint64 // messages stored and not yet delivered, as of the last delivery
	ncalls  atomic.Int64
	nparked atomic.Int64
	isOwned atomic.Bool
}

// PartitionConsumer is the name of a role's durable consumer of partition p.
func PartitionConsumer(role string, p int) string { return role + "-p" + strconv.Itoa(p) }

func newPartition(g *Group, n int) *partition {
	// One filter, the whole partition: kinds the role does not read are
	// skipped as they come (see broker.Subjects.PartitionAll for why).
	return &partition{g: g, n: n, name: PartitionConsumer(g.role.Name, n), log: g.log.With("partition", n),
		filters: []string{g.subj.PartitionAll(n)}}
}

// consumerConfig is the partition's durable consumer: the kinds the role
// reads, one pinned client at a time, acknowledged in bulk.
func (p *partition) consumerConfig() jetstream.ConsumerConfig {
	deliver := jetstream.DeliverAllPolicy
	if p.g.cfg.Start == "new" {
		deliver = jetstream.DeliverNewPolicy
	}
	return jetstream.ConsumerConfig{
		Durable:        p.name,
		Description:    fmt.Sprintf("audiofan %s: partition %d of %d", p.g.role.Name, p.n, p.g.subj.Partitions),
		FilterSubjects: p.filters,
		DeliverPolicy:  deliver,
		AckPolicy:      jetstream.AckAllPolicy,
		// A replica that stops answering loses the partition after a
		// lease: its pin lapses and the server pins a live replica.
		AckWait:        p.g.cfg.Lease,
		MaxDeliver:     -1,
		MaxAckPending:  p.g.cfg.MaxAckPending,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{ownerGroup},
		PinnedTTL:      p.g.cfg.Lease,
		// The consumer's own state (what was delivered, the ack floor) is
		// replicated in memory, not written to disk at every delivery: on a
		// 3-node loopback cluster that alone took p50 send→stored from 757
		// to 10 ms. What must survive every failure, the applied floor and
		// the calls in progress, is in the checkpoint bucket (file, as
		// replicated as the stream). Lost only if every replica of the
		// consumer restarts at once: it then delivers the partition again
		// from its start, and the checkpoint's floor skips what was applied.
		MemoryStorage: true,
	}
}

// run works on the partition until ctx ends (it is given to another replica,
// or this one stops), then hands it over.
func (p *partition) run(ctx context.Context) {
	defer p.release()
	p.checked = time.Now() // a lease before looking for orphaned calls: the pin comes first
	for ctx.Err() == nil {
		if err := p.consume(ctx); err != nil && ctx.Err() == nil {
			p.log.Debug("partition consumer", "err", err)
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				p.drop()
				if err := p.g.ensureConsumer(ctx, p); err != nil {
					p.log.Warn("partition consumer", "err", err)
				}
			}
			sleep(ctx, 250*time.Millisecond)
		}
	}
}

// consume pulls the partition (the server delivers only while this replica
// holds the pin) and applies what comes, until ctx ends or the consumer fails.
func (p *partition) consume(ctx context.Context) error {
	// The server keeps the pin while pulls come within the lease: pull
	// at least three times a lease.
	expiry := max(time.Second, p.g.cfg.Lease/3)
	// Consume, not Messages: nats.go hands Messages' deliveries over in a
	// channel as large as a pull, and drops what overflows it (a slow
	// consumer) when it pulls again after a missed heartbeat or a
	// reconnect with the last pull's messages still coming; Consume queues
	// them on the subscription (nats.go's pending limits: 500,000 messages,
	// 64 MiB, far past the server's window, MaxAckPending). Its callback
	// queues what comes without bound for this goroutine, so pulls go on,
	// and the pin stays, while this goroutine is busy taking over.
	in := &inbox{wake: make(chan struct{}, 1)}
	cc, err := p.cons.Consume(in.message, jetstream.PullPriorityGroup(ownerGroup), jetstream.PullMaxMessages(512),
		jetstream.PullExpiry(expiry), jetstream.PullHeartbeat(max(500*time.Millisecond, expiry/4)),
		jetstream.ConsumeErrHandler(in.failed))
	if err != nil {
		return err
	}
	defer func() {
		cc.Stop()
		<-cc.Closed()
	}()
	tick := time.NewTicker(min(200*time.Millisecond, p.g.cfg.Checkpoint))
	defer tick.Stop()
	for {
		select {
		case <-in.wake:
		case <-tick.C:
		case <-cc.Closed():
			return cmp.Or(in.terminal(), errConsumeClosed)
		case <-ctx.Done():
			return nil
		}
		for _, d := range in.take() {
			if d.err != nil {
				if errors.Is(d.err, jetstream.ErrConsumerDeleted) || errors.Is(d.err, jetstream.ErrConsumerNotFound) {
					return d.err
				}
				continue
			}
			if err := p.deliver(ctx, d.msg); err != nil {
				return err
			}
		}
		p.housekeep(ctx)
	}
}

// deliver takes one message of the partition consumer.
func (p *partition) deliver(ctx context.Context, msg jetstream.Msg) error {
	if p.dropDelivery != nil && p.dropDelivery() {
		return nil // a test's lost delivery
	}
	md, err := msg.Metadata()
	if err != nil {
		return nil
	}
	p.pending.Store(md.NumPending)
	pin := msg.Headers().Get("Nats-Pin-Id")
	switch {
	case !p.owned:
		if err := p.takeover(ctx, pin); err != nil {
			return err
		}
	case pin != "" && p.pin == "": // taken over before any delivery: now the pin is known
		p.pin = pin
	case pin != "" && pin != p.pin:
		// The pin lapsed and came back (this replica stalled past a lease):
		// carry on if nobody else checkpointed meanwhile, else start over.
		if p.takenElsewhere(ctx) {
			p.log.Warn("partition was with another replica meanwhile; rebuilding its calls")
			p.drop()
			if err := p.takeover(ctx, pin); err != nil {
				return err
			}
		}
		p.pin = pin
	}
	seq := md.Sequence.Stream
	to := seq - 1
	switch p.led.admit(seq, md.Sequence.Consumer, md.NumDelivered > 1) {
	case admitHeld:
		p.led.hold(seq, msg)
		return nil
	case admitAfterReadAll:
		to = 0
		fallthrough
	case admitAfterRead:
		if err := p.fill(ctx, p.led.hw+1, to); err != nil {
			// Not now (a leader moving, a cluster busy): this delivery
			// waits in the stream with the rest, and the next delivery (or
			// its redelivery) reads again, on the same subscription.
			p.led.readFailed()
			p.g.warnings.Warn("reading a gap from the stream failed; reading again at the next delivery", "partition", p.n, "err", err)
			return nil
		}
		if seq <= p.led.hw { // read to the end: it was queued by the read
			p.led.hold(seq, msg)
			return nil
		}
	}
	e := p.led.queue(seq, msg)
	p.route(ctx, item{subject: msg.Subject(), data: msg.Data(), seq: seq, stored: md.Timestamp, replay: seq <= p.replayTo, e: e})
	return nil
}

// route hands a message to its call, starting the call's work if it is new.
func (p *partition) route(ctx context.Context, it item) {
	tok, kind, ok := p.g.subj.CallTokenKind(it.subject)
	if ok && !p.g.reads(kind) {
		it.markDone() // a kind this role does not read
		return
	}
	if len(p.parked) > 0 { // no lookup a message while nothing is parked
		if _, parked := p.parked[tok]; parked {
			it.markDone() // it waits on the bus for the call's re-drive
			p.g.m.messages.WithLabelValues(string(OutcomeParked)).Inc()
			return
		}
	}
	c := p.calls[tok]
	if c == nil {
		if _, ended := p.ended[tok]; ended {
			it.markDone()
			p.g.m.messages.WithLabelValues(string(OutcomeLate)).Inc()
			p.g.warnings.Warn("message of a call already finished here dropped", "call", tok, "subject", it.subject, "seq", it.seq)
			return
		}
		id, err := codec.DecodeToken(tok)
		if !ok || err != nil {
			it.markDone()
			p.g.m.messages.WithLabelValues(string(OutcomeTerminated)).Inc()
			p.g.warnings.Warn("message outside the scheme skipped", "subject", it.subject, "seq", it.seq)
			return
		}
		c = p.startCall(callOrigin{info: CallInfo{ID: id, Token: tok}, first: it.seq, firstAt: it.stored}, nil, nil)
		if !it.replay && p.g.inLegacyWindow() {
			p.readLegacy(ctx, c, false)
		}
	}
	if it.e != nil {
		it.e.call = c
	}
	if outcome, ok := c.push(it); !ok {
		it.markDone()
		p.g.m.messages.WithLabelValues(string(outcome)).Inc()
	}
}

// startCall starts the work on a call: from its history first when hist is
// set, re-driving the parked call from when it is set.
func (p *partition) startCall(o callOrigin, hist *history, from *parkedCall) *callWork {
	c := newCallWork(p.callCtx, p, o, hist)
	c.from = from
	c.redriving.Store(from != nil)
	p.calls[o.info.Token] = c
	p.ncalls.Store(int64(len(p.calls)))
	p.dirty = true
	cctx := p.callCtx
	p.wg.Go(func() { c.run(cctx) })
	return c
}

// finished is how a call's goroutine says it is over; run forgets the call.
func (p *partition) finished(c *callWork) {
	p.mu.Lock()
	p.done = append(p.done, c)
	p.mu.Unlock()
}

// reap forgets the calls that finished; those that ended are remembered as
// ended, so their late messages are dropped, and those that parked are
// kept parked, to be re-driven.
func (p *partition) reap() {
	p.mu.Lock()
	done := p.done
	p.done = nil
	p.mu.Unlock()
	now := time.Now()
	for _, c := range done {
		if c.result == ResultReleased {
			continue // the partition is being handed over with it: it stays in the checkpoint
		}
		if p.calls[c.info.Token] == c {
			delete(p.calls, c.info.Token)
			p.dirty = true
		}
		if c.result == ResultParked {
			p.park(c, now)
			continue
		}
		if p.ended != nil {
			p.ended[c.info.Token] = now.Unix()
		}
	}
	p.ncalls.Store(int64(len(p.calls)))
	p.nparked.Store(int64(len(p.parked)))
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

// takeover makes this replica the partition's owner: from the last
// checkpoint, each call then in progress is started again, reading its
// messages back from the stream up to the checkpoint's floor (rebuilding
// its state; what it emits is dropped, as it was emitted before) before
// what comes after; the calls parked stay parked; and the next delivery
// reads from the floor on. The reads are the calls' own, so the partition
// takes deliveries at once.
func (p *partition) takeover(ctx context.Context, pin string) error {
	start := time.Now()
	ck, err := readCheckpoint(ctx, p.g.kv, p.n, p.stream.CachedInfo().Config.Name, p.g.ref.Name)
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
	floor := ck.Floor
	// The acknowledgement floor passes the checkpoint's only if the
	// checkpoint was lost: then what lies below it was applied, and is
	// replayed from the stream's start.
	p.replayTo = max(floor, info.AckFloor.Stream)
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

// housekeep advances the acknowledgement floor, checkpoints, parks a call
// whose failures hold the partition, re-drives the parked calls due, ends
// idle calls and checks the pin.
func (p *partition) housekeep(ctx context.Context) {
	if !p.owned {
		p.adoptOrphan(ctx)
		return
	}
	p.reap()
	p.led.advance()
	p.relieve()
	if (p.led.floor > p.written || p.dirty || p.hasAck()) && time.Since(p.wroteAt) >= p.g.cfg.Checkpoint {
		p.flush(ctx, false)
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
	ck, err := readCheckpoint(ctx, p.g.kv, p.n, p.stream.CachedInfo().Config.Name, p.g.ref.Name)
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

// flush writes the checkpoint (when there is anything new), then
// acknowledges up to it (waiting for the server's word when confirm is
// set): the acknowledgement floor never passes the checkpoint's.
func (p *partition) flush(ctx context.Context, confirm bool) {
	if p.led.floor > p.written || p.dirty {
		if !p.checkpoint(ctx) {
			return
		}
	}
	m, seq := p.led.toAck(p.written)
	if m == nil {
		return
	}
	var err error
	if confirm {
		err = m.DoubleAck(ctx)
	} else {
		err = m.Ack()
	}
	if err == nil {
		p.led.acknowledged(seq)
	}
}

// checkpoint writes the partition's checkpoint: its floor, the calls in
// progress then (those re-driven and still reading their history, as the
// parked calls they were), the calls parked, and those ended lately.
func (p *partition) checkpoint(ctx context.Context) bool {
	floor := p.led.floor
	ck := checkpoint{Stream: p.stream.CachedInfo().Config.Name, Floor: floor, Owner: p.g.id, At: time.Now().UTC(), Calls: []ckCall{}, Ended: []ckEnded{}}
	for _, c := range p.calls {
		switch {
		case c.from != nil && c.redriving.Load():
			ck.Calls = append(ck.Calls, c.from.checkpointed())
		case c.first <= floor:
			ck.Calls = append(ck.Calls, c.callOrigin.checkpointed())
		}
	}
	for _, pc := range p.parked {
		ck.Calls = append(ck.Calls, pc.checkpointed())
	}
	cutoff := time.Now().Add(-p.g.cfg.DoneTTL).Unix()
	for tok, at := range p.ended {
		if at < cutoff {
			delete(p.ended, tok)
			continue
		}
		ck.Ended = append(ck.Ended, ckEnded{Token: tok, At: at})
	}
	if err := writeCheckpoint(ctx, p.g.kv, p.n, &ck); err != nil {
		p.g.warnings.Warn("checkpoint not written; acknowledgements wait", "partition", p.n, "err", err)
		return false
	}
	p.written, p.wroteAt, p.dirty = floor, time.Now(), false
	return true
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
	ck, err := readCheckpoint(ctx, p.g.kv, p.n, p.stream.CachedInfo().Config.Name, p.g.ref.Name)
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

// delivery is what the consumer's Next gave: a message or an error.
type delivery struct {
	msg jetstream.Msg
	err error
}

// errConsumeClosed: the consumer's subscription ended by itself, without a
// terminal error said (consume starts it again).
var errConsumeClosed = errors.New("partition consumer closed")

// inbox queues a consumer's deliveries for the partition's goroutine.
type inbox struct {
	mu    sync.Mutex
	queue []delivery
	last  error // the last error nats.go reported
	wake  chan struct{}
}

// message queues a delivery (nats.go's Consume callback).
func (in *inbox) message(msg jetstream.Msg) { in.put(delivery{msg: msg}) }

// failed queues an error nats.go reports (a missed heartbeat, the consumer
// deleted).
func (in *inbox) failed(_ jetstream.ConsumeContext, err error) {
	in.mu.Lock()
	in.last = err
	in.mu.Unlock()
	in.put(delivery{err: err})
}

func (in *inbox) put(d delivery) {
	in.mu.Lock()
	in.queue = append(in.queue, d)
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// terminal is the error that ended the subscription, if nats.go said one.
func (in *inbox) terminal() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.last
}

func (in *inbox) take() []delivery {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.queue
	in.queue = nil
	return q
}
