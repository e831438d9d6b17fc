package receiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// batcher publishes the receiver's messages in fast batches (ADR-50,
// nats-server 2.14+): one batch at a time for the whole process, its
// messages in the order the sockets hand them over, acknowledged by the
// server every so many messages (a flow ack) instead of one by one. That
// spares the publisher most of its cost a message, and the server its
// replies. It has the async publisher's API, so the sockets' pipelines keep
// their windows, retries and order as they are.
//
// One batch for the process, not one per socket: the server shares its
// acknowledgements out among the batches open on a stream (500 messages
// divided by their number), so a batch per socket would be acknowledged
// message by message at a few hundred sockets; and it allows at most 1,000
// open batches per stream.
//
// What the contract asks is kept this way:
//   - No loss: a message is stored when a flow ack or the batch's final
//     acknowledgement covers its place in the batch. A batch that ends any
//     other way fails every message not covered, and the pipelines send them
//     again, in order. It ends on a gap (a message lost on its way: after a
//     reconnect, say), on an error, or when nothing is acknowledged within
//     AUDIOFAN_PUBLISH_ACK_TIMEOUT (a restarted server, a leader that moved).
//   - No duplicates: every message keeps its Nats-Msg-Id. One that was
//     stored although its batch failed is not stored again.
//   - Order: the batches fail on a gap ("gap: fail"), so the server stores
//     nothing sent after a lost message: none overtakes it. A new batch
//     starts only once the one before has settled. Until then, messages
//     wait, unsent, in the order they came.
//
// The tail of a burst is not acknowledged until more messages follow, so a
// batch is committed (ended) when sending pauses (lingerFor), or when its
// oldest message has waited tailWait with no acknowledgement (too few
// messages for a flow ack); its final acknowledgement covers the tail. That
// bounds the latency a quiet moment adds.
type batcher struct {
	nc      *nats.Conn
	direct  publisher // what is published and acknowledged alone
	timeout time.Duration
	max     int
	stall   time.Duration // how long a publish waits for room under max
	room    chan struct{} // closed when messages settle: there may be room
	inbox   string
	log     *slog.Logger
	ended   func(reason string, err error) // each batch, as it ends

	mu      sync.Mutex
	sub     *nats.Subscription
	cur     *batch        // open, taking messages; nil: none
	closing *batch        // committed, awaiting its final acknowledgement
	held    []*batchAwait // waiting for closing to settle, in order
	n       int           // sent and held, not yet settled
	stop    chan struct{}
	done    chan struct{}
}

// Fast batch operations, the last token but one of a message's reply subject.
const (
	opStart     = 0
	opAppend    = 1
	opCommitEOB = 3 // end the batch, storing nothing
)

// batchFlow is how often the server is asked to acknowledge (in messages):
// it may lower it when other batches share the stream.
const batchFlow = 100

// lingerFor is the pause in sending, and in acknowledgements, after which a
// batch with messages awaiting their acknowledgement is committed, to get
// one: the tail of a burst. While flow acks come, nothing is committed: a
// commit holds new messages back until it is answered, which delays their
// storing, while a late acknowledgement delays nothing but the socket's
// window. So it is long enough that a receiver descheduled for a moment
// does not commit.
const lingerFor = 25 * time.Millisecond

// tailWait commits a batch whose oldest message has waited this long with no
// acknowledgement meanwhile, though messages still trickle in: too few for a
// flow ack (a quiet receiver).
const tailWait = 100 * time.Millisecond

// idleClose ends an open batch with nothing in flight: the server abandons a
// batch silent for 10 s, with an advisory, and keeps it counted until then.
const idleClose = 2 * time.Second

// Reasons a batch ended, the label of audiofan_receiver_fast_batches_total.
const (
	batchCommitted = "committed" // ended by us, everything acknowledged
	batchGap       = "gap"       // the server missed a message
	batchError     = "error"     // the server refused the batch
	batchTimeout   = "timeout"   // no acknowledgement in time
)

// storedAck is what every acknowledged message's future gets: the pipeline
// reads only that it came, so one value serves all (no allocation a frame).
var storedAck = &jetstream.PubAck{}

// errBatchEnded fails the messages a batch did not store: they are sent
// again, like those of an async publish that timed out.
var errBatchEnded = errors.New("fast batch ended before the message was acknowledged")

type batch struct {
	id      string
	prefix  string        // of its messages' reply subjects: <inbox>.<id>.<flow>.fail.
	seq     uint64        // the last one sent
	acked   uint64        // covered by acknowledgements
	pending []*batchAwait // sent, after acked, ascending
	subject string        // of the last message: the commit goes there
	last    time.Time     // the last send
	moved   time.Time     // the start, or the last acknowledgement
	commit  time.Time     // when the commit was sent, or the gap reported
	gap     bool          // the server reported a gap: it ends the batch
}

// batchAwait is one message's jetstream.PubAckFuture.
type batchAwait struct {
	msg  *nats.Msg
	seq  uint64
	sent time.Time
	ok   chan *jetstream.PubAck
	err  chan error
}

