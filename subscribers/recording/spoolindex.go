package recording

import (
	"encoding/binary"
	"fmt"
	"os"
)

// The spool's index on disk. A participant's entries are kept in memory
// only until spillEntries of them are written to the spool file: then they
// go to an index file beside it, in fixed records, and come back when the
// call is rendered. A call's memory while it goes on is so bounded per
// participant stream, however long the call; rendering loads one call's
// index at a time (the Group bounds the calls ending at once).

// spillEntries is how many entries of a participant stay in memory at most
// (about 110 KiB, 40 s of audio).
const spillEntries = 2048

// entryRecord is the size of an entry on disk (its place on the timeline,
// set at render, is not kept).
const entryRecord = 8 + 8 + 8 + 8 + 4 + 1 + 8

// chunk is a run of a participant's entries in the index file.
type chunk struct {
	off int64
	n   int
}

// spill writes a participant's entries, every one of them in the spool
// file already (after a flush), to the index file. An error leaves them in
// memory, to be spilled with the next ones.
func (s *Spool) spill(p *part) error {
	if len(p.es) == 0 || p.pending != len(p.es) {
		return nil
	}
	if s.idx == nil {
		f, err := os.CreateTemp(s.dir, "spool-index-*")
		if err != nil {
			return fmt.Errorf("spool index: %w", err)
		}
		s.idx = f
	}
	buf := make([]byte, 0, len(p.es)*entryRecord)
	for _, e := range p.es {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.ts))
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.recv))
		buf = binary.LittleEndian.AppendUint64(buf, e.seq)
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.off))
		buf = binary.LittleEndian.AppendUint32(buf, uint32(e.n))
		silent := byte(0)
		if e.silent {
			silent = 1
		}
		buf = append(buf, silent)
		buf = binary.LittleEndian.AppendUint64(buf, e.sum)
	}
	if _, err := s.idx.WriteAt(buf, s.idxSize); err != nil {
		return fmt.Errorf("spool index: %w", err)
	}
	p.chunks = append(p.chunks, chunk{off: s.idxSize, n: len(p.es)})
	p.spilled += len(p.es)
	s.idxSize += int64(len(buf))
	p.es, p.pending = p.es[:0], 0
	return nil
}

// load brings a participant's spilled entries back in front of those in
// memory, for rendering.
func (s *Spool) load(p *part) error {
	if len(p.chunks) == 0 {
		return nil
	}
	es := make([]entry, 0, p.spilled+len(p.es))
	var buf []byte
	for _, c := range p.chunks {
		buf = slicesGrow(buf, c.n*entryRecord)
		if _, err := s.idx.ReadAt(buf, c.off); err != nil {
			return fmt.Errorf("spool index: %w", err)
		}
		for r := buf; len(r) >= entryRecord; r = r[entryRecord:] {
			es = append(es, entry{ts: int64(binary.LittleEndian.Uint64(r)), recv: int64(binary.LittleEndian.Uint64(r[8:])),
				seq: binary.LittleEndian.Uint64(r[16:]), off: int64(binary.LittleEndian.Uint64(r[24:])),
				n: int32(binary.LittleEndian.Uint32(r[32:])), silent: r[36] == 1, sum: binary.LittleEndian.Uint64(r[37:])})
		}
	}
	p.pending += len(es)
	p.es = append(es, p.es...)
	p.chunks, p.spilled = nil, 0
	return nil
}

// slicesGrow returns b with length n, reusing its array when it can.
func slicesGrow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]byte, n)
}
