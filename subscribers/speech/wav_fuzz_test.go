package speech_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/audiofan/audiofan/subscribers/speech"
)

func wavBytes(channels, rate, bits int, samples []byte) []byte {
	var b bytes.Buffer
	le := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }
	b.WriteString("RIFF")
	le(uint32(36 + len(samples)))
	b.WriteString("WAVEfmt ")
	le(uint32(16))
	le(uint16(1))
	le(uint16(channels))
	le(uint32(rate))
	le(uint32(rate * channels * bits / 8))
	le(uint16(channels * bits / 8))
	le(uint16(bits))
	b.WriteString("data")
	le(uint32(len(samples)))
	b.Write(samples)
	return b.Bytes()
}

// FuzzParseWAV reads arbitrary bytes as a WAV file (prompts and sim voices
// come from files people supply): a refusal, or mono 16-bit samples at a
// sane rate, never a panic or a runaway allocation.
func FuzzParseWAV(f *testing.F) {
	f.Add(wavBytes(1, 16000, 16, make([]byte, 640)))
	f.Add(wavBytes(2, 24000, 16, make([]byte, 1280)))
	f.Add(wavBytes(1, 8000, 8, make([]byte, 100)))
	f.Add([]byte("RIFF\x00\x00\x00\x00WAVEdata\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pcm, rate, err := speech.ParseWAV(data, "fuzz.wav")
		if err != nil {
			return
		}
		if len(pcm) == 0 || len(pcm)%2 != 0 || len(pcm) > len(data) || rate < 4000 || rate > 192000 {
			t.Fatalf("accepted %d bytes of PCM at %d Hz from %d bytes", len(pcm), rate, len(data))
		}
	})
}