func (a *batchAwait) Ok() <-chan *jetstream.PubAck { return a.ok }
func (a *batchAwait) Err() <-chan error            { return a.err }
func (a *batchAwait) Msg() *nats.Msg               { return a.msg }

// newBatcher subscribes to the batches' acknowledgements on nc. direct
// publishes what is not batched (PublishMsg). close stops it.
func newBatcher(nc *nats.Conn, direct publisher, cfg PublishConfig, log *slog.Logger, ended func(reason string, err error)) (*batcher, error) {
	b := &batcher{nc: nc, direct: direct, timeout: cfg.AckTimeout, max: cfg.MaxPending, stall: cfg.Block, room: make(chan struct{}), log: log, ended: ended,
		inbox: nc.NewInbox(), stop: make(chan struct{}), done: make(chan struct{})}
	sub, err := nc.Subscribe(b.inbox+".>", b.reply)
	if err != nil {
		return nil, fmt.Errorf("fast batch acknowledgements: %w", err)
	}
	b.sub = sub
	go b.tick()
	return b, nil
}

// close stops the batcher; what is still in flight fails.
func (b *batcher) close() {
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.sub.Unsubscribe()
	for _, c := range []*batch{b.cur, b.closing} {
		if c != nil {
			b.failLocked(c, nats.ErrConnectionClosed)
		}
	}
	for _, a := range b.held {
		a.err <- nats.ErrConnectionClosed
	}
	b.cur, b.closing, b.held, b.n = nil, nil, nil, 0
}

// PublishMsg publishes msg alone and waits for its acknowledgement.
func (b *batcher) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return b.direct.PublishMsg(ctx, msg, opts...)
}

// PublishMsgAsync adds msg to the open batch, or holds it until the batch
// before has settled. With AUDIOFAN_PUBLISH_MAX_PENDING messages in flight
// it waits for room up to AUDIOFAN_PUBLISH_BLOCK, as the async publisher
// does; the options of an async publish do not apply.
func (b *batcher) PublishMsgAsync(msg *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n >= b.max {
		t := time.NewTimer(b.stall)
		defer t.Stop()
		for b.n >= b.max {
			room := b.room
			b.mu.Unlock()
			select {
			case <-room:
			case <-t.C:
				b.mu.Lock()
				return nil, jetstream.ErrTooManyStalledMsgs
			}
			b.mu.Lock()
		}
	}
	a := &batchAwait{msg: msg, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	if b.closing != nil {
		b.held = append(b.held, a)
		b.n++
		return a, nil
	}
	if err := b.sendLocked(a); err != nil {
		return nil, err
	}
	b.n++
	return a, nil
}

// sendLocked sends a in the open batch, starting one if none is.
func (b *batcher) sendLocked(a *batchAwait) error {
	now := time.Now()
	c := b.cur
	if c == nil {
		id := nuid.Next()
		c = &batch{id: id, prefix: b.inbox + "." + id + "." + strconv.Itoa(batchFlow) + ".fail.", moved: now}
	}
	op := opAppend
	if c.seq == 0 {
		op = opStart
	}
	a.msg.Reply = b.replySubject(c, c.seq+1, op)
	if err := b.nc.PublishMsg(a.msg); err != nil {
		return err
	}
	c.seq++
	a.seq, a.sent = c.seq, now
	c.pending = append(c.pending, a)
	c.subject, c.last = a.msg.Subject, now
	b.cur = c
	return nil
}

// replySubject is <inbox>.<batch>.<flow>.fail.<seq>.<op>.$FI: the server
// reads the batch from it, and answers on it.
func (b *batcher) replySubject(c *batch, seq uint64, op int) string {
	var buf [128]byte
	r := append(buf[:0], c.prefix...)
	r = strconv.AppendUint(r, seq, 10)
	r = append(r, '.')
	r = strconv.AppendInt(r, int64(op), 10)
	r = append(r, ".$FI"...)
	return string(r)
}

// batchReply is any of the server's answers on a batch's reply subjects: a
// flow ack, a gap, an error, or the final acknowledgement.
type batchReply struct {
	Type    string              `json:"type"`
	Seq     uint64              `json:"seq"`
	LastSeq uint64              `json:"last_seq"`
	Stream  string              `json:"stream"`
	Batch   string              `json:"batch"`
	Count   uint64              `json:"count"`
	Error   *jetstream.APIError `json:"error"`
}

// reply handles the server's answers.
func (b *batcher) reply(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, b.inbox)
	rest, ok2 := strings.CutPrefix(rest, ".")
	ok = ok && ok2
	if !ok {
		return
	}
	id, _, _ := strings.Cut(rest, ".")
	var r batchReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		b.log.Warn("fast batch: unreadable answer", "err", err, "answer", string(bytes.TrimSpace(m.Data)))
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var c *batch
	switch {
	case b.cur != nil && b.cur.id == id:
		c = b.cur
	case b.closing != nil && b.closing.id == id:
		c = b.closing
	default:
		return // a batch already settled
	}
	switch r.Type {
	case "ack":
		b.ackLocked(c, r.Seq)
	case "gap":
		// The server ends the batch and, once what it got is written,
		// says how much that was: wait for it, sending nothing more in
		// this batch (new messages are held meanwhile).
		c.gap = true
		if b.cur == c {
			b.cur, b.closing, c.commit = nil, c, time.Now()
		}
	case "err":
		b.endLocked(c, c.acked, batchError, fmt.Errorf("%w: %w", errBatchEnded, r.Error))
	default: // the final acknowledgement
		if r.Error != nil {
			b.endLocked(c, c.acked, batchError, fmt.Errorf("%w: %w", errBatchEnded, r.Error))
			return
		}
		reason := batchCommitted
		if c.gap || c.commit.IsZero() {
			reason = batchGap // the server ended it: a gap it reported, or will
		}
		b.endLocked(c, max(c.acked, r.Count), reason, fmt.Errorf("%w: the server stored %d of its messages", errBatchEnded, r.Count))
	}
}

