// Package recording turns a call's audio frames into WAV files: one per
// participant stream and a mix of the whole call, on the call's true
// timeline. It is the recorder role's core. Frames are spooled to disk as
// they come, with a small index in memory (a few dozen bytes a frame), so a
// long call costs disk, not memory; the files are written when the call is
// over. The result depends only on the set of frames, not on their order or
// how often one came, so replaying a call after a replica died gives the
// same bytes.
package recording

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/audiofan/audiofan/codec"
)

// frameDur is ACS's frame length: the timeline's grid.
const frameDur = 20 * time.Millisecond

// ErrFormat is returned for a frame whose format the call cannot take: not
// 16-bit mono PCM, or another sample rate than the call's first frame.
var ErrFormat = errors.New("frame format")

// entry indexes one spooled frame.
type entry struct {
	ts     int64 // capture time, Unix ns
	seq    uint64
	off    int64 // in the spool file
	n      int32 // bytes of PCM
	silent bool
	sum    uint64 // FNV-1a of the PCM, to find copies cheaply
}

// partBuffer is how much PCM of one participant a spool holds in memory
// before writing it: one write per 25 frames rather than one per frame, and
// a participant's frames lie together in the spool, so rendering reads and
// writes them in long runs.
const partBuffer = 16 << 10

// Spool gathers one call's frames on disk until they are rendered.
type Spool struct {
	f      *os.File
	size   int64 // bytes written to the file
	rate   int
	parts  map[string]*part
	outSeq uint64 // frames of outbound audio so far
}

// part is one participant's frames: indexed, the last ones still buffered.
type part struct {
	es      []entry
	buf     []byte
	pending int // index in es of the first frame in buf
}

// NewSpool starts a spool in a new file under dir.
func NewSpool(dir string) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("spool folder: %w", err)
	}
	f, err := os.CreateTemp(dir, "spool-*")
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return &Spool{f: f, parts: map[string]*part{}}, nil
}

// Close removes the spool.
func (s *Spool) Close() error {
	err := s.f.Close()
	if rerr := os.Remove(s.f.Name()); err == nil && !errors.Is(rerr, os.ErrNotExist) {
		err = rerr
	}
	return err
}

// Frames is how many participants' frames were added (audio played into
// the call not counted: without the call's own audio there is no timeline
// to put it on).
func (s *Spool) Frames() int {
	n := 0
	for id, p := range s.parts {
		if id != outboundKey {
			n += len(p.es)
		}
	}
	return n
}

// Add spools a frame. A frame in another format than the call's is refused
// with ErrFormat; an error writing the spool is an *os.PathError (full disk).
func (s *Spool) Add(f *codec.Frame) error {
	if f.Channels != 1 || f.Encoding != codec.EncodingPCM16 || f.SampleRate <= 0 || len(f.Data)%2 != 0 {
		return fmt.Errorf("%w: %d Hz, %d channels, %q, %d bytes", ErrFormat, f.SampleRate, f.Channels, f.Encoding, len(f.Data))
	}
	if s.rate == 0 {
		s.rate = f.SampleRate
	} else if f.SampleRate != s.rate {
		return fmt.Errorf("%w: %d Hz in a %d Hz call", ErrFormat, f.SampleRate, s.rate)
	}
	p := s.parts[f.Participant]
	if p == nil {
		p = &part{buf: make([]byte, 0, partBuffer)}
		s.parts[f.Participant] = p
	}
	if len(p.buf)+len(f.Data) > partBuffer {
		if err := s.flush(p); err != nil {
			return err
		}
	}
	h := fnv.New64a()
	h.Write(f.Data)
	p.es = append(p.es, entry{ts: f.Timestamp.UnixNano(), seq: f.Seq, off: int64(len(p.buf)),
		n: int32(len(f.Data)), silent: f.Silent, sum: h.Sum64()})
	p.buf = append(p.buf, f.Data...)
	return nil
}

// outboundKey keeps the track of the audio played into the call (Outbound)
// apart from the participants': no ACS raw id begins with a NUL.
const outboundKey = "\x00outbound"

