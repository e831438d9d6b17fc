// Package recording turns a call's audio frames into WAV files: one per
// participant stream and a mix of the whole call, on the call's timeline
// (speech.Clock: the sender's timestamps, where they can be believed). It
// is the recorder role's core. Frames are spooled to disk as they come,
// with their index too past its last couple of thousand entries a
// participant (spoolindex.go), so a long call costs disk, not memory; the
// files are written when the call is over. The
// result depends only on the set of frames, not on their order or how often
// one came, so replaying a call after a replica died gives the same bytes.
package recording

import (
	"cmp"
	"context"
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
	"github.com/audiofan/audiofan/subscribers/speech"
)

// ErrFormat is returned for a frame whose format the call cannot take: not
// 16-bit mono PCM, or another sample rate than the call's first frame.
var ErrFormat = errors.New("frame format")

// entry indexes one spooled frame.
type entry struct {
	ts     int64 // capture time as the sender stamped it, Unix ns
	recv   int64 // when a receiver read it, Unix ns (0: unknown)
	at     int64 // its place on the call's timeline (Render sets it)
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
	// MaxDuration bounds the recording: frames placed later than this
	// after the call's first are left out (counted in File.Cut). 0: no
	// bound.
	MaxDuration time.Duration

	dir     string
	f       *os.File
	size    int64    // bytes written to the file
	idx     *os.File // the index spilled from memory; nil until the first spill
	idxSize int64
	spillAt int // entries of a participant kept in memory; 0: spillEntries (tests set it)
	rate    int
	parts   map[string]*part
	outSeq  uint64 // frames of outbound audio so far
}

// part is one participant's frames: indexed, the last ones still buffered.
type part struct {
	es      []entry
	dups    int // frames stored twice, dropped by Render
	buf     []byte
	pending int     // index in es of the first frame in buf
	spill   bool    // its index goes to disk (not the outbound track's: a stop cuts its tail in memory)
	chunks  []chunk // its entries in the index file, before es
	spilled int
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
	return &Spool{dir: dir, f: f, parts: map[string]*part{}}, nil
}

