package recording

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// File is a written recording file.
type File struct {
	Path   string
	Bytes  int64
	SHA256 string
}

// WriteWAV writes the WAV file atomically: to a temporary file in the same
// folder, synced, then renamed over path. A reader never sees half a file,
// and writing the same recording again replaces it whole.
func WriteWAV(path string, rate int, pcm []byte) (File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return File{}, fmt.Errorf("recording folder: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".rec-*")
	if err != nil {
		return File{}, fmt.Errorf("recording %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // gone after the rename; removed on failure
	sum := sha256.New()
	w := io.MultiWriter(tmp, sum)
	h := wavHeader(rate, len(pcm))
	_, err = w.Write(h[:])
	if err == nil {
		_, err = w.Write(pcm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return File{}, fmt.Errorf("recording %s: %w", path, err)
	}
	return File{Path: path, Bytes: int64(len(h) + len(pcm)), SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}