// AddOutbound spools audio played into the call, from at on the call's
// capture-time timeline, as frames of 20 ms at rate (the call's: Outbound
// audio is in the call's format). It returns when the audio ends.
func (s *Spool) AddOutbound(at time.Time, rate int, pcm []byte) (time.Time, error) {
	switch {
	case rate <= 0 || len(pcm)%2 != 0:
		return at, fmt.Errorf("%w: outbound audio of %d bytes at %d Hz", ErrFormat, len(pcm), rate)
	case s.rate != 0 && rate != s.rate:
		return at, fmt.Errorf("%w: outbound audio at %d Hz in a %d Hz call", ErrFormat, rate, s.rate)
	}
	s.rate = rate
	frame := rate / 50 * 2
	for i := 0; i < len(pcm); i += frame {
		s.outSeq++
		f := codec.Frame{Participant: outboundKey, Seq: s.outSeq, Timestamp: at,
			SampleRate: rate, Channels: 1, Encoding: codec.EncodingPCM16, Data: pcm[i:min(i+frame, len(pcm))]}
		if err := s.Add(&f); err != nil {
			return at, err
		}
		at = at.Add(frameDur)
	}
	return at, nil
}

// CutOutbound drops the audio played into the call from at on: a stop.
func (s *Spool) CutOutbound(at time.Time) {
	if p := s.parts[outboundKey]; p != nil {
		// Outbound frames are added in time order (each prompt after the
		// one before), so what is cut is a tail; its PCM stays in the
		// spool, unreferenced.
		cut := at.UnixNano()
		i, _ := slices.BinarySearchFunc(p.es, cut, func(e entry, t int64) int { return cmp.Compare(e.ts, t) })
		p.es = p.es[:i]
		p.pending = min(p.pending, i)
	}
}

// flush writes a participant's buffered PCM at the end of the file; its
// frames' offsets, relative to the buffer until now, become file offsets.
// An error leaves it buffered, so the frame that met it can be added again
// once the disk has room.
func (s *Spool) flush(p *part) error {
	if len(p.buf) == 0 {
		return nil
	}
	if _, err := s.f.WriteAt(p.buf, s.size); err != nil {
		return err
	}
	for i := p.pending; i < len(p.es); i++ {
		p.es[i].off += s.size
	}
	s.size += int64(len(p.buf))
	p.buf, p.pending = p.buf[:0], len(p.es)
	return nil
}

// File is a written recording file.
type File struct {
	Name        string // file name: the participant's token, or "mix", with .wav
	Participant string // raw id; "" for mixed audio, the mix and the outbound track
	Mix         bool   // the mix of every track
	Outbound    bool   // the audio played into the call (Outbound messages)
	Path        string
	Bytes       int64
	SHA256      string
	Duration    time.Duration // of the audio in it
	Frames      int           // frames placed
	Duplicates  int           // frames dropped as copies of one already placed
	Gaps        int           // frame slots filled with silence inside the track
}

// Result is a rendered call.
type Result struct {
	SampleRate int
	Start      time.Time     // capture time of the call's first frame
	Duration   time.Duration // of the whole call (the mix)
	Files      []File        // the tracks by participant raw id, the outbound track if any, then the mix
}

