package recording_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// The bus moved from the single stream to shards while calls stream: the
// receiver goes on publishing (what finds no stream for the move's moment
// is sent again), the recorder reads each call from the retired stream to
// its end and on from the shard, and every recording comes out whole and
// bit-exact, recorded once.
func TestRecorderAcrossMove(t *testing.T) {
	r := newRig(t)
	r.replica(t)
	var calls []*acsCall
	for k := range 6 {
		calls = append(calls, &acsCall{id: fmt.Sprintf("4:+1425555%04d", k), parts: []string{"8:acs:alice", "4:+14255550199"}, n: 300,
			skip: func(p, i int) bool { return (i+p+k)%31 == 3 }})
	}
	half, moved := make(chan struct{}), make(chan struct{})
	var wg, reached sync.WaitGroup
	reached.Add(len(calls))
	for _, c := range calls {
		wg.Go(func() {
			c.stream(t, r.rcv.Addr, func(i int) {
				switch i {
				case c.n / 2:
					reached.Done()
					<-half
				case c.n/2 + 20:
					<-moved // frames sent during the move, and after it
				}
				time.Sleep(time.Millisecond)
			})
		})
	}
	reached.Wait()
	close(half) // the calls stream on while the bus moves
	sc := r.rcv.Stream
	sc.Shards = 4
	if _, err := broker.Reshard(t.Context(), r.rcv.JS, sc, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	r.ns.Map(sc)
	close(moved)
	wg.Wait()
	for _, c := range calls {
		conformance.WaitFor(t, "recording of "+c.id, func() bool {
			return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) > 0
		})
		if n := len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)); n != 1 {
			t.Errorf("call %s: %d recording events", c.id, n)
		}
		c.check(t, filepath.Join(r.dataDir, "recordings", string(codec.EncodeToken(c.id))))
	}
	conformance.WaitFor(t, "the recorder's consumers gone from the retired stream", func() bool {
		return conformance.DurableConsumers(t, r.rcv.JS, "CALLS") == 0
	})
}
