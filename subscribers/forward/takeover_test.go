package forward_test

import (
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// A forwarder replica killed mid-call: the other replica takes the call
// over within the lease and dials the target anew; the new socket starts
// with AudioMetadata at live audio, and the call's later frames reach the
// target.
func TestForwardTakeover(t *testing.T) {
	r := newRig(t)
	a := newTarget(t)
	one := r.forwarder(a.url("#name=agent"), nil)
	two := r.forwarder(a.url("#name=agent"), nil)
	c := r.dialACS("4:+14255550142")
	i := 0
	frame := func() {
		c.send(acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), "8:acs:alice", pcm(0, i), false))
		i++
		time.Sleep(5 * time.Millisecond)
	}
	for len(a.all()) == 0 || len(a.all()[0].messages()) < 20 {
		frame()
	}
	victim := one
	if conformance.Metric(t, two.reg, "audiofan_forward_sockets_open", "agent") == 1 {
		victim = two
	}
	victim.crash()
	for len(a.all()) < 2 {
		if i > 5000 {
			t.Fatal("the call was not taken over")
		}
		frame()
	}
	last := i
	for range 20 {
		frame()
	}
	c.hangUp()
	s := a.all()[1]
	conformance.WaitFor(t, "the new socket closed with the call", func() bool {
		select {
		case <-s.closed:
			return true
		default:
			return false
		}
	})
	kinds, frames, _ := parse(t, s.messages())
	if kinds[0] != "AudioMetadata" {
		t.Errorf("the new socket starts with %s", kinds[0])
	}
	if len(frames) < 20 || !frames[len(frames)-1].ts.Equal(t0.Add(time.Duration(i-1)*20*time.Millisecond)) {
		t.Errorf("the new socket carried %d frames, the last at %v; want the call's last, %v (taken over at frame %d)",
			len(frames), frames[len(frames)-1].ts, t0.Add(time.Duration(i-1)*20*time.Millisecond), last)
	}
}
