package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/audiofan/audiofan/subscribers/speech"
)

// wavAudio is a WAV file's audio as 16-bit mono PCM at the call's rate.
type wavAudio struct {
	path string
	pcm  []byte
}

// readWAV loads a WAV file of 16-bit PCM, mono or stereo (averaged to mono),
// and resamples it linearly to rate if it has another one (the original
// rate round-trips bit-exact, since it is not resampled at all).
func readWAV(path string, rate int) (*wavAudio, error) {
	mono, from, err := speech.LoadWAV(path)
	if err != nil {
		return nil, err
	}
	if from != rate {
		mono = speech.Resample(mono, from, rate)
	}
	if len(mono) == 0 {
		return nil, fmt.Errorf("%s: no audio", path)
	}
	return &wavAudio{path: path, pcm: mono}, nil
}

// frame copies frame frameIndex into pcm; past the end it loops if loop,
// else fills silence. It reports whether the frame is all zeros, the way ACS
// flags silence.
func (w *wavAudio) frame(pcm []byte, frameIndex int, loop bool) bool {
	off := frameIndex * len(pcm)
	if loop {
		off %= len(w.pcm)
	}
	if off >= len(w.pcm) {
		clear(pcm)
		return true
	}
	n := copy(pcm, w.pcm[off:])
	for n < len(pcm) {
		if !loop {
			clear(pcm[n:])
			break
		}
		n += copy(pcm[n:], w.pcm)
	}
	for _, b := range pcm {
		if b != 0 {
			return false
		}
	}
	return true
}

// frames is how many frames of size bytes the file fills.
func (w *wavAudio) frames(size int) int { return (len(w.pcm) + size - 1) / size }

// writeWAV writes 16-bit mono PCM as a WAV file (used by tests and examples).
func writeWAV(w io.Writer, rate int, pcm []byte) error {
	if len(pcm)%2 != 0 {
		return errors.New("odd PCM length")
	}
	h := make([]byte, 44)
	copy(h, "RIFF")
	binary.LittleEndian.PutUint32(h[4:], uint32(36+len(pcm)))
	copy(h[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(h[16:], 16)
	binary.LittleEndian.PutUint16(h[20:], 1)
	binary.LittleEndian.PutUint16(h[22:], 1)
	binary.LittleEndian.PutUint32(h[24:], uint32(rate))
	binary.LittleEndian.PutUint32(h[28:], uint32(rate*2))
	binary.LittleEndian.PutUint16(h[32:], 2)
	binary.LittleEndian.PutUint16(h[34:], 16)
	copy(h[36:], "data")
	binary.LittleEndian.PutUint32(h[40:], uint32(len(pcm)))
	if _, err := w.Write(h); err != nil {
		return err
	}
	_, err := w.Write(pcm)
	return err
}
