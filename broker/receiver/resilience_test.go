package receiver_test

import (
	"bytes"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
)

// TestNATSRestart stops the NATS server in the middle of a call and starts it
// again on the same store: nothing acknowledged is lost, nothing is stored
// twice, and the frames sent during the outage are stored once it is back.
func TestNATSRestart(t *testing.T) {
	for _, mode := range []string{receiver.ModeAsync, receiver.ModeBatch} {
		t.Run(mode, func(t *testing.T) { testNATSRestart(t, mode) })
	}
}

func testNATSRestart(t *testing.T, mode string) {
	h := newHarness(t, func(c *receiver.Config) {
		c.Publish.AckTimeout = 500 * time.Millisecond
		c.Publish.RetryFor = 30 * time.Second
		c.Publish.Mode = mode
	})
	const total = 400
	t0 := time.Now()
	c := dialACS(t, h.wsURL("?callId=restart"), nil)
	c.audioMetadata("s", 16000)
	restarted := make(chan struct{})
	for i := 0; i < total; i++ {
		if i == 100 {
			// Down for longer than the ack timeout, so publishes time out
			// and are sent again: de-duplication must hold.
			h.ns.Stop()
			go func() {
				time.Sleep(1500 * time.Millisecond)
				h.ns.Restart()
				close(restarted)
			}()
		}
		c.audio(t0.Add(time.Duration(i)*20*time.Millisecond), "8:acs:a", frameOf(0, i, 640), false)
		time.Sleep(5 * time.Millisecond)
	}
	<-restarted
	c.close()

	msgs := h.readStream(1)
	seqs := map[uint64]int{}
	var order []uint64
	var ended *codec.Lifecycle
	for _, m := range msgs {
		switch v := m.payload.(type) {
		case *codec.Frame:
			seqs[v.Seq]++
			order = append(order, v.Seq)
			if !bytes.Equal(v.Data, frameOf(0, int(v.Seq-1), 640)) {
				t.Fatalf("frame %d: wrong PCM", v.Seq)
			}
		case *codec.Lifecycle:
			if v.Type == codec.LifecycleEnded {
				ended = v
			}
		}
	}
	for seq, n := range seqs {
		if n > 1 {
			t.Errorf("frame %d stored %d times", seq, n)
		}
	}
	if ended == nil {
		t.Fatal("no ended lifecycle")
	}
	if ended.Frames["8:acs:a"] != uint64(len(seqs)) {
		t.Errorf("ended counts %d stored frames, stream holds %d", ended.Frames["8:acs:a"], len(seqs))
	}
	if len(seqs) != total {
		t.Errorf("%d of %d frames stored", len(seqs), total)
	}
	if !sort.SliceIsSorted(order, func(i, j int) bool { return order[i] < order[j] }) {
		t.Errorf("frames stored out of receive order across the restart: %v", order)
	}
	if h.counter("audiofan_receiver_publish_retries_total") == 0 {
		t.Error("the outage caused no retries: the test did not test what it should")
	}
	if mode == receiver.ModeBatch {
		failed := h.counter("audiofan_receiver_fast_batches_total", "result", "gap") + h.counter("audiofan_receiver_fast_batches_total", "result", "error") +
			h.counter("audiofan_receiver_fast_batches_total", "result", "timeout")
		if failed == 0 || h.counter("audiofan_receiver_fast_batches_total", "result", "committed") == 0 {
			t.Errorf("batches: %v failed, %v committed: want both", failed, h.counter("audiofan_receiver_fast_batches_total", "result", "committed"))
		}
	}
}

