// Package analytics is the analytics role: per participant talk and silence
// time, turns, longest monologue, levels and clipping; per call overtalk and
// dead air; voice activity found in the PCM itself and compared with ACS's
// silent flag. Live events every few seconds of call time, a final summary
// when the call ends, and the latest summary in a KV bucket.
package analytics

import (
	"cmp"
	"slices"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// Speech levels (dBFS, RMS over a participant's speech) a listener finds
// comfortable; outside them a line is reported too quiet or too loud.
const (
	LevelLow  = -35.0
	LevelHigh = -10.0
)

// analysis is one call's figures so far. It depends only on the frames and
// their order, so a replay after a takeover gives the same figures.
type analysis struct {
	deadAir   int64 // slots of silence that count as dead air
	clock     speech.Clock
	started   bool
	min, max  int64 // slots seen
	parts     map[string]*talker
	finalized bool
}

// talker is one participant stream.
type talker struct {
	id      string
	det     *speech.Detector
	segs    []speech.Segment
	frames  int
	speechN int     // frames above the onset level
	speechP float64 // their summed power
	peak    float64
	clipped int // frames with clipped samples
	vadOnly int // frames VAD heard speech in, flagged silent by ACS
	acsOnly int // frames ACS flagged not silent, VAD heard nothing in
}

func newAnalysis(deadAir time.Duration) *analysis {
	return &analysis{deadAir: int64(deadAir / speech.SlotDur), parts: map[string]*talker{}}
}

// add takes one frame.
func (a *analysis) add(f *codec.Frame) {
	slot := a.clock.FrameSlot(f.Participant, f.Timestamp, f.ReceivedAt)
	a.started = true
	a.min, a.max = min(a.min, slot), max(a.max, slot)
	t := a.parts[f.Participant]
	if t == nil {
		t = &talker{id: f.Participant, det: speech.NewDetector(speech.Config{}), peak: speech.Floor}
		a.parts[f.Participant] = t
	}
	l := speech.Measure(f.Data)
	t.frames++
	t.peak = max(t.peak, l.Peak)
	if l.Clipped >= 2 {
		t.clipped++
	}
	above := t.det.Above(l.RMS)
	if above {
		t.speechN++
		t.speechP += l.Power
	}
	switch {
	case above && f.Silent:
		t.vadOnly++
	case !above && !f.Silent:
		t.acsOnly++
	}
	t.segs = t.det.Add(slot, l.RMS, t.segs)
}

// ms turns slots into milliseconds.
func ms(slots int64) int64 { return slots * int64(speech.SlotDur/time.Millisecond) }

// summary is the figures as an event's data. final closes every open
// segment (the call is over); otherwise open segments count up to now.
func (a *analysis) summary(final bool) codec.Analysis {
	if final && !a.finalized {
		for _, t := range a.parts {
			if s, ok := t.det.Flush(); ok {
				t.segs = append(t.segs, s)
			}
		}
		a.finalized = true
	}
	dur := int64(0)
	if a.started {
		dur = a.max - a.min + 1
	}
	ids := make([]string, 0, len(a.parts))
	for id := range a.parts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	all := make([][]speech.Segment, 0, len(ids))
	totalTalk := int64(0)
	talks := make([]int64, len(ids))
	for i, id := range ids {
		t := a.parts[id]
		segs := t.segs
		if s, ok := t.det.Open(); ok && !final {
			segs = append(slices.Clip(segs), s)
		}
		all = append(all, segs)
		for _, s := range segs {
			talks[i] += s.Len()
		}
		totalTalk += talks[i]
	}
	parts := make([]codec.ParticipantAnalysis, 0, len(ids))
	for i, id := range ids {
		t, segs := a.parts[id], all[i]
		longest := int64(0)
		for _, s := range segs {
			longest = max(longest, s.Len())
		}
		share := 0.0
		if totalTalk > 0 {
			share = float64(talks[i]) / float64(totalTalk)
		}
		level := speech.Floor
		if t.speechN > 0 {
			level = speech.DB(t.speechP / float64(t.speechN))
		}
		status := "ok"
		switch {
		case t.speechN == 0:
			status = "silent"
		case level < LevelLow:
			status = "low"
		case level > LevelHigh:
			status = "high"
		}
		agree := 1.0
		if t.frames > 0 {
			agree = 1 - float64(t.vadOnly+t.acsOnly)/float64(t.frames)
		}
		parts = append(parts, codec.ParticipantAnalysis{
			Participant: id, TalkMs: ms(talks[i]), SilenceMs: ms(dur - talks[i]), TalkShare: share,
			Turns: len(segs), LongestMonologueMs: ms(longest), SpeechLevelDbfs: round1(level),
			PeakDbfs: round1(t.peak), ClippedFrames: t.clipped, Level: status, Frames: t.frames,
			VadSpeechAcsSilentFrames: t.vadOnly, AcsSpeechVadSilentFrames: t.acsOnly, AcsAgreement: agree,
		})
	}
	over, overN, dead, deadN, longestDead := a.overlaps(all, dur)
	return codec.Analysis{
		Final: final, DurationMs: ms(dur), Participants: parts,
		OvertalkMs: ms(over), OvertalkCount: overN,
		DeadAirMs: ms(dead), DeadAirCount: deadN, LongestDeadAirMs: ms(longestDead),
	}
}

// overlaps sweeps every participant's segments over the call: slots where
// two or more speak (overtalk), and stretches of at least deadAir slots
// where nobody does (dead air).
func (a *analysis) overlaps(all [][]speech.Segment, dur int64) (over, overN, dead, deadN, longest int64) {
	if dur == 0 {
		return
	}
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, segs := range all {
		for _, s := range segs {
			edges = append(edges, edge{s.Start, 1}, edge{s.End + 1, -1})
		}
	}
	edges = append(edges, edge{a.max + 1, 0})
	slices.SortFunc(edges, func(x, y edge) int { return cmp.Or(cmp.Compare(x.at, y.at), cmp.Compare(x.delta, y.delta)) })
	active, at, inOver := 0, a.min, false
	for _, e := range edges {
		if span := min(e.at, a.max+1) - at; span > 0 {
			switch {
			case active >= 2:
				over += span
				if !inOver { // a third speaker joining is the same overtalk
					overN++
				}
			case active == 0 && span >= a.deadAir:
				dead += span
				deadN++
				longest = max(longest, span)
			}
			inOver = active >= 2
			at = e.at
		}
		active += e.delta
	}
	return over, overN, dead, deadN, longest
}

func round1(v float64) float64 { return float64(int64(v*10+sign(v)*0.5)) / 10 }

func sign(v float64) float64 {
	if v < 0 {
		return -1
	}
	return 1
}
