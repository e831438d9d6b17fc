// Package speech measures 16-bit PCM frames (level, peak, clipping) and
// finds speech in them with an energy detector, shared by the roles that
// listen to calls (analytics, moderation). It is pure: frames in, segments
// and figures out, the same for the same frames. It also reads WAV files and
// resamples PCM, for the roles that play or send audio (moderation, sim).
package speech

import (
	"encoding/binary"
	"math"
)

// Floor is the level reported for digital silence (dBFS).
const Floor = -100.0

// Level is one frame's measure.
type Level struct {
	RMS     float64 // dBFS; Floor for digital silence
	Peak    float64 // dBFS of the largest sample
	Clipped int     // samples at full scale
	Power   float64 // mean square, normalised to full scale 1.0
}

// Measure reads one frame of 16-bit little-endian mono PCM.
func Measure(pcm []byte) Level {
	n := len(pcm) / 2
	if n == 0 {
		return Level{RMS: Floor, Peak: Floor}
	}
	var sum float64
	peak, clipped := 0, 0
	for i := 0; i+1 < len(pcm); i += 2 {
		s := int(int16(binary.LittleEndian.Uint16(pcm[i:])))
		sum += float64(s * s)
		if s < 0 {
			s = -s
		}
		peak = max(peak, s)
		if s >= math.MaxInt16 {
			clipped++
		}
	}
	power := sum / float64(n) / (32768 * 32768)
	return Level{RMS: DB(power), Peak: DB(float64(peak*peak) / (32768 * 32768)), Clipped: clipped, Power: power}
}

// DB converts a power (mean square, full scale 1.0) to dBFS, at least Floor.
func DB(power float64) float64 {
	if power <= 0 {
		return Floor
	}
	return max(10*math.Log10(power), Floor)
}

// Config tunes the detector. Zero values take the defaults.
type Config struct {
	// Onset is how far above the noise floor a frame must be to start
	// speech (dB); Release how far it must stay above to continue it.
	Onset, Release float64
	// MinLevel is the level below which nothing is speech, however quiet
	// the line (dBFS).
	MinLevel float64
	// Attack is how many frames in a row must pass Onset to start speech
	// (a click is not speech); Hangover how many quiet frames end it
	// (pauses between words are not turns).
	Attack, Hangover int
}

func (c Config) withDefaults() Config {
	if c.Onset == 0 {
		c.Onset = 12
	}
	if c.Release == 0 {
		c.Release = 6
	}
	if c.MinLevel == 0 {
		c.MinLevel = -45
	}
	if c.Attack == 0 {
		c.Attack = 2
	}
	if c.Hangover == 0 {
		c.Hangover = 15 // 300 ms
	}
	return c
}

// Segment is a stretch of speech, in frame slots, both ends included.
type Segment struct{ Start, End int64 }

// Len is the segment's length in slots.
func (s Segment) Len() int64 { return s.End - s.Start + 1 }

// Detector finds speech in one stream's frames, given in time order with
// their slot numbers. It has hysteresis (a higher level to start speech
// than to keep it) and a noise floor that adapts: the quietest frame of the
// last five seconds (minimum statistics), so a noisy line is not all speech
// and a quiet one not all silence. Speech pauses often enough for its gaps
// to show the floor. For the first second, before the window has seen a
// pause, the floor is taken as no higher than -50 dBFS: a stream that starts
// with speech is heard from its first frame, at the cost of a false segment
// in the first second of a line noisier than that. Segments are exact: a segment starts at the first frame that
// passed Onset and ends at the last that passed Release; the attack and
// hangover only decide whether it counts and when it is over.
type Detector struct {
	cfg   Config
	floor float64
	// The floor is the minimum over blocks of frames: the current block's
	// minimum and those of the blocks before it.
	blockMin []float64
	blockLen int
	seen     int

	inSpeech bool
	start    int64 // of the current or candidate segment
	last     int64 // last frame above the release level
	run      int   // frames in a row above onset, before speech
	quiet    int   // frames since last, in speech
	prev     int64
	started  bool
}