// TestDrainLetsCallFinish: on shutdown the receiver stops being ready and
// refuses new sockets, while an open call goes on to its natural end.
func TestDrainLetsCallFinish(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) { c.DrainTimeout = time.Minute })
	t0 := time.Now()
	c := dialACS(t, h.wsURL("?callId=draining"), nil)
	c.audioMetadata("s", 16000)
	for i := 0; i < 10; i++ {
		c.audio(t0.Add(time.Duration(i)*20*time.Millisecond), "", frameOf(0, i, 640), false)
	}
	stopped := h.StopAsync()

	client := &http.Client{Timeout: time.Second}
	waitFor(t, "readyz 503", func() bool {
		resp, err := client.Get("http://" + h.addr + "/readyz")
		if err != nil {
			t.Logf("readyz: %v", err)
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if _, resp, err := websocket.DefaultDialer.Dial(h.wsURL("?callId=late"), nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("new socket while draining: err %v", err)
	}
	for i := 10; i < 60; i++ {
		c.audio(t0.Add(time.Duration(i)*20*time.Millisecond), "", frameOf(0, i, 640), false)
	}
	select {
	case <-stopped:
		t.Fatal("Serve returned with a call still open")
	case <-time.After(100 * time.Millisecond):
	}
	c.close()
	<-stopped

	msgs := h.readStream(1)
	frames := 0
	for _, m := range msgs {
		switch v := m.payload.(type) {
		case *codec.Frame:
			frames++
		case *codec.Lifecycle:
			if v.Type == codec.LifecycleEnded && (v.Reason != "peer" || v.Frames[""] != 60) {
				t.Errorf("ended %+v", v)
			}
		}
	}
	if frames != 60 {
		t.Errorf("%d of 60 frames stored", frames)
	}
}

// TestDrainDeadline: a call still open when the drain deadline passes is
// closed with 1001 (ACS reconnects elsewhere), its frames flushed and its end
// published.
func TestDrainDeadline(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) { c.DrainTimeout = 300 * time.Millisecond })
	c := dialACS(t, h.wsURL("?callId=long"), nil)
	c.audioMetadata("s", 24000)
	for i := 0; i < 20; i++ {
		c.audio(time.Now(), "x", frameOf(0, i, 960), false)
	}
	h.stop()
	if code := c.waitClosed(); code != websocket.CloseGoingAway {
		t.Errorf("closed with %d, want 1001", code)
	}
	msgs := h.readStream(1)
	last := msgs[len(msgs)-1].payload.(*codec.Lifecycle)
	if last.Type != codec.LifecycleEnded || last.Reason != "drain" || last.Frames["x"] != 20 || len(msgs) != 22 {
		t.Errorf("last message %+v of %d", last, len(msgs))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOverloadShedsAndCounts: while JetStream is away the socket's window
// fills; audio past it is dropped and counted, never silently, and every
// frame is either stored or counted as dropped.
func TestOverloadShedsAndCounts(t *testing.T) {
	h := newHarness(t, func(c *receiver.Config) {
		c.Publish.Window = 16
		c.Publish.Block = 50 * time.Millisecond
		c.Publish.AckTimeout = 300 * time.Millisecond
		c.Publish.RetryFor = 20 * time.Second
	})
	const total = 200
	c := dialACS(t, h.wsURL("?callId=overload"), nil)
	c.audioMetadata("s", 16000)
	for i := 0; i < 20; i++ {
		c.audio(time.Now(), "p", frameOf(0, i, 640), false)
	}
	h.ns.Stop()
	for i := 20; i < total; i++ {
		c.audio(time.Now(), "p", frameOf(0, i, 640), false)
		time.Sleep(2 * time.Millisecond)
	}
	h.ns.Restart()
	c.close()

	msgs := h.readStream(1)
	frames := 0
	var ended *codec.Lifecycle
	for _, m := range msgs {
		switch v := m.payload.(type) {
		case *codec.Frame:
			frames++
		case *codec.Lifecycle:
			if v.Type == codec.LifecycleEnded {
				ended = v
			}
		}
	}
	dropped := h.counter("audiofan_receiver_dropped_total", "reason", "backpressure")
	if dropped == 0 {
		t.Fatalf("nothing was shed while JetStream was away (stored %d, retries %v, failed %v)", frames, h.counter("audiofan_receiver_publish_retries_total"), h.counter("audiofan_receiver_dropped_total", "reason", "publish_failed"))
	}
	if frames+int(dropped) != total {
		t.Errorf("stored %d + dropped %v != sent %d", frames, dropped, total)
	}
	if ended == nil || ended.Frames["p"] != uint64(frames) {
		t.Errorf("ended %+v, stream holds %d frames", ended, frames)
	}
}
