package speech

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
)

// frame makes 20 ms at 16 kHz: a tone of amplitude amp (0 = none) over
// white noise of amplitude noise.
func frame(i int, amp, noise float64, rng *rand.Rand) []byte {
	b := make([]byte, 640)
	for s := range 320 {
		v := amp*math.Sin(2*math.Pi*440*float64(i*320+s)/16000) + noise*(rng.Float64()*2-1)
		v = max(min(v, 32767), -32768)
		binary.LittleEndian.PutUint16(b[2*s:], uint16(int16(v)))
	}
	return b
}

func TestMeasure(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	full := Measure(frame(0, 32767, 0, rng)) // a full-scale sine: -3 dBFS RMS, 0 dBFS peak
	if math.Abs(full.RMS+3.01) > 0.05 || full.Peak < -0.01 {
		t.Errorf("full-scale sine: %+v", full)
	}
	if l := Measure(make([]byte, 640)); l.RMS != Floor || l.Peak != Floor || l.Clipped != 0 {
		t.Errorf("silence: %+v", l)
	}
	if l := Measure(frame(0, 60000, 0, rng)); l.Clipped < 100 {
		t.Errorf("a clipped sine: %d clipped samples", l.Clipped)
	}
	if l := Measure(nil); l.RMS != Floor {
		t.Errorf("empty: %+v", l)
	}
}

// Tones on and off at known frames, over noise: segments exact to the frame,
// pauses shorter than the hangover bridged, a click ignored.
func TestDetectorKnownSegments(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	on := func(i int) bool {
		return (i >= 50 && i < 150) || // 2 s
			(i >= 160 && i < 200) || // after a 200 ms pause: same segment
			i == 260 || // a 20 ms click: not speech
			(i >= 300 && i < 425) // 2.5 s
	}
	d := NewDetector(Config{})
	var segs []Segment
	for i := range 500 {
		amp := 0.0
		if on(i) {
			amp = 6000
		}
		segs = d.Add(int64(i), Measure(frame(i, amp, 100, rng)).RMS, segs)
	}
	if s, ok := d.Flush(); ok {
		segs = append(segs, s)
	}
	want := []Segment{{50, 199}, {300, 424}}
	if len(segs) != len(want) || segs[0] != want[0] || segs[1] != want[1] {
		t.Errorf("segments %v, want %v", segs, want)
	}
	if f := d.NoiseFloor(); f > -45 || f < -70 {
		t.Errorf("noise floor %.1f dBFS for noise around -53", f)
	}
}

// Missing frames are silence; a late frame is ignored; a loud line with a
// raised floor still finds its speech.
func TestDetectorGapsAndNoisyLine(t *testing.T) {
	d := NewDetector(Config{})
	var segs []Segment
	segs = d.Add(0, -80, segs) // a quiet frame first: the floor
	for _, s := range []int64{1, 2, 3, 4, 5} {
		segs = d.Add(s, -20, segs)
	}
	segs = d.Add(3, -20, segs)  // late: ignored
	segs = d.Add(40, -20, segs) // 34 frames missing: the first segment closed at 5
	if len(segs) != 1 || segs[0] != (Segment{1, 5}) {
		t.Fatalf("segments %v", segs)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	d = NewDetector(Config{})
	segs = nil
	for i := range 400 {
		amp := 0.0
		if i >= 200 && i < 300 {
			amp = 12000
		}
		segs = d.Add(int64(i), Measure(frame(i, amp, 3000, rng)).RMS, segs) // noise around -24 dBFS
	}
	// The first second, before the floor is known, may show a false
	// segment; after it the line's noise is no speech.
	if n := len(segs); n == 0 || n > 2 || segs[n-1] != (Segment{200, 299}) || (n == 2 && segs[0].End > 80) {
		t.Errorf("noisy line: segments %v, floor %.1f", segs, d.NoiseFloor())
	}
}
