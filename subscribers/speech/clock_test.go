package speech

import (
	"testing"
	"time"
)

var c0 = time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)

// feed places n frames of stream id, 20 ms apart from first, received
// every recvStep from recv0 (0: all at once, a sender faster than real
// time); wild, when set, changes a frame's timestamp. It returns the slots.
func feed(c *Clock, id string, first time.Time, n int, recv0 time.Time, recvStep time.Duration, wild func(i int, ts time.Time) time.Time) []int64 {
	out := make([]int64, n)
	for i := range n {
		ts := first.Add(time.Duration(i) * SlotDur)
		if wild != nil {
			ts = wild(i, ts)
		}
		out[i] = c.FrameSlot(id, ts, recv0.Add(time.Duration(i)*recvStep))
	}
	return out
}

func TestClockBelievesGoodTimestamps(t *testing.T) {
	for _, step := range []time.Duration{SlotDur, 0, SlotDur / 4} { // real time, all at once, four times faster
		var c Clock
		slots := feed(&c, "8:acs:a", c0, 500, c0.Add(time.Second), step, nil)
		for i, s := range slots {
			if s != int64(i) {
				t.Fatalf("recv step %v: frame %d in slot %d", step, i, s)
			}
		}
	}
}

// A participant who is silent (not a dominant speaker, no frames) for 30 s
// and speaks again: the receivers' clock moved as much, so the gap is real.
func TestClockKeepsRealGaps(t *testing.T) {
	var c Clock
	feed(&c, "a", c0, 50, c0, SlotDur, nil)
	gap := 30 * time.Second
	slots := feed(&c, "a", c0.Add(time.Second+gap), 50, c0.Add(time.Second+gap), SlotDur, nil)
	if want := int64((time.Second + gap) / SlotDur); slots[0] != want {
		t.Errorf("after the gap: slot %d, want %d", slots[0], want)
	}
	// A participant joining 10 s in, in real time.
	if s := c.FrameSlot("b", c0.Add(10*time.Second), c0.Add(10*time.Second)); s != 500 {
		t.Errorf("a participant joining 10 s in: slot %d, want 500", s)
	}
}

// One frame stamped years early, or hours late, or a whole stream that
// jumps for good: the call keeps its length, and the frames their order.
func TestClockIgnoresWildTimestamps(t *testing.T) {
	for name, wild := range map[string]func(int, time.Time) time.Time{
		"one frame 3 years early": func(i int, ts time.Time) time.Time {
			if i == 70 {
				return ts.AddDate(-3, 0, 0)
			}
			return ts
		},
		"one frame 2 hours late": func(i int, ts time.Time) time.Time {
			if i == 70 {
				return ts.Add(2 * time.Hour)
			}
			return ts
		},
		"the sender's clock jumps 2 hours for good": func(i int, ts time.Time) time.Time {
			if i >= 70 {
				return ts.Add(2 * time.Hour)
			}
			return ts
		},
		"no timestamp moves": func(i int, ts time.Time) time.Time { return c0 },
		"each frame a second later": func(i int, ts time.Time) time.Time {
			return c0.Add(time.Duration(i) * time.Second)
		},
	} {
		for _, step := range []time.Duration{SlotDur, 0} {
			var c Clock
			slots := feed(&c, "a", c0, 150, c0, step, wild)
			lo, hi := slots[0], slots[0]
			for i, s := range slots {
				lo, hi = min(lo, s), max(hi, s)
				if i > 0 && s < slots[i-1]-int64(Tolerance/SlotDur) {
					t.Errorf("%s, recv step %v: frame %d went back from slot %d to %d", name, step, i, slots[i-1], s)
				}
			}
			if span := time.Duration(hi-lo) * SlotDur; span > 3*time.Second+Tolerance {
				t.Errorf("%s, recv step %v: 150 frames span %v", name, step, span)
			}
		}
	}
}

// A participant whose first frame is stamped far from the call is placed
// where the receivers' clock puts it.
func TestClockNewStreamOutsideTheCall(t *testing.T) {
	var c Clock
	feed(&c, "a", c0, 100, c0, SlotDur, nil)
	for _, ts := range []time.Time{c0.AddDate(-3, 0, 0), c0.Add(5 * time.Hour)} {
		id := ts.String()
		if s := c.FrameSlot(id, ts, c0.Add(time.Second)); s < 0 || s > 100+int64(Tolerance/SlotDur) {
			t.Errorf("a stream first stamped %v: slot %d", ts, s)
		}
	}
}
