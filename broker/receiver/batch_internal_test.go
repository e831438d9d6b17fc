package receiver

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"io"
	"log/slog"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/embedded"
	"github.com/audiofan/audiofan/codec"
	"github.com/caarlos0/env/v11"
)

// batchStream starts an embedded server (natstest would import this
// package) with the stream allowing fast batches, and connects to it.
func batchStream(t *testing.T) (*nats.Conn, jetstream.JetStream, PublishConfig, *slog.Logger) {
	t.Helper()
	ns, err := embedded.Start(embedded.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var sc broker.StreamConfig
	var pc PublishConfig
	for _, v := range []any{&sc, &pc} {
		if err := env.ParseWithOptions(v, env.Options{Environment: map[string]string{}}); err != nil {
			t.Fatal(err)
		}
	}
	sc.Batched = true
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := broker.EnsureStream(context.Background(), js, sc, log); err != nil {
		t.Fatal(err)
	}
	return nc, js, pc, log
}

// The batcher alone, flooded by 500 publishers at once (sockets, each with
// its call's ACS-shaped subject) with more than its window: every message is
// stored once and acknowledged, and no batch fails.
func TestBatcherFlood(t *testing.T) {
	nc, js, pc, log := batchStream(t)
	ended := map[string]int{}
	var mu sync.Mutex
	b, err := newBatcher(nc, js, pc, log, func(r string, _ error) { mu.Lock(); ended[r]++; mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	pc.MaxPending = 4096 // fewer than the publishers send: they wait for room
	data := make([]byte, 700)
	var wg sync.WaitGroup
	var okN, errN int
	for g := range 500 {
		wg.Go(func() {
			var futs []jetstream.PubAckFuture
			for i := range 40 {
				m := nats.NewMsg(broker.Published{Prefix: "calls"}.Audio(codec.EncodeToken(fmt.Sprintf("8:acs:flood+%d", g)), codec.EncodeToken("4:+14255550123")))
				m.Header.Set("Nats-Msg-Id", fmt.Sprintf("%d/%d", g, i))
				m.Data = data
				for {
					f, err := b.PublishMsgAsync(m)
					if err != nil {
						time.Sleep(time.Millisecond)
						continue
					}
					futs = append(futs, f)
					break
				}
			}
			for _, f := range futs {
				select {
				case <-f.Ok():
					mu.Lock()
					okN++
					mu.Unlock()
				case <-f.Err():
					mu.Lock()
					errN++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	s, err := js.Stream(context.Background(), "CALLS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	failed := ended[batchGap] + ended[batchError] + ended[batchTimeout]
	mu.Unlock()
	if okN != 20000 || errN != 0 || info.State.Msgs != 20000 || failed != 0 {
		t.Errorf("acknowledged %d, failed %d, stored %d, batches ended %v", okN, errN, info.State.Msgs, ended)
	}
}

// A message the server never got (its batch sequence skipped, as when it is
// lost on the way) makes the next one a gap: the batch ends, what came
// before it is stored and acknowledged, and the message after the gap fails
// with an error the pipeline sends again, not one it drops.
func TestBatcherGap(t *testing.T) {
	nc, js, pc, log := batchStream(t)
	var mu sync.Mutex
	ended := map[string]int{}
	b, err := newBatcher(nc, js, pc, log, func(r string, _ error) { mu.Lock(); ended[r]++; mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	send := func(i int) jetstream.PubAckFuture {
		m := nats.NewMsg("calls.c.audio.p")
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprint("gap/", i))
		m.Data = []byte{byte(i)}
		f, err := b.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	var before []jetstream.PubAckFuture
	for i := range 3 {
		before = append(before, send(i))
	}
	b.mu.Lock()
	b.cur.seq++ // a message lost on its way
	b.mu.Unlock()
	after := send(3)
	for i, f := range before {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Errorf("message %d before the gap: %v", i, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d before the gap: no answer", i)
		}
	}
	select {
	case <-after.Ok():
		t.Error("the message after the gap was acknowledged")
	case err := <-after.Err():
		if !retryable(err) {
			t.Errorf("the message after the gap failed with %v, which the pipeline would drop", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the message after the gap: no answer")
	}
	mu.Lock()
	defer mu.Unlock()
	if ended[batchGap] != 1 {
		t.Errorf("batches ended %v, want one gap", ended)
	}
}
