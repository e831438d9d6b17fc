package recording

import (
	"encoding/binary"
	"math"
)

// maxRIFFData is the most PCM a RIFF file's 32-bit sizes can describe.
const maxRIFFData = math.MaxUint32 - 36

// wavHeader is the header of a file of dataLen bytes of 16-bit mono PCM at
// rate: the canonical 44-byte RIFF one, or past 4 GiB an RF64 one (EBU Tech
// 3306: its ds64 chunk holds the 64-bit sizes, the 32-bit ones say
// 0xFFFFFFFF), which broadcast tools, ffmpeg and sox read.
func wavHeader(rate int, dataLen int64) []byte {
	if dataLen > maxRIFFData {
		return rf64Header(rate, dataLen)
	}
	h := make([]byte, 44)
	copy(h[0:], "RIFF")
	binary.LittleEndian.PutUint32(h[4:], uint32(36+dataLen))
	copy(h[8:], "WAVE")
	putFmt(h[12:], rate)
	copy(h[36:], "data")
	binary.LittleEndian.PutUint32(h[40:], uint32(dataLen))
	return h
}

func rf64Header(rate int, dataLen int64) []byte {
	h := make([]byte, 80)
	copy(h[0:], "RF64")
	binary.LittleEndian.PutUint32(h[4:], math.MaxUint32)
	copy(h[8:], "WAVEds64")
	binary.LittleEndian.PutUint32(h[16:], 28)
	binary.LittleEndian.PutUint64(h[20:], uint64(72+dataLen)) // RIFF size: the file less its first 8 bytes
	binary.LittleEndian.PutUint64(h[28:], uint64(dataLen))
	binary.LittleEndian.PutUint64(h[36:], uint64(dataLen/2)) // samples
	binary.LittleEndian.PutUint32(h[44:], 0)                 // no table
	putFmt(h[48:], rate)
	copy(h[72:], "data")
	binary.LittleEndian.PutUint32(h[76:], math.MaxUint32)
	return h
}

// putFmt writes a fmt chunk of 16-bit mono PCM at rate (24 bytes).
func putFmt(h []byte, rate int) {
	copy(h[0:], "fmt ")
	binary.LittleEndian.PutUint32(h[4:], 16) // chunk size
	binary.LittleEndian.PutUint16(h[8:], 1)  // PCM
	binary.LittleEndian.PutUint16(h[10:], 1) // mono
	binary.LittleEndian.PutUint32(h[12:], uint32(rate))
	binary.LittleEndian.PutUint32(h[16:], uint32(rate*2)) // bytes per second
	binary.LittleEndian.PutUint16(h[20:], 2)              // block align
	binary.LittleEndian.PutUint16(h[22:], 16)             // bits per sample
}
