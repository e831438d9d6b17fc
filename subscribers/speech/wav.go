package speech

import (
	"encoding/binary"
	"fmt"
	"os"
)

// LoadWAV reads a WAV file of 16-bit PCM, mono or stereo (averaged to mono),
// and returns its samples (16-bit little-endian mono) and their rate.
// Anything else is refused with an error that says what the file is.
func LoadWAV(path string) (pcm []byte, rate int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	return ParseWAV(data, path)
}

// ParseWAV reads a WAV file's bytes as LoadWAV does; name is the file's name
// in errors.
func ParseWAV(data []byte, path string) (pcm []byte, rate int, err error) {
	if len(data) < 12 || (string(data[0:4]) != "RIFF" && string(data[0:4]) != "RF64") || string(data[8:12]) != "WAVE" {
		return nil, 0, fmt.Errorf("%s: not a RIFF/WAVE or RF64 file", path)
	}
	dataSize := -1 // from an RF64 file's ds64 chunk
	var format, channels, bits uint16
	var srcRate uint32
	var samples []byte
	haveFmt := false
	for off := 12; off+8 <= len(data); {
		id, size := string(data[off:off+4]), int(binary.LittleEndian.Uint32(data[off+4:]))
		body := data[off+8:]
		if id == "data" && dataSize >= 0 && uint32(size) == 0xFFFFFFFF {
			size = dataSize
		}
		if size > len(body) {
			if id != "data" {
				return nil, 0, fmt.Errorf("%s: chunk %q is cut short", path, id)
			}
			size = len(body) &^ 1 // a streamed file may not know its data length
		}
		body = body[:size]
		switch id {
		case "fmt ":
			if size < 16 {
				return nil, 0, fmt.Errorf("%s: fmt chunk too short", path)
			}
			format, channels = binary.LittleEndian.Uint16(body), binary.LittleEndian.Uint16(body[2:])
			srcRate, bits = binary.LittleEndian.Uint32(body[4:]), binary.LittleEndian.Uint16(body[14:])
			if format == 0xFFFE && size >= 26 { // WAVE_FORMAT_EXTENSIBLE: the sub-format says
				format = binary.LittleEndian.Uint16(body[24:])
			}
			haveFmt = true
		case "ds64":
			if size >= 16 && string(data[0:4]) == "RF64" {
				dataSize = int(min(binary.LittleEndian.Uint64(body[8:]), uint64(len(data))))
			}
		case "data":
			samples = body
		}
		off += 8 + size + size&1
	}
	switch {
	case !haveFmt || samples == nil:
		return nil, 0, fmt.Errorf("%s: no fmt or data chunk", path)
	case format != 1 || bits != 16:
		return nil, 0, fmt.Errorf("%s: %d-bit audio in format %d; want 16-bit PCM", path, bits, format)
	case channels != 1 && channels != 2:
		return nil, 0, fmt.Errorf("%s: %d channels; want mono or stereo", path, channels)
	case srcRate < 4000 || srcRate > 192000:
		return nil, 0, fmt.Errorf("%s: sample rate %d", path, srcRate)
	}
	mono := toMono(samples, int(channels))
	if len(mono) == 0 {
		return nil, 0, fmt.Errorf("%s: no audio", path)
	}
	return mono, int(srcRate), nil
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

// Resample converts 16-bit mono PCM between rates by linear interpolation:
// plain, but enough for prompts and a load generator.
func Resample(pcm []byte, from, to int) []byte {
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
