package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// wavAudio is a WAV file's audio as 16-bit mono PCM at the call's rate.
type wavAudio struct {
	path string
	pcm  []byte
}

// readWAV loads a WAV file of 16-bit PCM, mono or stereo (averaged to mono),
// and resamples it linearly to rate if it has another one. Anything else is
// refused with an error that says what the file is.
func readWAV(path string, rate int) (*wavAudio, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 12 || string(data[0:4]) != "RIFF" || string(data[8:12]) != "WAVE" {
		return nil, fmt.Errorf("%s: not a RIFF/WAVE file", path)
	}
	var format, channels, bits uint16
	var srcRate uint32
	var samples []byte
	haveFmt := false
	for off := 12; off+8 <= len(data); {
		id, size := string(data[off:off+4]), int(binary.LittleEndian.Uint32(data[off+4:]))
		body := data[off+8:]
		if size > len(body) {
			if id != "data" {
				return nil, fmt.Errorf("%s: chunk %q is cut short", path, id)
			}
			size = len(body) &^ 1 // a streamed file may not know its data length
		}
		body = body[:size]
		switch id {
		case "fmt ":
			if size < 16 {
				return nil, fmt.Errorf("%s: fmt chunk too short", path)
			}
			format, channels = binary.LittleEndian.Uint16(body), binary.LittleEndian.Uint16(body[2:])
			srcRate, bits = binary.LittleEndian.Uint32(body[4:]), binary.LittleEndian.Uint16(body[14:])
			if format == 0xFFFE && size >= 26 { // WAVE_FORMAT_EXTENSIBLE: the sub-format says
				format = binary.LittleEndian.Uint16(body[24:])
			}
			haveFmt = true
		case "data":
			samples = body
		}
		off += 8 + size + size&1
	}
	switch {
	case !haveFmt || samples == nil:
		return nil, fmt.Errorf("%s: no fmt or data chunk", path)
	case format != 1 || bits != 16:
		return nil, fmt.Errorf("%s: %d-bit audio in format %d; want 16-bit PCM", path, bits, format)
	case channels != 1 && channels != 2:
		return nil, fmt.Errorf("%s: %d channels; want mono or stereo", path, channels)
	case srcRate < 4000 || srcRate > 192000:
		return nil, fmt.Errorf("%s: sample rate %d", path, srcRate)
	}
	mono := toMono(samples, int(channels))
	if int(srcRate) != rate {
		mono = resample(mono, int(srcRate), rate)
	}
	if len(mono) == 0 {
		return nil, fmt.Errorf("%s: no audio", path)
	}
	return &wavAudio{path: path, pcm: mono}, nil
}

func toMono(samples []byte, channels int) []byte {
	if channels == 1 {
		return samples[:len(samples)&^1]
	}
	n := len(samples) / 4
	out := make([]byte, 2*n)
	for i := 0; i < n; i++ {
		l := int32(int16(binary.LittleEndian.Uint16(samples[4*i:])))
		r := int32(int16(binary.LittleEndian.Uint16(samples[4*i+2:])))
		binary.LittleEndian.PutUint16(out[2*i:], uint16(int16((l+r)/2)))
	}
	return out
}

// resample converts 16-bit mono PCM between rates by linear interpolation:
// plain, but enough for a load generator (the original rate round-trips
// bit-exact, since it is not resampled at all).
func resample(pcm []byte, from, to int) []byte {
	n := len(pcm) / 2
	m := int(int64(n) * int64(to) / int64(from))
	out := make([]byte, 2*m)
	at := func(i int) float64 { return float64(int16(binary.LittleEndian.Uint16(pcm[2*min(i, n-1):]))) }
	for j := 0; j < m; j++ {
		pos := float64(j) * float64(from) / float64(to)
		i := int(pos)
		frac := pos - float64(i)
		binary.LittleEndian.PutUint16(out[2*j:], uint16(int16(at(i)*(1-frac)+at(i+1)*frac)))
	}
	return out
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
