package subscribers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// partitionMaxAckPending bounds the messages of a partition delivered and
// not yet acknowledged: what a replica holds in memory for it when one of
// its calls is stuck on a resource that is down.
const partitionMaxAckPending = 4096

// historyReaders bounds the calls read back at once when a partition is
// taken over.
const historyReaders = 8

// entry is a message of the partition in the order it was delivered, until
// the acknowledgement floor passes it.
type entry struct {
	seq  uint64
	msg  jetstream.Msg // the partition consumer's delivery; nil when read from the stream
	done atomic.Bool
}

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
	cons    jetstream.Consumer

	// The run goroutine's own.
	owned    bool
	pin      string
	hw       uint64 // highest stream sequence queued
	cseq     uint64 // highest consumer delivery sequence seen
	needFill bool   // read the stream from hw+1 before the next delivery
	replayTo uint64 // messages up to this were applied by the previous owner
	entries  []*entry
	floor    uint64
	ackMsg   jetstream.Msg
	ackSeq   uint64
	acked    uint64
	written  uint64
	wroteAt  time.Time
	dirty    bool
	calls    map[codec.Token]*callWork
	ended    map[codec.Token]int64
	checked  time.Time
	idleAt   time.Time
	callCtx  context.Context // the calls' context: canceled when the partition goes
	ccancel  context.CancelFunc
	wg       sync.WaitGroup

	mu   sync.Mutex
	done []*callWork // calls whose goroutine returned, for run to forget

	pending atomic.Uint64 // messages stored and not yet delivered, as of the last delivery
	ncalls  atomic.Int64
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
		MaxAckPending:  partitionMaxAckPending,
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
	it, err := p.cons.Messages(jetstream.PullPriorityGroup(ownerGroup), jetstream.PullMaxMessages(512),
		jetstream.PullExpiry(expiry), jetstream.PullHeartbeat(max(500*time.Millisecond, expiry/4)))
	if err != nil {
		return err
	}
	// One goroutine waits in Next, without a deadline (nats.go watches the
	// server's heartbeats only while Next waits), and queues what comes
	// without bound (the server bounds it: MaxAckPending), so pulls go on,
	// and the pin stays, while this goroutine is busy taking over.
	in := &inbox{wake: make(chan struct{}, 1)}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		in.forward(it)
	}()
	defer func() {
		it.Stop()
		<-stopped
	}()
	tick := time.NewTicker(min(200*time.Millisecond, p.g.cfg.Checkpoint))
	defer tick.Stop()
	for {
		select {
		case <-in.wake:
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
		for _, d := range in.take() {
			if d.err != nil {
				if errors.Is(d.err, jetstream.ErrMsgIteratorClosed) || errors.Is(d.err, jetstream.ErrConsumerDeleted) {
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
	seq, cseq := md.Sequence.Stream, md.Sequence.Consumer
	if seq <= p.hw { // queued already, or applied by the previous owner
		if cseq != p.cseq+1 {
			// Deliveries were lost just before this one (a slow client
			// dropped them): the next new message must not pass them.
			p.needFill = true
		}
		p.cseq = max(p.cseq, cseq)
		return nil
	}
	if p.needFill || md.NumDelivered > 1 || cseq != p.cseq+1 {
		// Not the next delivery after the last one: deliveries were lost
		// on the way (a reconnect dropped what was in flight, a slow client
		// dropped what it could not hold), this is a redelivery of one of
		// them, or the previous owner held messages unacknowledged. Read
		// what the stream holds after hw, so every message missing is
		// applied in order. After a redelivery, to the stream's current
		// end: the redeliveries that follow fall behind hw and are skipped
		// as they come, one read for the lot rather than one each.
		// Otherwise up to this delivery: reading further would only read
		// again what the consumer is about to deliver (at a takeover in a
		// backlog, the whole backlog twice).
		to := seq - 1
		if md.NumDelivered > 1 {
			to = 0
		}
		if err := p.fill(ctx, p.hw+1, to); err != nil {
			// Not now (a leader moving, a cluster busy): this delivery
			// waits in the stream with the rest, and the next delivery (or
			// its redelivery) reads again, on the same subscription.
			p.needFill = true
			p.g.warnings.Warn("reading a gap from the stream failed; reading again at the next delivery", "partition", p.n, "err", err)
			return nil
		}
		p.needFill = false
	}
	p.cseq = max(p.cseq, cseq)
	if seq <= p.hw { // read by the fill: its entry may name it for the acknowledgement
		for i := len(p.entries) - 1; i >= 0 && p.entries[i].seq >= seq; i-- {
			if p.entries[i].seq == seq && p.entries[i].msg == nil {
				p.entries[i].msg = msg
			}
		}
		return nil
	}
	e := &entry{seq: seq, msg: msg}
	p.entries = append(p.entries, e)
	p.hw = seq
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
	c := p.calls[tok]
	if c == nil {
		if _, ended := p.ended[tok]; ended {
			it.markDone()
			p.g.m.messages.WithLabelValues(OutcomeLate).Inc()
			p.g.warnings.Warn("message of a call already finished here dropped", "call", tok, "subject", it.subject, "seq", it.seq)
			return
		}
		id, err := codec.DecodeToken(tok)
		if !ok || err != nil {
			it.markDone()
			p.g.m.messages.WithLabelValues(OutcomeTerminated).Inc()
			p.g.warnings.Warn("message outside the scheme skipped", "subject", it.subject, "seq", it.seq)
			return
		}
		c = p.startCall(CallInfo{ID: id, Token: tok}, it.seq)
		if !it.replay && p.g.inLegacyWindow() {
			p.readLegacy(ctx, c, false)
		}
	}
	if !c.push(it) {
		it.markDone()
		p.g.m.messages.WithLabelValues(OutcomeLate).Inc()
	}
}

func (p *partition) startCall(info CallInfo, first uint64) *callWork {
	c := newCallWork(p, info, first)
	p.calls[info.Token] = c
	p.ncalls.Store(int64(len(p.calls)))
	p.dirty = true
	cctx := p.callCtx
	p.wg.Go(func() { c.run(cctx) })
	return c
}

// finished is how a call's goroutine says it is over; run forgets the call.
func (p *partition) finished(c *callWork, result string) {
	p.mu.Lock()
	p.done = append(p.done, c)
	p.mu.Unlock()
}

// reap forgets the calls that finished; those that ended are remembered as
// ended, so their late messages are dropped.
func (p *partition) reap() {
	p.mu.Lock()
	done := p.done
	p.done = nil
	p.mu.Unlock()
	for _, c := range done {
		if c.result == ResultReleased {
			continue // the partition is being handed over with it: it stays in the checkpoint
		}
		if p.calls[c.info.Token] == c {
			delete(p.calls, c.info.Token)
			p.dirty = true
		}
		if p.ended != nil {
			p.ended[c.info.Token] = time.Now().Unix()
		}
	}
	p.ncalls.Store(int64(len(p.calls)))
}

// takeover makes this replica the partition's owner: from the last
// checkpoint, each call then in progress is read back from the stream and
// replayed up to the checkpoint's floor (rebuilding its state; what it emits
// is dropped, as it was emitted before), and the next delivery reads from
// the floor on.
func (p *partition) takeover(ctx context.Context, pin string) error {
	start := time.Now()
	ck, err := readCheckpoint(ctx, p.g.kv, p.n)
	if err != nil {
		return err
	}
	info, err := p.cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("partition %d: %w", p.n, err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	p.callCtx, p.ccancel = cctx, cancel
	p.calls, p.ended = map[codec.Token]*callWork{}, map[codec.Token]int64{}
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
	var calls []*callWork
	for _, cc := range ck.Calls {
		id, err := codec.DecodeToken(cc.Token)
		if err != nil {
			continue
		}
		c := p.startCall(CallInfo{ID: id, Token: cc.Token}, cc.First)
		c.legacy = cc.Legacy
		calls = append(calls, c)
	}
	if err := p.readHistory(ctx, calls, floor); err != nil {
		p.drop()
		return err
	}
	p.owned, p.pin = true, pin
	p.isOwned.Store(true)
	p.hw, p.floor, p.written, p.acked, p.ackSeq = floor, floor, floor, floor, floor
	// dirty: the first housekeeping writes the checkpoint, which tells a
	// previous owner that lost its pin that the partition is taken.
	p.entries, p.ackMsg, p.needFill, p.dirty = nil, nil, true, true
	p.cseq, p.checked, p.wroteAt, p.idleAt = 0, time.Now(), time.Time{}, time.Now()
	p.g.m.partitions.Inc()
	p.log.Info("partition taken", "calls", len(ck.Calls), "from", floor, "previous", ck.Owner, "acked", info.AckFloor.Stream,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// readHistory replays the calls' messages up to floor, as a new owner
// rebuilds them: those stored before partitioning first, for a call that
// began then. Each call is read by an ordered consumer of its own, filtered
// to the call alone (historyReaders at once): one filter is what the server
// reads cheaply, and the read takes the call's messages only.
func (p *partition) readHistory(ctx context.Context, calls []*callWork, floor uint64) error {
	work := make(chan *callWork)
	errs := make(chan error, historyReaders)
	var wg sync.WaitGroup
	for range min(historyReaders, len(calls)) {
		wg.Go(func() {
			for c := range work {
				if err := p.readCall(ctx, c, floor); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for _, c := range calls {
		work <- c
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// readCall replays one call up to floor.
func (p *partition) readCall(ctx context.Context, c *callWork, floor uint64) error {
	push := func(it item) {
		if _, kind, ok := p.g.subj.CallTokenKind(it.subject); ok && p.g.reads(kind) {
			c.push(it)
		}
	}
	if c.legacy {
		if err := p.read(ctx, []string{p.g.subj.LegacyCall(c.info.Token)}, 1, 0, true, p.legacyPush(c)); err != nil {
			return err
		}
	}
	return p.read(ctx, []string{p.g.subj.StoredCall(c.info.Token)}, max(c.first, 1), floor, true, push)
}

// readLegacy reads, during the upgrade from the per-call design, the
// messages a call had before the stream partitioned calls, if any: they
// come before all of its partitioned ones.
func (p *partition) readLegacy(ctx context.Context, c *callWork, replay bool) {
	_, err := p.g.stream.GetLastMsgForSubject(ctx, p.g.subj.LegacyKind(c.info.Token, broker.KindLifecycle))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			p.log.Warn("legacy lookup", "call", c.info.ID, "err", err)
		}
		return
	}
	c.legacy = true
	if err := p.read(ctx, []string{p.g.subj.LegacyCall(c.info.Token)}, 1, 0, replay, p.legacyPush(c)); err != nil {
		p.log.Warn("legacy read", "call", c.info.ID, "err", err)
	}
}

// legacyPush queues, of what a read of the call's unpartitioned subjects
// brings, the messages that really are the call's and of a kind the role
// reads (the filter also matches a partition whose number is the token).
func (p *partition) legacyPush(c *callWork) func(item) {
	return func(it item) {
		if info, err := p.g.subj.ParseStored(it.subject); err == nil && !info.Partitioned && info.Call == c.info.ID && p.g.reads(info.Kind) {
			c.push(it)
		}
	}
}

// fill queues the partition's messages stored from sequence from up to to
// (0: the stream's current end), read from the stream: those the consumer
// delivered elsewhere, lost on the way, or has yet to deliver again.
func (p *partition) fill(ctx context.Context, from, to uint64) error {
	if to > 0 && to < from {
		return nil
	}
	p.log.Debug("reading the partition from the stream", "from", from, "to", to)
	p.g.m.reads.Inc()
	return p.read(ctx, p.filters, from, to, false, func(it item) {
		e := &entry{seq: it.seq}
		p.entries = append(p.entries, e)
		p.hw = it.seq
		it.e = e
		it.replay = it.seq <= p.replayTo
		p.route(ctx, it)
	})
}

// read feeds fn the stored messages matching filters from sequence from up
// to to (0: to the stream's end), with an ordered consumer, deleted after.
func (p *partition) read(ctx context.Context, filters []string, from, to uint64, replay bool, fn func(item)) error {
	// MaxResetAttempts: nats.go recreates an ordered consumer whose
	// deliveries stop, by default forever and deaf to ctx; a connection
	// closed under it (the replica stopping) would hang the read for good.
	oc, err := p.g.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: filters,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from, InactiveThreshold: readInactive,
		MaxResetAttempts: readAttempts})
	if err != nil {
		return fmt.Errorf("read partition %d from %d: %w", p.n, from, err)
	}
	defer func() {
		// Ordered consumers count against the stream's MaxConsumers until
		// they expire: a takeover must not leave hundreds behind.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.g.stream.DeleteConsumer(dctx, oc.CachedInfo().Name)
	}()
	// Every read has a message to stop at (the call's first one, the
	// delivery that made the partition fill the gap before it, a legacy
	// message looked up first), so a batch that brings nothing before the
	// last matching message (NumPending 0) is the stream or its new
	// consumer not answering yet (a leader moving): wait and ask again,
	// never take it for the end.
	for empty := 0; ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, err := oc.Fetch(256, jetstream.FetchMaxWait(readWait))
		if err != nil {
			return fmt.Errorf("read partition %d from %d: %w", p.n, from, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				continue
			}
			if to > 0 && md.Sequence.Stream > to {
				return nil
			}
			fn(item{subject: msg.Subject(), data: msg.Data(), seq: md.Sequence.Stream, stored: md.Timestamp, replay: replay})
			if md.NumPending == 0 {
				return nil // the last message stored that matches
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read partition %d from %d: %w", p.n, from, err)
		}
		if n > 0 {
			empty = 0
			continue
		}
		if empty++; empty >= readAttempts {
			return fmt.Errorf("read partition %d from %d to %d: %w", p.n, from, to, errReadStalled)
		}
	}
}

// readWait bounds one batch of a read; readAttempts empty batches in a row
// fail it (the caller tries again later).
const (
	readWait     = 2 * time.Second
	readAttempts = 5
)

// errReadStalled: the stream gave nothing where messages must be.
var errReadStalled = errors.New("stream read stalled")

// readInactive is how long the server keeps a reader's ordered consumer
// that its client forgot (nats.go's default is five minutes).
const readInactive = 10 * time.Second

// housekeep advances the acknowledgement floor, checkpoints, ends idle calls
// and checks the pin.
func (p *partition) housekeep(ctx context.Context) {
	if !p.owned {
		p.adoptOrphan(ctx)
		return
	}
	p.reap()
	p.advance()
	if (p.floor > p.written || p.dirty) && time.Since(p.wroteAt) >= p.g.cfg.Checkpoint {
		p.flush(ctx, false)
	}
	if time.Since(p.idleAt) >= time.Second {
		p.idleAt = time.Now()
		limit := time.Now().Add(-p.g.cfg.IdleTimeout).UnixNano()
		for _, c := range p.calls {
			if c.active.Load() < limit {
				c.endIdle()
			}
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
	ck, err := readCheckpoint(ctx, p.g.kv, p.n)
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

// advance moves the floor over the messages applied, in order.
func (p *partition) advance() {
	i := 0
	for ; i < len(p.entries) && p.entries[i].done.Load(); i++ {
		e := p.entries[i]
		p.floor = e.seq
		if e.msg != nil {
			p.ackMsg, p.ackSeq = e.msg, e.seq
		}
	}
	if i > 0 {
		clear(p.entries[:i])
		p.entries = p.entries[i:]
	}
}

// flush writes the checkpoint, then acknowledges up to it (waiting for the
// server's word when confirm is set): the acknowledgement floor never
// passes the checkpoint's.
func (p *partition) flush(ctx context.Context, confirm bool) {
	ck := checkpoint{Floor: p.floor, Owner: p.g.id, At: time.Now().UTC(), Calls: []ckCall{}, Ended: []ckEnded{}}
	for tok, c := range p.calls {
		if c.first <= p.floor {
			ck.Calls = append(ck.Calls, ckCall{Token: tok, First: c.first, Legacy: c.legacy})
		}
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
		return
	}
	p.written, p.wroteAt, p.dirty = p.floor, time.Now(), false
	if p.ackMsg == nil || p.ackSeq <= p.acked {
		return
	}
	var err error
	if confirm {
		err = p.ackMsg.DoubleAck(ctx)
	} else {
		err = p.ackMsg.Ack()
	}
	if err == nil {
		p.acked = p.ackSeq
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
	ck, err := readCheckpoint(ctx, p.g.kv, p.n)
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
	p.owned, p.calls, p.entries, p.ackMsg, p.ccancel = false, nil, nil, nil, nil
	p.ncalls.Store(0)
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
	p.advance()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.flush(ctx, true)
	if p.stillPinned(ctx) {
		if err := p.g.stream.UnpinConsumer(ctx, p.name, ownerGroup); err != nil {
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

// inbox queues a consumer's deliveries for the partition's goroutine.
type inbox struct {
	mu    sync.Mutex
	queue []delivery
	wake  chan struct{}
}

// forward waits in Next and queues what it gives, until the iterator is
// closed (the error is queued too).
func (in *inbox) forward(it jetstream.MessagesContext) {
	for {
		msg, err := it.Next()
		in.mu.Lock()
		in.queue = append(in.queue, delivery{msg, err})
		in.mu.Unlock()
		select {
		case in.wake <- struct{}{}:
		default:
		}
		if err != nil && (errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted)) {
			return
		}
	}
}

func (in *inbox) take() []delivery {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.queue
	in.queue = nil
	return q
}
