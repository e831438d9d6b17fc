package analytics

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/speech"
)

var t0 = time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)

// tone is 20 ms at 16 kHz of a sine of amplitude amp (clipped to 16 bits),
// or silence when amp is 0.
func tone(i int, amp, hz float64) []byte {
	b := make([]byte, 640)
	for s := range 320 {
		v := amp * math.Sin(2*math.Pi*hz*float64(i*320+s)/16000)
		binary.LittleEndian.PutUint16(b[2*s:], uint16(int16(max(min(v, 32767), -32768))))
	}
	return b
}

type spurt struct{ from, to time.Duration } // [from, to)

// script feeds every participant's frames for dur, interleaved as the bus
// delivers them; each participant talks in its spurts.
func script(a *analysis, dur time.Duration, parts map[string][]spurt, amp map[string]float64, silentFlag bool) {
	names := []string{"alice", "bob", "carol"}
	for i := 0; time.Duration(i)*speech.SlotDur < dur; i++ {
		at := time.Duration(i) * speech.SlotDur
		for p, name := range names {
			spurts, ok := parts[name]
			if !ok {
				continue
			}
			talking := false
			for _, s := range spurts {
				talking = talking || (at >= s.from && at < s.to)
			}
			data := make([]byte, 640)
			if talking {
				data = tone(i, amp[name], float64(200+150*p))
			}
			a.add(&codec.Frame{V: 1, Participant: name, Timestamp: t0.Add(at), SampleRate: 16000, Channels: 1,
				Encoding: codec.EncodingPCM16, Silent: silentFlag || !talking, Data: data})
		}
	}
}

func part(t *testing.T, s codec.Analysis, name string) codec.ParticipantAnalysis {
	t.Helper()
	for _, p := range s.Participants {
		if p.Participant == name {
			return p
		}
	}
	t.Fatalf("no participant %s in %+v", name, s)
	return codec.ParticipantAnalysis{}
}

// within checks a duration in ms against the truth, to one frame.
func within(t *testing.T, what string, g int64, want time.Duration) {
	t.Helper()
	if d := time.Duration(g)*time.Millisecond - want; d.Abs() > speech.SlotDur {
		t.Errorf("%s = %d ms, want %v (±20 ms)", what, g, want)
	}
}

// Tones and silences with exact on and off times: talk, turns, monologue,
// overtalk and dead air within one frame of the truth.
func TestKnownAnswers(t *testing.T) {
	a := newAnalysis(3 * time.Second)
	s := func(from, to float64) spurt {
		return spurt{time.Duration(from * float64(time.Second)), time.Duration(to * float64(time.Second))}
	}
	script(a, 10*time.Second, map[string][]spurt{
		"alice": {s(0.5, 2.5), s(8, 9)}, // 2 s, then 1 s
		"bob":   {s(2, 4), s(4.1, 4.5)}, // overlaps alice 0.5 s; a 100 ms pause inside is no turn
	}, map[string]float64{"alice": 6000, "bob": 6000}, false)
	sum := a.summary(true)
	alice, bob := part(t, sum, "alice"), part(t, sum, "bob")
	within(t, "call", sum.DurationMs, 10*time.Second)
	within(t, "alice talk", alice.TalkMs, 3*time.Second)
	within(t, "alice silence", alice.SilenceMs, 7*time.Second)
	within(t, "alice longest", alice.LongestMonologueMs, 2*time.Second)
	within(t, "bob talk", bob.TalkMs, 2500*time.Millisecond)
	within(t, "bob longest", bob.LongestMonologueMs, 2500*time.Millisecond)
	if alice.Turns != 2 || bob.Turns != 1 {
		t.Errorf("turns: alice %v, bob %v", alice.Turns, bob.Turns)
	}
	within(t, "overtalk", sum.OvertalkMs, 500*time.Millisecond)
	within(t, "dead air", sum.DeadAirMs, 3500*time.Millisecond) // 4.5 s to 8 s; the 0.5 s at the start is too short
	within(t, "longest dead air", sum.LongestDeadAirMs, 3500*time.Millisecond)
	if sum.OvertalkCount != int64(1) || sum.DeadAirCount != int64(1) {
		t.Errorf("counts: overtalk %v, dead air %v", sum.OvertalkCount, sum.DeadAirCount)
	}
	if share := alice.TalkShare; math.Abs(share-3.0/5.5) > 0.01 {
		t.Errorf("alice's share %.3f, want %.3f", share, 3.0/5.5)
	}
	// A 6000-amplitude tone is about -17 dBFS: a healthy level; no clipping;
	// the ACS flag (set by the script where the tone is) agrees.
	if alice.Level != "ok" || alice.ClippedFrames != 0 || alice.AcsAgreement < 0.99 {
		t.Errorf("alice: %v", alice)
	}
}