// ackLocked settles c's messages up to seq as stored.
func (b *batcher) ackLocked(c *batch, seq uint64) {
	if seq <= c.acked {
		return
	}
	c.acked, c.moved = seq, time.Now()
	n := 0
	for _, a := range c.pending {
		if a.seq > seq {
			break
		}
		a.ok <- storedAck
		n++
	}
	b.settledLocked(n)
	c.pending = c.pending[n:]
}

// settledLocked counts n messages out of flight.
func (b *batcher) settledLocked(n int) {
	b.n -= n
	if n > 0 {
		close(b.room)
		b.room = make(chan struct{})
	}
}

// endLocked settles batch c: its messages up to stored are stored, the rest
// fail with err. The held messages then go out in a new batch.
func (b *batcher) endLocked(c *batch, stored uint64, reason string, err error) {
	b.ackLocked(c, stored)
	failed := len(c.pending) > 0
	b.failLocked(c, err)
	if failed {
		// What waits behind a failed message fails too, unsent: sent now,
		// it would be stored ahead of the failed one's second try.
		for _, a := range b.held {
			a.err <- err
		}
		b.settledLocked(len(b.held))
		b.held = nil
	}
	if !failed {
		err = nil
	}
	b.ended(reason, err)
	if b.cur == c {
		b.cur = nil
	}
	if b.closing == c {
		b.closing = nil
	}
	if b.closing == nil {
		b.releaseLocked()
	}
}

func (b *batcher) failLocked(c *batch, err error) {
	for _, a := range c.pending {
		a.err <- err
	}
	b.settledLocked(len(c.pending))
	c.pending = nil
}

// releaseLocked sends the held messages, in order, in the open batch.
func (b *batcher) releaseLocked() {
	held := b.held
	b.held = nil
	for i, a := range held {
		if b.closing != nil {
			b.held = append(b.held, held[i:]...)
			return
		}
		if err := b.sendLocked(a); err != nil {
			// Not sent (the connection is gone and its buffer full): it
			// and those behind it fail, and their pipelines retry them.
			for _, a := range held[i:] {
				a.err <- err
			}
			b.settledLocked(len(held) - i)
			return
		}
	}
}

// tick commits a batch whose tail waits for an acknowledgement, ends one
// the server stopped answering, and closes an idle one.
func (b *batcher) tick() {
	defer close(b.done)
	t := time.NewTicker(lingerFor / 2)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case now := <-t.C:
			b.mu.Lock()
			if c := b.closing; c != nil && now.Sub(c.commit) > b.timeout {
				b.endLocked(c, c.acked, batchTimeout, fmt.Errorf("%w: %w", errBatchEnded, jetstream.ErrAsyncPublishTimeout))
			}
			if c := b.cur; c != nil {
				switch {
				case len(c.pending) > 0 && now.Sub(c.moved) > b.timeout && now.Sub(c.pending[0].sent) > b.timeout:
					b.endLocked(c, c.acked, batchTimeout, fmt.Errorf("%w: %w", errBatchEnded, jetstream.ErrAsyncPublishTimeout))
				case b.closing == nil && len(c.pending) > 0 && (now.Sub(c.last) >= lingerFor && now.Sub(c.moved) >= lingerFor ||
					now.Sub(c.pending[0].sent) >= tailWait && now.Sub(c.moved) >= tailWait),
					b.closing == nil && len(c.pending) == 0 && now.Sub(c.last) >= idleClose:
					b.commitLocked(c, now)
				}
			}
			b.mu.Unlock()
		}
	}
}

// commitLocked ends the open batch c without a message: the server answers
// with how many of its messages it stored. New messages wait for that.
func (b *batcher) commitLocked(c *batch, now time.Time) {
	m := nats.NewMsg(c.subject)
	m.Reply = b.replySubject(c, c.seq+1, opCommitEOB)
	if err := b.nc.PublishMsg(m); err != nil {
		return // disconnected: the timeout ends it
	}
	c.commit = now
	b.cur, b.closing = nil, c
}
