package subscribers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/nats-io/nats.go/jetstream"
)

// checkpoint is what a partition's owner writes to the role's state bucket
// before acknowledging: everything of the partition up to Floor was applied,
// and these calls were in progress then. A new owner rebuilds each of them by
// replaying its messages from First to Floor, then carries on from Floor.
// The server's acknowledgement floor never passes the last checkpoint's, so
// nothing between them needs scanning. The calls ended lately are kept for
// DoneTTL, so a late message (a socket reconnecting after the call ended)
// does not start the call again.
type checkpoint struct {
	// Stream is the stream the sequences are of: the partition's shard.
	// Empty in checkpoints written before shards, which were all of the
	// single stream (AUDIOFAN_STREAM).
	Stream string `json:"stream,omitempty"`
	// Base is where Stream's positions start (see span): 0 until the bus
	// was moved.
	Base uint64 `json:"base,omitempty"`
	// Priors are the streams the partition was read from before Stream
	// (retired by a move), oldest first, as long as a call begun there is
	// in progress or parked.
	Priors []ckSpan  `json:"priors,omitempty"`
	Floor  uint64    `json:"floor"` // a position (see span)
	Owner  string    `json:"owner"` // the replica that wrote it
	Calls  []ckCall  `json:"calls"`
	Ended  []ckEnded `json:"ended"`
	At     time.Time `json:"at"`
}

// ckSpan is a span as a checkpoint keeps it.
type ckSpan struct {
	Stream string `json:"stream"`
	Base   uint64 `json:"base"`
}

type ckCall struct {
	Token   codec.Token `json:"t"`
	First   uint64      `json:"f"`           // position of its first message in the partition
	FirstAt time.Time   `json:"fa,omitzero"` // when the stream stored it: where a call whose start is lost was missing from
	Legacy  bool        `json:"l,omitempty"` // it began before the stream was partitioned
	Parked  *ckParked   `json:"p,omitempty"` // parked: re-driven from the bus, not replayed to the floor
}

// origin is the checkpointed call's origin; id is its decoded token.
func (cc ckCall) origin(id string) callOrigin {
	return callOrigin{info: CallInfo{ID: id, Token: cc.Token}, first: cc.First, firstAt: cc.FirstAt, legacy: cc.Legacy}
}

// ckParked is a parked call's state: everything of it up to Applied was
// applied before it parked.
type ckParked struct {
	Applied uint64    `json:"a"`
	Since   time.Time `json:"s"`
	Reason  string    `json:"r"`
	Tries   int       `json:"n"`
}

type ckEnded struct {
	Token codec.Token `json:"t"`
	At    int64       `json:"at"` // unix seconds
}

// maxEnded bounds the calls a checkpoint remembers as ended (the oldest go
// first), so a burst of short calls cannot grow it past NATS's payload limit.
const maxEnded = 2000

func partitionKey(p int) string { return "p" + strconv.Itoa(p) }

// StateBucket is the KV bucket of a role's partition checkpoints.
func StateBucket(stream, role string) string { return stream + "-" + role + "-partitions" }

// readCheckpoint reads partition p's checkpoint as written (base:
// AUDIOFAN_STREAM, the stream of checkpoints that name none); of says what
// it is worth to a reader of one stream.
func readCheckpoint(ctx context.Context, kv jetstream.KeyValue, p int, base string) (checkpoint, error) {
	var ck checkpoint
	e, err := kv.Get(ctx, partitionKey(p))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return checkpoint{Stream: base}, nil // as of the first stream: nothing applied there
	}
	if err != nil {
		return ck, fmt.Errorf("read checkpoint of partition %d: %w", p, err)
	}
	if err := json.Unmarshal(e.Value(), &ck); err != nil {
		// A checkpoint that does not decode is as good as none: the
		// partition is read from the start of the stream instead.
		return checkpoint{}, nil
	}
	ck.Stream = cmp.Or(ck.Stream, base)
	return ck, nil
}

// of is the checkpoint as a reader of stream takes it: one of another
// stream (the bus was moved and the partition not yet read to the end of
// the retired stream, or its stream is gone) keeps only its ended calls:
// its positions number another stream's messages, and a floor taken from
// them would skip this one's.
func (ck checkpoint) of(stream string) checkpoint {
	if ck.Stream == stream {
		return ck
	}
	return checkpoint{Stream: stream, Ended: ck.Ended}
}

// ownCheckpoint is the partition's checkpoint as a reader of the stream it
// reads now takes it.
func (p *partition) ownCheckpoint(ctx context.Context) (checkpoint, error) {
	ck, err := readCheckpoint(ctx, p.g.kv, p.n, p.g.ref.Name)
	return ck.of(p.stream.CachedInfo().Config.Name), err
}

func writeCheckpoint(ctx context.Context, kv jetstream.KeyValue, p int, ck *checkpoint) error {
	if len(ck.Ended) > maxEnded {
		slices.SortFunc(ck.Ended, func(a, b ckEnded) int { return int(b.At - a.At) })
		ck.Ended = ck.Ended[:maxEnded]
	}
	data, err := json.Marshal(ck)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, partitionKey(p), data); err != nil {
		return fmt.Errorf("write checkpoint of partition %d: %w", p, err)
	}
	return nil
}

// Finished reports whether a role has finished a call, as the checkpoint of
// the call's partition says (within about a second of the call's end): for
// tests and tools that wait for a role's output.
func Finished(ctx context.Context, js jetstream.JetStream, ref broker.StreamRef, role string, callTok codec.Token) (bool, error) {
	subj, err := broker.ReadSubjects(ctx, js, ref)
	if err != nil {
		return false, err
	}
	kv, err := js.KeyValue(ctx, StateBucket(ref.Name, role))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ck, err := readCheckpoint(ctx, kv, subj.Partition(callTok), ref.Name)
	if err != nil {
		return false, err
	}
	for _, e := range ck.Ended {
		if e.Token == callTok {
			return true, nil
		}
	}
	return false, nil
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
	ck := checkpoint{Stream: p.stream.CachedInfo().Config.Name, Base: p.base, Floor: floor, Owner: p.g.id, At: time.Now().UTC(), Calls: []ckCall{}, Ended: []ckEnded{}}
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
	if len(p.priors) > 0 {
		// The retired streams are kept as long as a call begun there
		// needs them (a takeover reads its history from them).
		firsts := make([]uint64, 0, len(ck.Calls))
		for _, cc := range ck.Calls {
			firsts = append(firsts, cc.First)
		}
		for _, c := range p.calls {
			firsts = append(firsts, c.first) // those after the floor too: they may read theirs
		}
		p.priors = neededSpans(p.priors, p.base, firsts)
		ck.Priors = ckSpans(p.priors)
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
