package receiver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/audiofan/audiofan/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// flakyStream stands for JetStream with a stream leader that goes away:
// while down, every publish fails at once with no responders (what a client
// sees during a leader election); otherwise it is stored, once per
// Nats-Msg-Id, in the order it arrives. A publish is answered when the
// test says (answer), so replies can come late as they do over a network.
type flakyStream struct {
	mu      sync.Mutex
	down    bool
	stored  []string
	seen    map[string]bool
	waiting []*fakeFuture
	sends   int
}

type fakeFuture struct {
	msg *nats.Msg
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *fakeFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *fakeFuture) Err() <-chan error            { return f.err }
func (f *fakeFuture) Msg() *nats.Msg               { return f.msg }

func (s *flakyStream) PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return nil, errors.New("not used")
}

func (s *flakyStream) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sends++
	// The payload is copied as the server would have it: the pipeline
	// recycles the message once it is settled.
	f := &fakeFuture{msg: &nats.Msg{Data: append([]byte(nil), m.Data...), Header: nats.Header{jetstream.MsgIDHeader: {m.Header.Get(jetstream.MsgIDHeader)}}},
		ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	if s.down {
		f.err <- nats.ErrNoResponders
		return f, nil
	}
	s.waiting = append(s.waiting, f)
	return f, nil
}

// answer stores what was sent while the leader was up, in the order sent.
func (s *flakyStream) answer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.waiting {
		id := f.msg.Header.Get(jetstream.MsgIDHeader)
		if !s.seen[id] {
			s.seen[id] = true
			s.stored = append(s.stored, string(f.msg.Data))
		}
		f.ok <- &jetstream.PubAck{}
	}
	s.waiting = nil
}

func (s *flakyStream) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

type quietEvents struct{ lost int }

func (e *quietEvents) notStored(broker.Kind, error) { e.lost++ }
func (e *quietEvents) shedding(bool)                {}

// A leader election in the middle of a socket's stream: whatever was refused
// is sent again, and the stream stores every message once and in the order
// the socket received it, frames that came during the outage included.
func TestPipelineKeepsOrderThroughAnOutage(t *testing.T) {
	js := &flakyStream{seen: map[string]bool{}}
	ev := &quietEvents{}
	m := newMetrics(prometheus.NewRegistry(), func() float64 { return 0 })
	p := pipeline{js: js, cfg: PublishConfig{Window: 1000, MaxPending: 10000, AckTimeout: time.Second, RetryFor: time.Minute, Block: time.Minute},
		m: m, connID: "c", events: ev}
	ctx := context.Background()
	const total = 400
	for i := range total {
		switch i {
		case 100:
			js.setDown(true)
		case 250:
			js.setDown(false)
		}
		msg := p.newMsg("calls.x.audio.p")
		msg.Data = strconv.AppendInt(msg.Data, int64(i), 10)
		if err := p.publish(ctx, msg, "audio", nil, time.Now(), true); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if i%7 == 0 {
			js.answer() // replies come now and then, as over a network
		}
		if i >= 100 && i < 250 && i%25 == 0 {
			// Time passes during the outage, so refused messages are due
			// to be sent again.
			time.Sleep(resendPause + 10*time.Millisecond)
		}
	}
	time.Sleep(resendPause + 10*time.Millisecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			js.answer()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	p.flush(ctx)
	<-done
	if ev.lost != 0 {
		t.Fatalf("%d messages lost", ev.lost)
	}
	if len(js.stored) != total {
		t.Fatalf("%d of %d messages stored", len(js.stored), total)
	}
	for i, s := range js.stored {
		if s != fmt.Sprint(i) {
			t.Fatalf("stored out of order: position %d holds message %s (%v...)", i, s, js.stored[max(0, i-3):min(len(js.stored), i+5)])
		}
	}
}
