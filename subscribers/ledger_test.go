package subscribers

import (
	"context"
	"testing"
)

// fakeMsg is a delivery of a stream sequence that records being
// acknowledged.
type fakeMsg uint64

func (fakeMsg) Ack() error                          { return nil }
func (fakeMsg) DoubleAck(ctx context.Context) error { return nil }

func TestLedgerGapRule(t *testing.T) {
	type delivery struct {
		seq, cseq uint64
		again     bool // a redelivery: the server delivered it before
		want      admission
		readTo    uint64 // for a read to the end: where the partition's messages end then
	}
	const new, again = false, true
	for _, tc := range []struct {
		name  string
		floor uint64 // where the ledger starts (a takeover's checkpoint)
		fresh bool   // the first delivery has been read for already
		steps []delivery
	}{
		{name: "in order after the first read", steps: []delivery{
			{10, 1, new, admitAfterRead, 0}, {12, 2, new, admitNext, 0}, {15, 3, new, admitNext, 0}}},
		{name: "a delivery lost: the next reads", fresh: true, steps: []delivery{
			{10, 1, new, admitNext, 0}, {14, 3, new, admitAfterRead, 0}, {15, 4, new, admitNext, 0}}},
		{name: "redeliveries of what is queued only acknowledge", fresh: true, steps: []delivery{
			{10, 1, new, admitNext, 0}, {11, 2, new, admitNext, 0}, {12, 3, new, admitNext, 0},
			{10, 4, again, admitHeld, 0}, {11, 5, again, admitHeld, 0}, {13, 6, new, admitNext, 0}}},
		{name: "a redelivery after lost deliveries marks the next new one", fresh: true, steps: []delivery{
			// 11 and 12 lost, then 10 redelivered with a later consumer
			// sequence: 13 must not pass 11 and 12.
			{10, 1, new, admitNext, 0}, {10, 4, again, admitHeld, 0}, {13, 5, new, admitAfterRead, 0}, {14, 6, new, admitNext, 0}}},
		{name: "the lost tail comes back as redeliveries, read once", fresh: true, steps: []delivery{
			// 11 to 13 delivered and lost: the first redelivery reads the
			// stream to its end, and the others are held.
			{10, 1, new, admitNext, 0}, {11, 5, again, admitAfterReadAll, 13}, {12, 6, again, admitHeld, 0},
			{13, 7, again, admitHeld, 0}, {14, 8, new, admitNext, 0}}},
		{name: "a new message between a previous owner's redeliveries", floor: 95, steps: []delivery{
			// The previous owner had 96 to 110; 96's redelivery comes, then
			// the new 111, before the redeliveries of 97 to 110: the read
			// to the end at 96 keeps 111 from passing them.
			{96, 20, again, admitAfterReadAll, 111}, {111, 21, new, admitHeld, 0}, {97, 22, again, admitHeld, 0},
			{112, 23, new, admitNext, 0}}},
		{name: "after a takeover the previous owner's pending is held", floor: 100, steps: []delivery{
			{95, 7, again, admitHeld, 0}, {99, 8, again, admitHeld, 0}, {104, 9, new, admitAfterRead, 0}, {105, 10, new, admitNext, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l ledger
			l.reset(tc.floor)
			if tc.fresh {
				l.needRead = false
			}
			for i, d := range tc.steps {
				got := l.admit(d.seq, d.cseq, d.again)
				if got != d.want {
					t.Fatalf("delivery %d (seq %d, cseq %d): %v, want %v", i, d.seq, d.cseq, got, d.want)
				}
				switch got {
				case admitAfterReadAll:
					for s := l.hw + 1; s <= d.readTo; s++ { // the read queues the partition's messages to the end
						l.queue(s, nil)
					}
					l.hold(d.seq, fakeMsg(d.seq))
				case admitNext, admitAfterRead:
					l.queue(d.seq, fakeMsg(d.seq))
				}
			}
		})
	}
}

// A read that failed leaves the delivery unqueued and makes the next one
// read again.
func TestLedgerReadFailed(t *testing.T) {
	var l ledger
	l.reset(0)
	if got := l.admit(5, 1, false); got != admitAfterRead {
		t.Fatalf("first delivery: %v", got)
	}
	l.readFailed()
	if got := l.admit(6, 2, false); got != admitAfterRead {
		t.Fatalf("after a failed read: %v, want a read", got)
	}
	l.queue(6, fakeMsg(6))
	if l.hw != 6 {
		t.Fatalf("hw %d", l.hw)
	}
}

func TestLedgerFloorAndAcks(t *testing.T) {
	var l ledger
	l.reset(0)
	l.needRead = false
	e1 := l.queue(1, fakeMsg(1))
	e2 := l.queue(2, nil) // read from the stream: no delivery to acknowledge with
	e3 := l.queue(3, nil)
	e4 := l.queue(4, fakeMsg(4))
	e2.done.Store(true)
	l.advance()
	if l.floor != 0 {
		t.Fatalf("floor %d passed an unapplied message", l.floor)
	}
	e1.done.Store(true)
	l.advance()
	if l.floor != 2 || l.outstanding() != 2 || l.head() != e3 {
		t.Fatalf("floor %d, outstanding %d", l.floor, l.outstanding())
	}
	if m, s := l.toAck(2); m != fakeMsg(1) || s != 1 {
		t.Fatalf("ack %v %d, want the delivery of 1", m, s)
	}
	// A redelivery of 3 comes while it is queued: it becomes its handle.
	l.hold(3, fakeMsg(30))
	e3.done.Store(true)
	l.advance()
	if m, s := l.toAck(1); m != nil {
		t.Fatalf("acknowledged %d past the checkpoint", s)
	}
	if m, s := l.toAck(3); m != fakeMsg(30) || s != 3 {
		t.Fatalf("ack %v %d, want the redelivery of 3", m, s)
	}
	l.acknowledged(3)
	if m, _ := l.toAck(3); m != nil {
		t.Fatal("acknowledged twice")
	}
	// A redelivery of something applied long ago, past what was
	// acknowledged, is acknowledged at once (everything below it is applied).
	e4.done.Store(true)
	l.advance()
	l.acknowledged(4)
	l.queue(9, nil)
	l.hold(4, fakeMsg(40)) // at the acknowledged floor: nothing to do
	if m, _ := l.toAck(4); m != nil {
		t.Fatal("acknowledged what the server has")
	}
}
