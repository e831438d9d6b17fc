package recording

import (
	"encoding/binary"
)

// AppendWAV appends a WAV file of 16-bit mono PCM at rate to dst: the
// canonical 44-byte RIFF header, then the samples.
func AppendWAV(dst []byte, rate int, pcm []byte) []byte {
	h := wavHeader(rate, len(pcm))
	return append(append(dst, h[:]...), pcm...)
}

func wavHeader(rate, dataLen int) [44]byte {
	var h [44]byte
	copy(h[0:], "RIFF")
	binary.LittleEndian.PutUint32(h[4:], uint32(36+dataLen))
	copy(h[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(h[16:], 16) // fmt chunk size
	binary.LittleEndian.PutUint16(h[20:], 1)  // PCM
	binary.LittleEndian.PutUint16(h[22:], 1)  // mono
	binary.LittleEndian.PutUint32(h[24:], uint32(rate))
	binary.LittleEndian.PutUint32(h[28:], uint32(rate*2)) // bytes per second
	binary.LittleEndian.PutUint16(h[32:], 2)              // block align
	binary.LittleEndian.PutUint16(h[34:], 16)             // bits per sample
	copy(h[36:], "data")
	binary.LittleEndian.PutUint32(h[40:], uint32(dataLen))
	return h
}