// Render writes the call into dir: <participant token>.wav per stream,
// outbound.wav for the audio played into the call if there was any, and
// mix.wav. Each frame goes in the 20 ms slot its capture time falls in,
// counted from the earliest frame of any participant, so participants stay
// aligned and a skipped frame leaves exactly a frame of silence. A frame
// whose slot holds the same audio is a duplicate (a redelivery) and is
// dropped; one whose slot holds other audio (timestamps jittered into the
// same slot) goes into the next free slot, so no audio is lost or
// overwritten. Timestamps may stray up to ±5 ms from the grid. Files are
// written to temporary names, synced, and renamed into place together at
// the end, replacing a previous rendering whole.
func (s *Spool) Render(dir string) (*Result, error) {
	if s.Frames() == 0 {
		return nil, errors.New("no frames")
	}
	for _, p := range s.parts {
		if err := s.flush(p); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("recording folder: %w", err)
	}
	// The call's timeline starts with its own first frame; audio played
	// into it before that has nothing to line up with and is left out.
	start := int64(math.MaxInt64)
	for id, p := range s.parts {
		for _, e := range p.es {
			if id != outboundKey {
				start = min(start, e.ts)
			}
		}
	}
	ids := make([]string, 0, len(s.parts))
	for id := range s.parts {
		if id != outboundKey {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if p := s.parts[outboundKey]; p != nil {
		p.es = slices.DeleteFunc(p.es, func(e entry) bool { return e.ts < start })
		if len(p.es) > 0 {
			ids = append(ids, outboundKey)
		}
	}

	res := &Result{SampleRate: s.rate, Start: time.Unix(0, start).UTC()}
	var tmps []*os.File
	defer func() {
		for _, t := range tmps {
			t.Close()
			os.Remove(t.Name()) // gone after a rename; removed on failure
		}
	}()
	// Lay every track out first: each file then runs to the call's end, so
	// all of them have the call's duration and line up sample for sample.
	slotBytes := int64(s.rate / 50 * 2)
	layouts := make([]layout, len(ids))
	mixLen := int64(0)
	for i, id := range ids {
		l, err := s.layout(s.parts[id].es, start, slotBytes)
		if err != nil {
			return nil, err
		}
		layouts[i] = l
		mixLen = max(mixLen, l.size)
	}
	for i, id := range ids {
		tmp, err := os.CreateTemp(dir, ".rec-*")
		if err != nil {
			return nil, fmt.Errorf("recording %s: %w", dir, err)
		}
		tmps = append(tmps, tmp)
		f, err := s.writeTrack(tmp, s.parts[id].es, layouts[i], mixLen, slotBytes)
		if err != nil {
			return nil, fmt.Errorf("recording %s: %w", tmp.Name(), err)
		}
		f.Participant, f.Name = id, string(codec.EncodeToken(id))+".wav"
		if id == outboundKey {
			f.Participant, f.Name, f.Outbound = "", "outbound.wav", true
		}
		res.Files = append(res.Files, f)
	}
	mixTmp, err := os.CreateTemp(dir, ".rec-*")
	if err != nil {
		return nil, fmt.Errorf("recording %s: %w", dir, err)
	}
	tmps = append(tmps, mixTmp)
	mix, err := writeMix(mixTmp, tmps[:len(tmps)-1], s.rate, mixLen)
	if err != nil {
		return nil, fmt.Errorf("recording %s: %w", mixTmp.Name(), err)
	}
	mix.Name, mix.Mix = "mix.wav", true
	res.Files = append(res.Files, mix)
	res.Duration = mix.Duration
	for i, t := range tmps {
		res.Files[i].Path = filepath.Join(dir, res.Files[i].Name)
		if err := t.Sync(); err != nil {
			return nil, fmt.Errorf("recording %s: %w", res.Files[i].Path, err)
		}
	}
	for i, t := range tmps {
		if err := os.Rename(t.Name(), res.Files[i].Path); err != nil {
			return nil, fmt.Errorf("recording %s: %w", res.Files[i].Path, err)
		}
	}
	return res, nil
}

const headerLen = 44

// layout is where a track's frames go.
type layout struct {
	place                    []int64 // slot of each frame (sorted), -1 if dropped
	size                     int64   // bytes of PCM to the end of its last frame
	frames, duplicates, gaps int
}

// layout sorts a participant's frames by capture time and gives each its
// slot.
func (s *Spool) layout(es []entry, start, slotBytes int64) (layout, error) {
	slices.SortStableFunc(es, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.ts, b.ts), cmp.Compare(a.seq, b.seq))
	})
	l := layout{place: make([]int64, len(es))}
	taken := make(map[int64]int, len(es)) // slot -> index in es
	minSlot, maxSlot := int64(math.MaxInt64), int64(-1)
	var a, b []byte
	for i, e := range es {
		slot := (e.ts - start + int64(frameDur/2)) / int64(frameDur)
		l.place[i] = -1
		for {
			j, ok := taken[slot]
			if !ok {
				break
			}
			if same, err := s.same(es[j], e, &a, &b); err != nil {
				return l, err
			} else if same {
				l.duplicates++
				slot = -1
				break
			}
			slot++ // jitter put two frames in one slot: keep both
		}
		if slot < 0 {
			continue
		}
		taken[slot], l.place[i] = i, slot
		minSlot, maxSlot = min(minSlot, slot), max(maxSlot, slot)
		n := int64(e.n)
		if n == 0 && e.silent {
			n = slotBytes // a silent frame without samples still takes its time
		}
		l.size = max(l.size, slot*slotBytes+n)
		l.frames++
	}
	if maxSlot >= 0 {
		l.gaps = int(maxSlot-minSlot+1) - l.frames
	}
	return l, nil
}

