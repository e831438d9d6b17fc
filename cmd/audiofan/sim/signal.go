package sim

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"time"

	"github.com/audiofan/audiofan/subscribers/speech"
)

// spurt is a stretch of time in which one participant talks.
type spurt struct{ start, end time.Duration }

// schedule gives each participant talk spurts with realistic turn taking: one
// speaker at a time for 1 to 4 s, pauses of 0.2 to 1.2 s between turns, and
// now and then the next speaker starting 0.4 s early (overtalk). It is drawn
// from seed, so a call can be replayed exactly.
func schedule(participants int, duration time.Duration, seed uint64) [][]spurt {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([][]spurt, participants)
	t := 300 * time.Millisecond
	speaker := rng.IntN(participants)
	for t < duration {
		length := time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		end := min(t+length, duration)
		out[speaker] = append(out[speaker], spurt{t, end})
		if participants > 1 {
			next := rng.IntN(participants - 1)
			if next >= speaker {
				next++
			}
			speaker = next
		}
		if participants > 1 && rng.IntN(100) < 15 {
			t = end - 400*time.Millisecond // overtalk
		} else {
			t = end + time.Duration(200+rng.IntN(1000))*time.Millisecond
		}
	}
	return out
}

// talking reports whether spurts cover the instant t.
func talking(spurts []spurt, t time.Duration) bool {
	for _, s := range spurts {
		if t >= s.start && t < s.end {
			return true
		}
	}
	return false
}

const tableSize = 2048

// voiceTable is one period of a buzzy, vowel-like wave: a fundamental and
// five harmonics of falling strength. A voice reads it at its own pitch.
var voiceTable = func() (t [tableSize]float32) {
	for i := range t {
		x := 2 * math.Pi * float64(i) / tableSize
		var v float64
		for h := 1; h <= 6; h++ {
			v += math.Sin(float64(h)*x) / float64(h)
		}
		t[i] = float32(v / 2)
	}
	return t
}()

// voice synthesises one participant: a distinct pitch with a little vibrato,
// shaped into syllables (about 4.5 a second), during its talk spurts only.
type voice struct {
	rate   int
	pitch  float64 // Hz
	phase  float64 // in table positions
	spurts []spurt
}

func newVoice(index, rate int, spurts []spurt) *voice {
	return &voice{rate: rate, pitch: 105 + 38*float64(index%8), spurts: spurts}
}

// frame writes the frame that starts at t into pcm (16-bit little endian)
// and reports whether it is silent. Envelope and pitch are computed at the
// frame's edges and interpolated, so a sample costs a table read and a
// multiply: the simulator must be far cheaper than what it loads.
func (v *voice) frame(pcm []byte, t time.Duration) bool {
	n := len(pcm) / 2
	on0, on1 := talking(v.spurts, t), talking(v.spurts, t+speech.SlotDur)
	if !on0 && !on1 {
		clear(pcm)
		return true
	}
	env := func(ts float64, on bool) float64 {
		if !on {
			return 0
		}
		return 9000 * (0.25 + 0.75*math.Abs(math.Sin(2*math.Pi*4.5*ts)))
	}
	t0 := t.Seconds()
	a0, a1 := env(t0, on0), env(t0+speech.SlotDur.Seconds(), on1)
	step := v.pitch * (1 + 0.02*math.Sin(2*math.Pi*5*t0)) * tableSize / float64(v.rate)
	for i := 0; i < n; i++ {
		amp := a0 + (a1-a0)*float64(i)/float64(n)
		v.phase += step
		if v.phase >= tableSize {
			v.phase -= tableSize
		}
		binary.LittleEndian.PutUint16(pcm[2*i:], uint16(int16(amp*float64(voiceTable[int(v.phase)]))))
	}
	return false
}

// mix adds the voices' frames into pcm with saturation: ACS's mixed stream.
func mix(pcm []byte, frames [][]byte) {
	for i := 0; i+1 < len(pcm); i += 2 {
		var s int32
		for _, f := range frames {
			s += int32(int16(binary.LittleEndian.Uint16(f[i:])))
		}
		s = max(min(s, math.MaxInt16), math.MinInt16)
		binary.LittleEndian.PutUint16(pcm[i:], uint16(int16(s)))
	}
}
