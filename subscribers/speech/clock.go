package speech

import "time"

// SlotDur is a slot's length: an ACS frame.
const SlotDur = 20 * time.Millisecond

// Tolerance is how far a frame's timestamp may stray from where its
// stream's frame count and the receivers' clock say it can be before it is
// not believed: generous for jitter, a sender's clock corrected by NTP, or
// frames buffered in a network stall, and small beside the years one bad
// timestamp would otherwise stretch a call by.
const Tolerance = 2 * time.Second

// Clock puts a call's frames on one timeline of 20 ms slots, numbered from
// its first frame, so the streams of a call line up. Timestamps come from
// the sender and are untrusted: a frame's own timestamp is believed only
// while its stream has not run ahead of both its frame count and the
// receivers' clock (receivedAt) by more than Tolerance, nor back by more
// than Tolerance. A frame that fails is placed where its stream goes on
// (after its last frame, or by the receivers' clock if that is later), and
// the stream's later frames keep the correction: one wild timestamp moves
// nothing, and a sender whose clock jumps for good is followed smoothly.
//
// The placement depends on the order frames come in; every role reads a
// call in stream order, and the recorder in the receivers' order, so
// replaying a call places it the same way. The zero Clock is ready.
type Clock struct {
	origin  time.Time
	started bool
	// The call's first frame, placed and received: new streams are
	// checked against it.
	anchor, anchorRecv time.Time
	latest             time.Time // the latest placed frame of any stream
	streams            map[string]*stream
}

// stream is what the Clock knows of one participant's frames.
type stream struct {
	corr               time.Duration // added to the stream's timestamps
	anchor, anchorRecv time.Time     // its first frame, placed and received
	last               time.Time     // its latest placed frame
	frames             int64         // frames placed
}

// Place returns where a frame of stream (a participant's raw id), stamped
// ts by the sender and received at recv (zero: unknown), goes on the
// call's timeline.
func (c *Clock) Place(id string, ts, recv time.Time) time.Time {
	if !c.started {
		c.origin, c.started = ts, true
		c.anchor, c.anchorRecv, c.latest = ts, recv, ts
	}
	if c.streams == nil {
		c.streams = map[string]*stream{}
	}
	s := c.streams[id]
	var at time.Time
	if s == nil {
		// A stream's first frame: within the call so far, or later by no
		// more than the receivers' clock has moved since the call began.
		lo := c.origin.Add(-Tolerance)
		byRecv := c.anchor.Add(since(c.anchorRecv, recv))
		hi := later(c.latest, byRecv).Add(Tolerance)
		at = ts
		if ts.Before(lo) || ts.After(hi) {
			at = clampTime(byRecv, c.origin, hi)
		}
		s = &stream{corr: at.Sub(ts), anchor: at, anchorRecv: recv, last: at}
		c.streams[id] = s
	} else {
		cand := ts.Add(s.corr)
		lo := s.last.Add(-Tolerance)
		ahead := max(time.Duration(s.frames)*SlotDur, since(s.anchorRecv, recv))
		hi := s.anchor.Add(ahead + Tolerance)
		at = cand
		if cand.Before(lo) || cand.After(hi) {
			at = clampTime(later(s.last.Add(SlotDur), s.anchor.Add(since(s.anchorRecv, recv))), lo, hi)
			s.corr = at.Sub(ts)
		}
		s.last = later(s.last, at)
	}
	s.frames++
	c.latest = later(c.latest, at)
	return at
}

// FrameSlot places a frame (Place) and returns its slot.
func (c *Clock) FrameSlot(id string, ts, recv time.Time) int64 {
	return c.Slot(c.Place(id, ts, recv))
}

// Slot is the slot of a time on the call's timeline (one Place returned);
// before any frame it starts the clock at ts. Times before the first
// frame get negative slots.
func (c *Clock) Slot(ts time.Time) int64 {
	if !c.started {
		c.origin, c.started = ts, true
		c.anchor, c.latest = ts, ts
	}
	d := ts.Sub(c.origin)
	if d < 0 {
		return -int64((-d + SlotDur/2) / SlotDur)
	}
	return int64((d + SlotDur/2) / SlotDur)
}

// Time is a slot's capture time (the zero time before the first frame).
func (c *Clock) Time(slot int64) time.Time {
	if !c.started {
		return time.Time{}
	}
	return c.origin.Add(time.Duration(slot) * SlotDur).UTC()
}

// since is how far the receivers' clock moved from a to b; 0 when either
// is unknown or it went back.
func since(a, b time.Time) time.Duration {
	if a.IsZero() || b.IsZero() || b.Before(a) {
		return 0
	}
	return b.Sub(a)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func clampTime(t, lo, hi time.Time) time.Time {
	if t.Before(lo) {
		t = lo
	}
	if t.After(hi) {
		t = hi
	}
	return t
}
