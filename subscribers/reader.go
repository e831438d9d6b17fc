package subscribers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
)

// Reads of the stream itself, besides the partition consumer: a call's
// history (at a takeover, a re-drive) and the gaps the consumer left.

// historyReaders bounds the calls of a role read back from the stream at
// once, on this replica (takeovers and re-drives alike): each holds an
// ordered consumer on the stream while its call replays.
const historyReaders = 8

// readCall feeds fn the call's messages from its first (or after the last
// applied, when read again) up to its history's end, those up to the
// history's replayTo as a replay; the messages stored before the stream
// was partitioned first, for a call that began then. One filter, the call
// alone: what the server reads cheaply. A call that began before the bus
// was moved is read from the retired stream first, then from its shard
// (its spans). fn returning false stops the read.
func (p *partition) readCall(ctx context.Context, c *callWork, fn func(item) bool) error {
	h := c.hist
	if c.legacy && c.last < c.first {
		replay := h.replayTo > 0
		sp, err := p.resolve(ctx, c.spans[spanOf(c.spans, c.first)])
		if err != nil {
			return err
		}
		err = p.read(ctx, sp, []string{p.g.subj.LegacyCall(c.info.Token)}, 1, 0, func(it item) bool {
			if info, err := p.g.subj.ParseStored(it.subject); err == nil && !info.Partitioned && info.Call == c.info.ID && p.g.reads(info.Kind) {
				it.replay = replay
				return fn(it)
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	from := max(c.first, c.last+1, 1)
	first := true
	filter := p.g.subj.StoredCall(c.info.Token)
	for i := spanOf(c.spans, from); i < len(c.spans) && from <= h.to; i++ {
		to := h.to
		if i+1 < len(c.spans) {
			to = min(to, c.spans[i+1].base)
		}
		sp, err := p.resolve(ctx, c.spans[i])
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			p.log.Warn("a retired stream that held part of a call is gone: the call is rebuilt without it", "call", c.info.ID, "stream", sp.name)
			from = to + 1
			continue
		}
		if err != nil {
			return err
		}
		if i+1 < len(c.spans) || from <= sp.base {
			// A span the call may have nothing in (it began in an earlier
			// one, or this one is retired and ends before to): read only
			// up to its last message, so the read has a message to stop at.
			last, err := sp.stream.GetLastMsgForSubject(ctx, filter)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				from = to + 1
				continue
			}
			if err != nil {
				return fmt.Errorf("read call %s from %s: %w", c.info.ID, sp.name, err)
			}
			if to = min(to, sp.base+last.Sequence); to < from {
				from = to + 1
				continue
			}
		}
		err = p.read(ctx, sp, []string{filter}, from, to, func(it item) bool {
			if first && from == c.first && it.seq > c.first {
				c.lostStart(ctx, it) // the stream's retention removed the call's start
			}
			first = false
			if _, kind, ok := p.g.subj.CallTokenKind(it.subject); !ok || !p.g.reads(kind) {
				return true
			}
			it.replay = it.seq <= h.replayTo
			return fn(it)
		})
		if err != nil {
			return err
		}
		first, from = false, to+1
	}
	return nil
}

// readLegacy reads, during the upgrade from the per-call design, the
// messages a call had before the stream partitioned calls, if any: they
// come before all of its partitioned ones.
func (p *partition) readLegacy(ctx context.Context, c *callWork, replay bool) {
	_, err := p.stream.GetLastMsgForSubject(ctx, p.g.subj.LegacyKind(c.info.Token, broker.KindLifecycle))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			p.log.Warn("legacy lookup", "call", c.info.ID, "err", err)
		}
		return
	}
	c.legacy = true
	if err := p.read(ctx, p.span(), []string{p.g.subj.LegacyCall(c.info.Token)}, 1, 0, func(it item) bool {
		if info, err := p.g.subj.ParseStored(it.subject); err == nil && !info.Partitioned && info.Call == c.info.ID && p.g.reads(info.Kind) {
			it.replay = replay
			c.push(it)
		}
		return true
	}); err != nil {
		p.log.Warn("legacy read", "call", c.info.ID, "err", err)
	}
}

// fill queues the partition's messages stored from sequence from up to to
// (0: the stream's current end), read from the stream: those the consumer
// delivered elsewhere (a previous owner), or lost on the way.
func (p *partition) fill(ctx context.Context, from, to uint64) error {
	if to > 0 && to < from {
		return nil
	}
	p.log.Debug("reading the partition from the stream", "from", from, "to", to)
	p.g.m.reads.Inc()
	return p.read(ctx, p.span(), p.filters, from, to, func(it item) bool {
		it.e = p.led.queue(it.seq, nil)
		it.replay = it.seq <= p.replayTo
		p.route(ctx, it)
		return true
	})
}

// read feeds fn the messages of sp matching filters from position from up
// to to (0: to the stream's end), with an ordered consumer, deleted after;
// fn returning false ends the read.
func (p *partition) read(ctx context.Context, sp span, filters []string, from, to uint64, fn func(item) bool) error {
	start := uint64(1)
	if from > sp.base {
		start = from - sp.base
	}
	var stop uint64
	if to > 0 {
		if to <= sp.base {
			return nil
		}
		stop = to - sp.base
	}
	// MaxResetAttempts: nats.go recreates an ordered consumer whose
	// deliveries stop, by default forever and deaf to ctx; a connection
	// closed under it (the replica stopping) would hang the read for good.
	oc, err := sp.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: filters,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start, InactiveThreshold: readInactive,
		MaxResetAttempts: readAttempts})
	if err != nil {
		return fmt.Errorf("read partition %d from %d: %w", p.n, from, err)
	}
	defer func() {
		// Ordered consumers count against the stream's MaxConsumers until
		// they expire: a takeover must not leave hundreds behind.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = sp.stream.DeleteConsumer(dctx, oc.CachedInfo().Name)
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
			if stop > 0 && md.Sequence.Stream > stop {
				return nil
			}
			if !fn(item{subject: msg.Subject(), data: msg.Data(), seq: sp.base + md.Sequence.Stream, stored: md.Timestamp}) {
				return nil
			}
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