// A clipped loud speaker, a quiet one, and ACS flags that disagree.
func TestLevelsClippingAndFlags(t *testing.T) {
	a := newAnalysis(3 * time.Second)
	s := spurt{time.Second, 3 * time.Second}
	script(a, 4*time.Second, map[string][]spurt{"alice": {s}, "bob": {s}, "carol": nil},
		map[string]float64{"alice": 60000, "bob": 300}, true)
	sum := a.summary(true)
	alice, bob, carol := part(t, sum, "alice"), part(t, sum, "bob"), part(t, sum, "carol")
	if alice.ClippedFrames < 95 || alice.PeakDbfs < -0.1 || alice.Level != "high" {
		t.Errorf("clipped speaker: %v", alice)
	}
	if bob.Level != "low" || bob.ClippedFrames != 0 {
		t.Errorf("quiet speaker: %v", bob)
	}
	if carol.Level != "silent" || carol.TalkMs != int64(0) || carol.Turns != 0 {
		t.Errorf("silent participant: %v", carol)
	}
	// ACS said silent throughout: every frame VAD heard speech in disagrees.
	if n := alice.VadSpeechAcsSilentFrames; n < 99 || n > 101 {
		t.Errorf("VAD speech flagged silent by ACS: %d frames, want 100", n)
	}
	within(t, "overtalk", sum.OvertalkMs, 2*time.Second)
}

// A live summary counts the open segment up to now; missing frames are
// silence; a participant joining late is on the same clock.
func TestLiveAndGaps(t *testing.T) {
	a := newAnalysis(time.Second)
	for i := range 100 {
		if i >= 40 && i < 60 {
			continue // 400 ms lost on the way
		}
		amp := 6000.0
		if i < 5 {
			amp = 0 // the line's quiet before the first word: its floor
		}
		a.add(&codec.Frame{Participant: "x", Timestamp: t0.Add(time.Duration(i) * speech.SlotDur), Channels: 1,
			Encoding: codec.EncodingPCM16, Data: tone(i, amp, 300)})
	}
	live := part(t, a.summary(false), "x")
	// 100-800 ms and 1200-2000 ms talking; the 400 ms hole is longer than
	// the hangover, so two turns; the second still open, counted to now.
	within(t, "live talk", live.TalkMs, 1500*time.Millisecond)
	if live.Turns != 2 {
		t.Errorf("live turns %v", live.Turns)
	}
}

// One frame stamped three years early, another two hours late: the call's
// duration and each participant's talk time stay what they were.
func TestWildTimestampStretchesNothing(t *testing.T) {
	a := newAnalysis(2 * time.Second)
	for i := range 150 {
		ts := t0.Add(time.Duration(i) * speech.SlotDur)
		recv := ts.Add(time.Second)
		switch i {
		case 40:
			ts = ts.AddDate(-3, 0, 0)
		case 90:
			ts = ts.Add(2 * time.Hour)
		}
		a.add(&codec.Frame{V: 1, Participant: "8:acs:alice", Seq: uint64(i + 1), Timestamp: ts, ReceivedAt: recv,
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: tone(i, 8000, 300)})
	}
	sum := a.summary(true)
	if d := sum.DurationMs; d < 2900 || d > 3100 {
		t.Errorf("a 3 s call with wild timestamps lasts %d ms", d)
	}
}
