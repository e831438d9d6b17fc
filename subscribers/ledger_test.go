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
		want      admission
	}
	for _, tc := range []struct {
		name  string
		floor uint64 // where the ledger starts (a takeover's checkpoint)
		fresh bool   // the first delivery has been read for already
		steps []delivery
	}{
		{name: "in order after the first read", steps: []delivery{
			{10, 1, admitAfterRead}, {12, 2, admitNext}, {15, 3, admitNext}}},
		{name: "a delivery lost: the next reads", fresh: true, steps: []delivery{
			{10, 1, admitNext}, {14, 3, admitAfterRead}, {15, 4, admitNext}}},
		{name: "redeliveries of what is queued only acknowledge", fresh: true, steps: []delivery{
			{10, 1, admitNext}, {11, 2, admitNext}, {12, 3, admitNext}, {10, 4, admitHeld}, {11, 5, admitHeld}, {13, 6, admitNext}}},
		{name: "a redelivery after lost deliveries marks the next new one", fresh: true, steps: []delivery{
			// 11 and 12 lost, then 10 redelivered with a later consumer
			// sequence: 13 must not pass 11 and 12.
			{10, 1, admitNext}, {10, 4, admitHeld}, {13, 5, admitAfterRead}, {14, 6, admitNext}}},
		{name: "the lost tail comes back as redeliveries, read once", fresh: true, steps: []delivery{
			// 11 and 12 delivered and lost, nothing new after: their
			// redeliveries come in order, the first reads (finding nothing
			// before 11), the second follows it.
			{10, 1, admitNext}, {11, 4, admitAfterRead}, {12, 5, admitNext}}},
		{name: "after a takeover the previous owner's pending is held", floor: 100, steps: []delivery{
			{95, 7, admitHeld}, {99, 8, admitHeld}, {104, 9, admitAfterRead}, {105, 10, admitNext}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l ledger
			l.reset(tc.floor)
			if tc.fresh {
				l.needRead, l.cseq = false, 0
			}
			for i, d := range tc.steps {
				got := l.admit(d.seq, d.cseq)
				if got != d.want {
					t.Fatalf("delivery %d (seq %d, cseq %d): %v, want %v", i, d.seq, d.cseq, got, d.want)
				}
				if got != admitHeld {
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
	if got := l.admit(5, 1); got != admitAfterRead {
		t.Fatalf("first delivery: %v", got)
	}
	l.readFailed()
	if got := l.admit(6, 2); got != admitAfterRead {
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