// writeTrack writes one participant's frames where layout says, in a file
// of size bytes of PCM.
func (s *Spool) writeTrack(out *os.File, es []entry, l layout, size, slotBytes int64) (File, error) {
	f := File{Frames: l.frames, Duplicates: l.duplicates, Gaps: l.gaps}
	// Unwritten stretches of the file read as zeros: silence costs nothing.
	if err := out.Truncate(headerLen + size); err != nil {
		return f, err
	}
	h := wavHeader(s.rate, int(size))
	if _, err := out.WriteAt(h[:], 0); err != nil {
		return f, err
	}
	// Frames next to each other in the spool and on the timeline (the
	// usual case) are copied in runs of up to 64 KiB.
	buf := make([]byte, 64<<10)
	for i := 0; i < len(es); {
		e := es[i]
		if l.place[i] < 0 || e.n == 0 {
			i++
			continue
		}
		j, n := i+1, int64(e.n)
		for j < len(es) && l.place[j] == l.place[j-1]+1 && es[j-1].n == int32(slotBytes) &&
			es[j].off == es[j-1].off+int64(es[j-1].n) && n+int64(es[j].n) <= int64(len(buf)) {
			n += int64(es[j].n)
			j++
		}
		if _, err := s.f.ReadAt(buf[:n], e.off); err != nil {
			return f, fmt.Errorf("read spool: %w", err)
		}
		if _, err := out.WriteAt(buf[:n], headerLen+l.place[i]*slotBytes); err != nil {
			return f, err
		}
		i = j
	}
	sum, err := hashFile(out)
	if err != nil {
		return f, err
	}
	f.Bytes, f.SHA256 = headerLen+size, sum
	f.Duration = time.Duration(size/2) * time.Second / time.Duration(s.rate)
	return f, nil
}

// same reports whether two spooled frames hold the same audio.
func (s *Spool) same(x, y entry, a, b *[]byte) (bool, error) {
	if x.sum != y.sum || x.n != y.n {
		return false, nil
	}
	*a, *b = slices.Grow((*a)[:0], int(x.n))[:x.n], slices.Grow((*b)[:0], int(y.n))[:y.n]
	if _, err := s.f.ReadAt(*a, x.off); err != nil {
		return false, fmt.Errorf("read spool: %w", err)
	}
	if _, err := s.f.ReadAt(*b, y.off); err != nil {
		return false, fmt.Errorf("read spool: %w", err)
	}
	return bytes.Equal(*a, *b), nil
}

// writeMix sums the tracks with saturation, a block at a time; tracks
// shorter than the call are silence past their end.
func writeMix(out *os.File, tracks []*os.File, rate int, size int64) (File, error) {
	var f File
	h := wavHeader(rate, int(size))
	sum := sha256.New()
	w := io.MultiWriter(out, sum)
	if _, err := w.Write(h[:]); err != nil {
		return f, err
	}
	const block = 64 << 10
	in := make([][]byte, len(tracks))
	for i := range in {
		in[i] = make([]byte, block)
	}
	acc := make([]int32, block/2)
	outBuf := make([]byte, block)
	for off := int64(0); off < size; off += block {
		n := int(min(block, size-off))
		clear(acc[:n/2])
		for i, t := range tracks {
			got, err := t.ReadAt(in[i][:n], headerLen+off)
			if err != nil && !errors.Is(err, io.EOF) {
				return f, err
			}
			clear(in[i][got:n])
			for j := 0; j+1 < n; j += 2 {
				acc[j/2] += int32(int16(binary.LittleEndian.Uint16(in[i][j:])))
			}
		}
		for j := 0; j+1 < n; j += 2 {
			binary.LittleEndian.PutUint16(outBuf[j:], uint16(int16(max(min(acc[j/2], math.MaxInt16), math.MinInt16))))
		}
		if _, err := w.Write(outBuf[:n]); err != nil {
			return f, err
		}
	}
	f.Bytes, f.SHA256 = headerLen+size, hex.EncodeToString(sum.Sum(nil))
	f.Duration = time.Duration(size/2) * time.Second / time.Duration(rate)
	return f, nil
}

func hashFile(f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, math.MaxInt64)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