// NewDetector returns a detector with cfg (defaults for zero values).
func NewDetector(cfg Config) *Detector {
	return &Detector{cfg: cfg.withDefaults(), floor: Floor}
}

// NoiseFloor is the current noise floor estimate (dBFS).
func (d *Detector) NoiseFloor() float64 { return d.floor }

// Open is the segment in progress, if any, up to its last loud frame.
func (d *Detector) Open() (Segment, bool) {
	return Segment{d.start, d.last}, d.inSpeech
}

// Add feeds the frame in slot, measured as rms (dBFS), and appends to out
// the segments that closed (usually none). Missing slots before it count as
// quiet frames; a slot not after the last one is ignored (a late or
// repeated frame).
func (d *Detector) Add(slot int64, rms float64, out []Segment) []Segment {
	if d.started {
		if slot <= d.prev {
			return out
		}
		// Beyond the hangover, more missing frames change nothing.
		for s := d.prev + 1; s < slot && s <= d.prev+int64(d.cfg.Hangover); s++ {
			if seg, ok := d.step(s, Floor); ok {
				out = append(out, seg)
			}
		}
	}
	d.track(rms)
	d.started, d.prev = true, slot
	if seg, ok := d.step(slot, rms); ok {
		out = append(out, seg)
	}
	return out
}

// Blocks of the noise floor's window: 10 of 25 frames, five seconds.
const (
	floorBlocks = 10
	floorBlock  = 25
)

// track adds a frame's level to the noise floor's window.
func (d *Detector) track(rms float64) {
	if d.blockLen == 0 {
		if len(d.blockMin) == floorBlocks {
			copy(d.blockMin, d.blockMin[1:])
			d.blockMin = d.blockMin[:floorBlocks-1]
		}
		d.blockMin = append(d.blockMin, rms)
	}
	cur := &d.blockMin[len(d.blockMin)-1]
	*cur = min(*cur, rms)
	d.blockLen = (d.blockLen + 1) % floorBlock
	d.floor = d.blockMin[0]
	for _, m := range d.blockMin[1:] {
		d.floor = min(d.floor, m)
	}
	d.floor = max(d.floor, -90) // digital silence is no floor to measure speech from
	if d.seen < warmup {
		d.seen++
		d.floor = min(d.floor, -50)
	}
}

// warmup is how many frames the floor needs before it is trusted alone.
const warmup = 50

func (d *Detector) step(slot int64, rms float64) (Segment, bool) {
	onset := max(d.floor+d.cfg.Onset, d.cfg.MinLevel)
	release := max(d.floor+d.cfg.Release, d.cfg.MinLevel-6)
	if !d.inSpeech {
		if rms >= onset {
			if d.run == 0 {
				d.start = slot
			}
			d.run++
			d.last = slot
			if d.run >= d.cfg.Attack {
				d.inSpeech, d.quiet = true, 0
			}
		} else {
			d.run = 0
		}
		return Segment{}, false
	}
	if rms >= release {
		d.last, d.quiet = slot, 0
		return Segment{}, false
	}
	d.quiet++
	if d.quiet >= d.cfg.Hangover {
		d.inSpeech, d.run = false, 0
		return Segment{d.start, d.last}, true
	}
	return Segment{}, false
}

// Flush ends the stream: the segment in progress, if any, is closed.
func (d *Detector) Flush() (Segment, bool) {
	if !d.inSpeech {
		return Segment{}, false
	}
	d.inSpeech, d.run = false, 0
	return Segment{d.start, d.last}, true
}

// Above reports whether a frame's level would start speech now: the
// detector's decision for one frame, to compare with a flag per frame.
func (d *Detector) Above(rms float64) bool {
	return rms >= max(d.floor+d.cfg.Onset, d.cfg.MinLevel)
}
