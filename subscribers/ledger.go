package subscribers

import (
	"context"
	"slices"
	"sync/atomic"
)

// ackHandle is a delivery that can acknowledge: with AckAll, acknowledging
// the delivery of stream sequence s acknowledges everything up to s. A
// jetstream.Msg is one.
type ackHandle interface {
	Ack() error
	DoubleAck(ctx context.Context) error
}

// entry is a message of the partition, queued in stream order, until the
// floor passes it.
type entry struct {
	seq  uint64
	msg  ackHandle // a delivery of it that can acknowledge; nil when read from the stream
	call *callWork // the call it was given to; nil when none took it
	done atomic.Bool
}

// admission is what the ledger makes of one delivery of the partition
// consumer.
type admission int

const (
	// admitNext: the next message of the partition; queue it.
	admitNext admission = iota
	// admitAfterRead: messages of the partition may be missing before it
	// (deliveries lost on the way, or held by a previous owner): read the
	// stream from hw+1 up to it first, then queue it.
	admitAfterRead
	// admitAfterReadAll: a redelivery past hw: its first delivery went
	// elsewhere (a previous owner, or lost), and so may have any of the
	// partition's messages after it, whose redeliveries come one by one as
	// their acknowledgement waits run out, new messages in between. Read
	// the stream to its current end: the delivery, and those redeliveries,
	// are then held.
	admitAfterReadAll
	// admitHeld: queued already (a redelivery, or read from the stream):
	// it only serves to acknowledge.
	admitHeld
)

// ledger is a partition's bookkeeping between the consumer and its calls:
// which stream sequences are queued (hw), whether any may be missing (the
// gap rule), the messages queued and not yet passed by the floor (every
// message up to it applied), and the delivery to acknowledge the floor
// with. It makes no NATS call: the partition reads and acknowledges as it
// says.
//
// The gap rule: the server numbers every delivery, redeliveries included,
// with the next consumer sequence (nats-server's deliverMsg). So a new
// message whose consumer sequence follows the last one seen proves that
// nothing was lost between them; any other (or the first after a takeover)
// may have messages of the partition before it that this replica never
// got, and the stream is read up to it. A redelivery of a message not
// queued yet proves less: what was delivered with it went elsewhere too, so
// the stream is read to its end. A redelivery of what is queued already only
// acknowledges: with AckAll, the highest one at or below the floor
// acknowledges everything the server still waits for, so a replica that
// fell behind past the acknowledgement wait (frozen, starved) gets the
// server's window back as it catches up.
type ledger struct {
	hw       uint64 // highest stream sequence queued
	cseq     uint64 // highest consumer sequence seen
	needRead bool   // read the stream from hw+1 before the next new message
	entries  []*entry
	floor    uint64
	ack      ackHandle // the delivery with the highest sequence at or below the floor not yet acknowledged
	ackSeq   uint64
	acked    uint64 // the server's acknowledgement floor, as far as this replica acknowledged
}

// reset starts the ledger at floor: everything up to it applied and
// acknowledged, anything after it possibly missing.
func (l *ledger) reset(floor uint64) {
	clear(l.entries)
	*l = ledger{hw: floor, floor: floor, ackSeq: floor, acked: floor, needRead: true, entries: l.entries[:0]}
}

// admit classes the delivery of stream sequence seq with consumer sequence
// cseq; redelivered: the server delivered it before.
func (l *ledger) admit(seq, cseq uint64, redelivered bool) admission {
	gap := l.needRead || cseq != l.cseq+1
	l.cseq = max(l.cseq, cseq)
	switch {
	case seq <= l.hw:
		if gap {
			l.needRead = true // deliveries were lost before this one: the next new one must not pass them
		}
		return admitHeld
	case redelivered:
		return admitAfterReadAll
	case gap:
		return admitAfterRead
	}
	return admitNext
}

// readFailed notes that the read admitAfterRead asked for did not happen:
// the delivery is not queued (it waits in the stream with the rest), and
// the next delivery reads again.
func (l *ledger) readFailed() { l.needRead = true }

// queue appends the message of sequence seq (after hw) and returns its
// entry; msg is its delivery, nil when it was read from the stream.
func (l *ledger) queue(seq uint64, msg ackHandle) *entry {
	l.needRead = false
	e := &entry{seq: seq, msg: msg}
	l.entries = append(l.entries, e)
	l.hw = seq
	return e
}

// hold keeps a delivery of a message queued already as a handle to
// acknowledge it with.
func (l *ledger) hold(seq uint64, msg ackHandle) {
	if seq <= l.floor {
		if seq > l.ackSeq {
			l.ack, l.ackSeq = msg, seq
		}
		return
	}
	if i, ok := slices.BinarySearchFunc(l.entries, seq, func(e *entry, s uint64) int {
		switch {
		case e.seq < s:
			return -1
		case e.seq > s:
			return 1
		}
		return 0
	}); ok {
		l.entries[i].msg = msg
	}
}

// advance moves the floor over the messages applied, in order.
func (l *ledger) advance() {
	i := 0
	for ; i < len(l.entries) && l.entries[i].done.Load(); i++ {
		e := l.entries[i]
		l.floor = e.seq
		if e.msg != nil && e.seq > l.ackSeq {
			l.ack, l.ackSeq = e.msg, e.seq
		}
	}
	if i > 0 {
		clear(l.entries[:i])
		l.entries = l.entries[i:]
	}
}

// toAck is the delivery to acknowledge now that everything up to written
// is checkpointed, and its sequence; nil when there is none.
func (l *ledger) toAck(written uint64) (ackHandle, uint64) {
	if l.ack == nil || l.ackSeq <= l.acked || l.ackSeq > written {
		return nil, 0
	}
	return l.ack, l.ackSeq
}

// acknowledged notes that the server took the acknowledgement up to seq.
func (l *ledger) acknowledged(seq uint64) {
	l.acked = max(l.acked, seq)
	if l.ackSeq <= l.acked {
		l.ack = nil
	}
}

// head is the oldest message not yet applied: what holds the floor; nil
// when none does.
func (l *ledger) head() *entry {
	for _, e := range l.entries {
		if !e.done.Load() {
			return e
		}
	}
	return nil
}

// outstanding is how many messages are queued and not yet passed by the
// floor: what the server counts as pending acknowledgement, at most.
func (l *ledger) outstanding() int { return len(l.entries) }
