// Package recording turns a call's audio frames into WAV files: one per
// participant stream and a mix of the whole call, on the call's true
// timeline. It is the recorder role's core, and pure: frames in, files out,
// so that rendering the same frames again gives the same bytes, however the
// frames were gathered (live, or replayed after a replica died).
package recording

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/audiofan/audiofan/codec"
)

// frameDur is ACS's frame length: the timeline's grid.
const frameDur = 20 * time.Millisecond

// ErrMixedFormats is returned when a call's frames disagree on the format.
var ErrMixedFormats = errors.New("frames of one call in different formats")

// Track is one participant stream's audio on the call's timeline.
type Track struct {
	Participant string // raw id; "" for mixed audio
	PCM         []byte // 16-bit little-endian mono, from the call's start
	Frames      int    // frames placed
	Duplicates  int    // frames dropped as copies of one already placed
	Gaps        int    // frame slots filled with silence inside the track
}

// Call is a rendered call: a track per participant and their mix.
type Call struct {
	Call       string
	SampleRate int
	Start      time.Time // capture time of the call's first frame
	Tracks     []Track   // by participant raw id
	Mix        []byte    // every track summed, saturating
}

// Duration is the call's length on its timeline.
func (c *Call) Duration() time.Duration {
	return time.Duration(len(c.Mix)/2) * time.Second / time.Duration(c.SampleRate)
}

// Render places frames on the call's timeline. Each frame goes in the 20 ms
// slot its capture time falls in, counted from the earliest frame of any
// participant, so participants stay aligned with each other and a skipped
// frame leaves exactly a frame of silence. A frame whose slot is taken by the
// same audio is a duplicate (a redelivery) and is dropped; one whose slot is
// taken by other audio (timestamps jittered into the same slot) goes into
// the next free slot, so no audio is lost or overwritten. Input order does
// not matter. Timestamps may stray up to ±5 ms from a regular 20 ms grid;
// beyond that a frame can land a slot away from its neighbours.
func Render(frames []codec.Frame) (*Call, error) {
	if len(frames) == 0 {
		return nil, errors.New("no frames")
	}
	rate, call := frames[0].SampleRate, frames[0].Call
	start := frames[0].Timestamp
	for _, f := range frames {
		if f.SampleRate != rate || f.Channels != 1 || f.Encoding != codec.EncodingPCM16 {
			return nil, fmt.Errorf("%w: %d Hz, %d channels, %q", ErrMixedFormats, f.SampleRate, f.Channels, f.Encoding)
		}
		if f.Timestamp.Before(start) {
			start = f.Timestamp
		}
	}
	if rate <= 0 {
		return nil, fmt.Errorf("sample rate %d", rate)
	}
	slotBytes := rate / 50 * 2

	// Per participant, frames in capture order (then receive order).
	byPart := map[string][]codec.Frame{}
	for _, f := range frames {
		byPart[f.Participant] = append(byPart[f.Participant], f)
	}
	out := &Call{Call: call, SampleRate: rate, Start: start.UTC()}
	for part, fs := range byPart {
		sort.SliceStable(fs, func(i, j int) bool {
			if !fs[i].Timestamp.Equal(fs[j].Timestamp) {
				return fs[i].Timestamp.Before(fs[j].Timestamp)
			}
			return fs[i].Seq < fs[j].Seq
		})
		tr := Track{Participant: part}
		taken := map[int][]byte{}
		minSlot, maxSlot := math.MaxInt, -1
		for _, f := range fs {
			slot := int((f.Timestamp.Sub(start) + frameDur/2) / frameDur)
			dup := false
			for {
				prev, ok := taken[slot]
				if !ok {
					break
				}
				if string(prev) == string(f.Data) {
					dup = true
					break
				}
				slot++ // jitter put two frames in one slot: keep both
			}
			if dup {
				tr.Duplicates++
				continue
			}
			taken[slot] = f.Data
			minSlot, maxSlot = min(minSlot, slot), max(maxSlot, slot)
			tr.Frames++
		}
		// Lay the slots out; a slot's frame may be shorter or longer than
		// 20 ms, and the next slot starts where its own time says. The
		// track's size is known first, so it is allocated once.
		size := 0
		for slot, data := range taken {
			size = max(size, slot*slotBytes+len(data))
		}
		tr.PCM = make([]byte, size)
		for slot := minSlot; slot <= maxSlot; slot++ {
			data, ok := taken[slot]
			if !ok {
				tr.Gaps++ // a frame missing inside the stream, not before it began
				continue
			}
			copy(tr.PCM[slot*slotBytes:], data)
		}
		out.Tracks = append(out.Tracks, tr)
	}
	sort.Slice(out.Tracks, func(i, j int) bool { return out.Tracks[i].Participant < out.Tracks[j].Participant })
	out.Mix = mix(out.Tracks)
	return out, nil
}

// mix sums every track with saturation; tracks shorter than the call are
// silence past their end.
func mix(tracks []Track) []byte {
	n := 0
	for _, t := range tracks {
		n = max(n, len(t.PCM))
	}
	out := make([]byte, n)
	if len(tracks) == 1 {
		copy(out, tracks[0].PCM)
		return out
	}
	for i := 0; i+1 < n; i += 2 {
		var s int32
		for _, t := range tracks {
			if i+1 < len(t.PCM) {
				s += int32(int16(binary.LittleEndian.Uint16(t.PCM[i:])))
			}
		}
		s = max(min(s, math.MaxInt16), math.MinInt16)
		binary.LittleEndian.PutUint16(out[i:], uint16(int16(s)))
	}
	return out
}
