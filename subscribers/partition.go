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
	// The shard that holds the partition, and the role's consumer there
	// (set up by the Group, read by run).
	cur     jetstream.Stream
	curCons jetstream.Consumer

	// What the partition reads now: its shard, or, after a move of the
	// bus, first the retired stream its checkpoint names (then next is the
	// shard to read after it; see drain.go).
	stream jetstream.Stream
	cons   jetstream.Consumer
	next   *drainState

	// The run goroutine's own.
	owned    bool
	pin      string
	led      ledger
	base     uint64 // where the stream's positions start (see span)
	priors   []span // the streams read before it, while a call begun there needs them
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
	// nextPending is what waits in the shard while the partition reads a
	// retired stream to its end.
	nextPending atomic.Uint64
	ncalls      atomic.Int64
	nparked     atomic.Int64
	isOwned     atomic.Bool
	shard       atomic.Int32 // which shard holds the partition, for the metrics
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
		Description:    fmt.Sprintf("audiofan %s: partition %d of %d", p.g.role.Name, p.n, p.g.subj.Partitions()),
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
		if !p.owned {
			if err := p.prepare(ctx); err != nil {
				p.g.warnings.Warn("looking for a retired stream to read first failed; looking again", "partition", p.n, "err", err)
				sleep(ctx, time.Second)
				continue
			}
		}
		err := p.consume(ctx)
		if errors.Is(err, errSwitched) || err == nil || ctx.Err() != nil {
			continue // consume the shard now
		}
		p.log.Debug("partition consumer", "err", err)
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			p.drop()
			if p.next == nil { // a retired stream's consumer goes once it is read: prepare then picks the shard
				if c, err := p.g.ensureConsumer(ctx, p, p.cur); err != nil {
					p.log.Warn("partition consumer", "err", err)
				} else {
					p.curCons = c
				}
			}
		}
		sleep(ctx, 250*time.Millisecond)
	}
}

// consume pulls the partition (the server delivers only while this replica
// holds the pin) and applies what comes, until ctx ends or the consumer fails.
func (p *partition) consume(ctx context.Context) error {
	// The server keeps the pin while pulls come within the lease: pull
	// at least three times a lease.
	expiry := max(time.Second, p.g.cfg.Lease/3)
	if !p.owned {
		if err := p.pullFirst(ctx); err != nil {
			return err
		}
	}
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
		if p.housekeep(ctx) {
			return errSwitched
		}
	}
}

// pullFirst asks for one message before the partition's pulls start, and
// takes the partition over if it comes: the takeover's reads (the
// checkpoint, the consumer's state) then go over a quiet connection. Behind
// the first pulls of every partition of a replica starting on a backlog
// (32 × 512 messages), they took 0.1 to 0.3 s, and with pulls of 2,048 the
// first message was applied 0.5 s later still. A pull that brings nothing
// (an idle partition, or one another replica holds) costs firstPullWait.
func (p *partition) pullFirst(ctx context.Context) error {
	batch, err := p.cons.Fetch(1, jetstream.FetchPriorityGroup(ownerGroup), jetstream.FetchMaxWait(firstPullWait))
	if err != nil {
		return err
	}
	for msg := range batch.Messages() {
		if err := p.deliver(ctx, msg); err != nil {
			return err
		}
	}
	if err := batch.Error(); errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return err
	}
	return nil // nothing came, or not now: the pulls take it from here
}

// firstPullWait bounds pullFirst's wait.
const firstPullWait = 250 * time.Millisecond

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
	seq := p.base + md.Sequence.Stream // a position (see span)
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