// Close removes the spool.
func (s *Spool) Close() error {
	files := []*os.File{s.f}
	if s.idx != nil {
		files = append(files, s.idx)
	}
	var err error
	for _, f := range files {
		cerr := f.Close()
		if rerr := os.Remove(f.Name()); cerr == nil && !errors.Is(rerr, os.ErrNotExist) {
			cerr = rerr
		}
		err = cmp.Or(err, cerr)
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
			n += p.spilled + len(p.es)
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
		p = &part{buf: make([]byte, 0, partBuffer), spill: f.Participant != outboundKey}
		s.parts[f.Participant] = p
	}
	if len(p.buf)+len(f.Data) > partBuffer {
		if err := s.flush(p); err != nil {
			return err
		}
		if p.spill && len(p.es) >= cmp.Or(s.spillAt, spillEntries) {
			if err := s.spill(p); err != nil {
				return err
			}
		}
	}
	h := fnv.New64a()
	h.Write(f.Data)
	p.es = append(p.es, entry{ts: f.Timestamp.UnixNano(), recv: unixNano(f.ReceivedAt), seq: f.Seq, off: int64(len(p.buf)),
		n: int32(len(f.Data)), silent: f.Silent, sum: h.Sum64()})
	p.buf = append(p.buf, f.Data...)
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
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
		at = at.Add(speech.SlotDur)
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
	Duplicates  int           // frames dropped as stored twice
	Gaps        int           // frame slots filled with silence inside the track
	Cut         int           // frames left out: past the recording's MaxDuration
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
// mix.wav. Each frame goes in the 20 ms slot of its place on the call's
// timeline (speech.Clock, fed in the order the receivers read the frames),
// counted from the earliest frame of any participant, so participants stay
// aligned, a skipped frame leaves exactly a frame of silence, and a wild
// timestamp stretches nothing. A frame stored twice (a redelivery: the same
// seq, timestamps and audio) is dropped; one whose slot is taken
// (timestamps jittered into the same slot) goes into the next free slot,
// so no audio is lost or overwritten. Files are written
// to temporary names, synced, and renamed into place together at the end,
// replacing a previous rendering whole; past 4 GiB a file is RF64. Render
// stops when ctx ends.
func (s *Spool) Render(ctx context.Context, dir string) (*Result, error) {
	if s.Frames() == 0 {
		return nil, errors.New("no frames")
	}
	for _, p := range s.parts {
		if err := s.flush(p); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		if err := s.load(p); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("recording folder: %w", err)
	}
	ids := make([]string, 0, len(s.parts))
	for id := range s.parts {
		if id != outboundKey {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	start := s.place(ids)
	// The call's timeline starts with its own first frame; audio played
	// into it before that has nothing to line up with and is left out.
	if p := s.parts[outboundKey]; p != nil {
		p.es = slices.DeleteFunc(p.es, func(e entry) bool { return e.ts < start })
		for i := range p.es {
			p.es[i].at = p.es[i].ts
		}
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
	maxSlots := int64(math.MaxInt64)
	if s.MaxDuration > 0 {
		maxSlots = int64(s.MaxDuration / speech.SlotDur)
	}
	layouts := make([]layout, len(ids))
	mixLen := int64(0)
	for i, id := range ids {
		l := s.layout(s.parts[id], start, slotBytes, maxSlots)
		layouts[i] = l
		mixLen = max(mixLen, l.size)
	}
	hl := int64(len(wavHeader(s.rate, mixLen)))
	for i, id := range ids {
		tmp, err := os.CreateTemp(dir, ".rec-*")
		if err != nil {
			return nil, fmt.Errorf("recording %s: %w", dir, err)
		}
		tmps = append(tmps, tmp)
		f, err := s.writeTrack(ctx, tmp, s.parts[id].es, layouts[i], mixLen, slotBytes)
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
	mix, err := writeMix(ctx, mixTmp, tmps[:len(tmps)-1], s.rate, hl, mixLen)
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

// place drops frames stored twice and puts every participant's frames on
// the call's timeline, feeding the clock in the order the receivers read
// them (receive time, then seq: an order the set of frames alone decides,
// participants merged in id order where they tie). It returns where the
// call starts. It sorts in place and allocates nothing per frame: a call
// of hours has millions.
func (s *Spool) place(ids []string) int64 {
	byRecv := func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.recv, b.recv), cmp.Compare(a.seq, b.seq), cmp.Compare(a.ts, b.ts),
			cmp.Compare(a.sum, b.sum), cmp.Compare(a.n, b.n))
	}
	parts := make([]*part, len(ids))
	for k, id := range ids {
		p := s.parts[id]
		slices.SortFunc(p.es, byRecv)
		n := len(p.es)
		p.es = slices.CompactFunc(p.es, func(a, b entry) bool { return byRecv(a, b) == 0 })
		p.dups += n - len(p.es)
		parts[k] = p
	}
	var clock speech.Clock
	start := int64(math.MaxInt64)
	// Merge the participants' sorted frames through a min-heap of their
	// next frames: n log P for a call of P participants.
	next := make([]int, len(parts))
	head := func(k int) entry { return parts[k].es[next[k]] }
	less := func(a, b int) bool {
		if c := byRecv(head(a), head(b)); c != 0 {
			return c < 0
		}
		return a < b // participants in id order where they tie
	}
	h := make([]int, 0, len(parts))
	down := func(i int) {
		for {
			m, l, r := i, 2*i+1, 2*i+2
			if l < len(h) && less(h[l], h[m]) {
				m = l
			}
			if r < len(h) && less(h[r], h[m]) {
				m = r
			}
			if m == i {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for k, p := range parts {
		if len(p.es) > 0 {
			h = append(h, k)
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	for len(h) > 0 {
		k := h[0]
		e := &parts[k].es[next[k]]
		var recv time.Time
		if e.recv != 0 {
			recv = time.Unix(0, e.recv)
		}
		e.at = clock.Place(ids[k], time.Unix(0, e.ts), recv).UnixNano()
		start = min(start, e.at)
		if next[k]++; next[k] == len(parts[k].es) {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		down(0)
	}
	return start
}

// layout is where a track's frames go.
type layout struct {
	place                         []int64 // slot of each frame (sorted), -1 if dropped
	size                          int64   // bytes of PCM to the end of its last frame
	frames, duplicates, gaps, cut int
}

// layout sorts a participant's frames by their place on the timeline and
// gives each its slot: the one its place falls in, or the next free one.
// Frames come sorted, so the next free slot is one past the last taken:
// linear however many frames share a slot.
func (s *Spool) layout(p *part, start, slotBytes, maxSlots int64) layout {
	es := p.es
	slices.SortStableFunc(es, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.seq, b.seq))
	})
	l := layout{place: make([]int64, len(es)), duplicates: p.dups}
	minSlot, last := int64(math.MaxInt64), int64(-1)
	for i, e := range es {
		l.place[i] = -1
		natural := (e.at - start + int64(speech.SlotDur/2)) / int64(speech.SlotDur)
		slot := max(natural, last+1) // jitter put two frames in one slot: keep both
		if slot >= maxSlots {
			l.cut++
			continue
		}
		l.place[i], last = slot, slot
		minSlot = min(minSlot, slot)
		n := int64(e.n)
		if n == 0 && e.silent {
			n = slotBytes // a silent frame without samples still takes its time
		}
		l.size = max(l.size, slot*slotBytes+n)
		l.frames++
	}
	if last >= 0 {
		l.gaps = int(last-minSlot+1) - l.frames
	}
	return l
}

// writeTrack writes one participant's frames where layout says, in a file
// of size bytes of PCM.
func (s *Spool) writeTrack(ctx context.Context, out *os.File, es []entry, l layout, size, slotBytes int64) (File, error) {
	f := File{Frames: l.frames, Duplicates: l.duplicates, Gaps: l.gaps, Cut: l.cut}
	h := wavHeader(s.rate, size)
	hl := int64(len(h))
	// Unwritten stretches of the file read as zeros: silence costs nothing.
	if err := out.Truncate(hl + size); err != nil {
		return f, err
	}
	if _, err := out.WriteAt(h, 0); err != nil {
		return f, err
	}
	// Frames next to each other in the spool and on the timeline (the
	// usual case) are copied in runs of up to 64 KiB.
	buf := make([]byte, 64<<10)
	for i, runs := 0, 0; i < len(es); runs++ {
		if runs%256 == 0 && ctx.Err() != nil {
			return f, ctx.Err()
		}
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
		if _, err := out.WriteAt(buf[:n], hl+l.place[i]*slotBytes); err != nil {
			return f, err
		}
		i = j
	}
	sum, err := hashFile(ctx, out)
	if err != nil {
		return f, err
	}
	f.Bytes, f.SHA256 = hl+size, sum
	f.Duration = time.Duration(size/2) * time.Second / time.Duration(s.rate)
	return f, nil
}

// writeMix sums the tracks (each with a header of hl bytes) with
// saturation, a block at a time; tracks shorter than the call are silence
// past their end.
func writeMix(ctx context.Context, out *os.File, tracks []*os.File, rate int, hl, size int64) (File, error) {
	var f File
	h := wavHeader(rate, size)
	sum := sha256.New()
	w := io.MultiWriter(out, sum)
	if _, err := w.Write(h); err != nil {
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
		if ctx.Err() != nil {
			return f, ctx.Err()
		}
		n := int(min(block, size-off))
		clear(acc[:n/2])
		for i, t := range tracks {
			got, err := t.ReadAt(in[i][:n], hl+off)
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
	f.Bytes, f.SHA256 = int64(len(h))+size, hex.EncodeToString(sum.Sum(nil))
	f.Duration = time.Duration(size/2) * time.Second / time.Duration(rate)
	return f, nil
}

func hashFile(ctx context.Context, f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, io.NewSectionReader(f, 0, math.MaxInt64)}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops a long read (hashing a recording of hours) when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
