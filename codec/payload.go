package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Version is the payload version every message carries in its "v" key. It
// changes only with an incompatible change of a payload (keys may be added
// without one).
const Version = 1

// EncodingPCM16 is the only audio encoding on the bus: signed 16-bit
// little-endian PCM, as ACS sends it.
const EncodingPCM16 = "pcm_s16le"

// Lifecycle types and streams.
const (
	LifecycleStarted    = "started"
	LifecycleEnded      = "ended"
	StreamAudio         = "audio"
	StreamTranscription = "transcription"
)

// Frame is one AudioData frame on calls.<call>.audio.<participant>.
type Frame struct {
	V           int    `msgpack:"v" json:"v"`
	Call        string `msgpack:"call" json:"call"`
	Participant string `msgpack:"participant" json:"participant"`
	// Seq counts the participant's frames on one socket from 1. It is given
	// when the frame is received, so a gap means a frame was dropped.
	Seq        uint64    `msgpack:"seq" json:"seq"`
	Timestamp  time.Time `msgpack:"timestamp" json:"timestamp"`
	ReceivedAt time.Time `msgpack:"receivedAt" json:"receivedAt"`
	SampleRate int       `msgpack:"sampleRate" json:"sampleRate"`
	Channels   int       `msgpack:"channels" json:"channels"`
	Encoding   string    `msgpack:"encoding" json:"encoding"`
	Silent     bool      `msgpack:"silent" json:"silent"`
	Data       []byte    `msgpack:"data" json:"data"`
}

// Word is one recognised word of a transcript, with times in 100 ns ticks
// (Duration -1 when unknown).
type Word struct {
	Text     string `msgpack:"text" json:"text"`
	Offset   int64  `msgpack:"offset" json:"offset"`
	Duration int64  `msgpack:"duration" json:"duration"`
}

// ErrMalformed marks a payload that is not one well-formed MessagePack value
// of its type: a consumer refuses it for good rather than retry.
var ErrMalformed = errors.New("malformed payload")

// Transcript is one TranscriptionData result on calls.<call>.transcript.<participant>.
type Transcript struct {
	V           int     `msgpack:"v" json:"v"`
	Call        string  `msgpack:"call" json:"call"`
	Participant string  `msgpack:"participant" json:"participant"`
	Text        string  `msgpack:"text" json:"text"`
	Format      string  `msgpack:"format" json:"format"`
	Confidence  float64 `msgpack:"confidence" json:"confidence"`
	// Offset and Duration are in 100 ns ticks; Duration is -1 when unknown.
	Offset     int64     `msgpack:"offset" json:"offset"`
	Duration   int64     `msgpack:"duration" json:"duration"`
	Words      []Word    `msgpack:"words" json:"words"`
	Final      bool      `msgpack:"final" json:"final"`
	Sentiment  string    `msgpack:"sentiment" json:"sentiment"`
	Language   string    `msgpack:"language" json:"language"`
	ReceivedAt time.Time `msgpack:"receivedAt" json:"receivedAt"`
}

// Dtmf is one tone on calls.<call>.dtmf.<participant>.
type Dtmf struct {
	V           int       `msgpack:"v" json:"v"`
	Call        string    `msgpack:"call" json:"call"`
	Participant string    `msgpack:"participant" json:"participant"`
	Tone        string    `msgpack:"tone" json:"tone"`
	Timestamp   time.Time `msgpack:"timestamp" json:"timestamp"`
	ReceivedAt  time.Time `msgpack:"receivedAt" json:"receivedAt"`
}

// Lifecycle marks the start and end of one socket of a call on calls.<call>.lifecycle.
type Lifecycle struct {
	V              int       `msgpack:"v" json:"v"`
	Call           string    `msgpack:"call" json:"call"`
	Type           string    `msgpack:"type" json:"type"`
	Stream         string    `msgpack:"stream" json:"stream"`
	Connection     string    `msgpack:"connection" json:"connection"`
	Receiver       string    `msgpack:"receiver" json:"receiver"`
	SubscriptionID string    `msgpack:"subscriptionId" json:"subscriptionId"`
	CorrelationID  string    `msgpack:"correlationId" json:"correlationId"`
	SampleRate     int       `msgpack:"sampleRate" json:"sampleRate"`
	Channels       int       `msgpack:"channels" json:"channels"`
	Encoding       string    `msgpack:"encoding" json:"encoding"`
	At             time.Time `msgpack:"at" json:"at"`
	// Reason and Frames are set on "ended": Frames maps each participant raw id
	// ("" for mixed) to the frames stored for it.
	Reason string            `msgpack:"reason" json:"reason"`
	Frames map[string]uint64 `msgpack:"frames" json:"frames"`
}

// Event is what a subscriber reports on calls.<call>.events.<source>.
type Event struct {
	V           int            `msgpack:"v" json:"v"`
	Call        string         `msgpack:"call" json:"call"`
	Source      string         `msgpack:"source" json:"source"`
	Type        string         `msgpack:"type" json:"type"`
	Participant string         `msgpack:"participant" json:"participant"`
	At          time.Time      `msgpack:"at" json:"at"`
	Data        map[string]any `msgpack:"data" json:"data"`
}

// Outbound asks the receiver holding a call's socket to play audio into the
// call or to stop what is playing (calls.<call>.outbound).
type Outbound struct {
	V    int          `msgpack:"v" json:"v"`
	Kind OutboundKind `msgpack:"kind" json:"kind"`
	Data []byte       `msgpack:"data" json:"data"`
}

// OutboundKind says what an Outbound message asks of the call: play its
// audio (OutboundKindAudio) or drop what is queued (OutboundKindStop).
type OutboundKind string

// The outbound kinds.
const (
	OutboundKindAudio OutboundKind = "audio"
	OutboundKindStop  OutboundKind = "stop"
)

// Marshal encodes a payload as MessagePack. Frames take the hand-written
// AppendFrame path; every other payload goes through msgpack/v5.
func Marshal(v any) ([]byte, error) {
	if f, ok := v.(*Frame); ok {
		return AppendFrame(make([]byte, 0, FrameSize(f)), f), nil
	}
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("msgpack encode %T: %w", v, err)
	}
	return b, nil
}

// Unmarshal decodes a MessagePack payload into v (a pointer to a payload type).
func Unmarshal(b []byte, v any) (err error) {
	if !wellFormed(b) {
		return fmt.Errorf("%w: msgpack decode %T: not one well-formed value", ErrMalformed, v)
	}
	// msgpack/v5 panics on some hostile input (nil for a time.Time field):
	// bad input must be an error, never a crash.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: msgpack decode %T: %v", ErrMalformed, v, r)
		}
	}()
	if err := msgpack.Unmarshal(b, v); err != nil {
		return fmt.Errorf("msgpack decode %T: %w", v, err)
	}
	return nil
}

// FrameSize is the exact length of f's encoding, so the caller can allocate once.
func FrameSize(f *Frame) int {
	return 1 + // map header
		2 + uintSize(uint64(f.V)) +
		5 + strSize(len(f.Call)) +
		12 + strSize(len(f.Participant)) +
		4 + 9 +
		10 + timeSize(f.Timestamp) +
		11 + timeSize(f.ReceivedAt) +
		11 + uintSize(uint64(f.SampleRate)) +
		9 + uintSize(uint64(f.Channels)) +
		9 + strSize(len(f.Encoding)) +
		7 + 1 +
		5 + binSize(len(f.Data))
}

// AppendFrame appends the MessagePack encoding of f to dst. It produces what
// msgpack/v5 would for the struct, byte for byte (keys in field order,
// compact ints, full-width uint64, timestamps as extension -1) without reflection or allocation. Negative V,
// SampleRate or Channels are written as 0: they cannot occur in a valid frame.
func AppendFrame(dst []byte, f *Frame) []byte {
	dst = append(dst, 0x80|11)
	dst = appendStr(dst, "v")
	dst = appendUint(dst, nonNeg(f.V))
	dst = appendStr(dst, "call")
	dst = appendStr(dst, f.Call)
	dst = appendStr(dst, "participant")
	dst = appendStr(dst, f.Participant)
	dst = appendStr(dst, "seq")
	dst = binary.BigEndian.AppendUint64(append(dst, 0xcf), f.Seq) // msgpack/v5 writes uint64 fields in full
	dst = appendStr(dst, "timestamp")
	dst = appendTime(dst, f.Timestamp)
	dst = appendStr(dst, "receivedAt")
	dst = appendTime(dst, f.ReceivedAt)
	dst = appendStr(dst, "sampleRate")
	dst = appendUint(dst, nonNeg(f.SampleRate))
	dst = appendStr(dst, "channels")
	dst = appendUint(dst, nonNeg(f.Channels))
	dst = appendStr(dst, "encoding")
	dst = appendStr(dst, f.Encoding)
	dst = appendStr(dst, "silent")
	if f.Silent {
		dst = append(dst, 0xc3)
	} else {
		dst = append(dst, 0xc2)
	}
	dst = appendStr(dst, "data")
	return appendBin(dst, f.Data)
}

func nonNeg(v int) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}

func uintSize(v uint64) int {
	switch {
	case v <= 0x7f:
		return 1
	case v <= math.MaxUint8:
		return 2
	case v <= math.MaxUint16:
		return 3
	case v <= math.MaxUint32:
		return 5
	}
	return 9
}

func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), v)
}

func strSize(n int) int {
	switch {
	case n <= 31:
		return 1 + n
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	}
	return 5 + n
}

func appendStr(dst []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= 31:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, 0xd9, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xda), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xdb), uint32(n))
	}
	return append(dst, s...)
}

func binSize(n int) int {
	switch {
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	}
	return 5 + n
}

func appendBin(dst []byte, b []byte) []byte {
	n := len(b)
	switch {
	case n <= math.MaxUint8:
		dst = append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xc5), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xc6), uint32(n))
	}
	return append(dst, b...)
}

// timeSize and appendTime follow the MessagePack timestamp extension: 32-bit
// seconds, 64-bit (30-bit nanoseconds + 34-bit seconds) or 96-bit form.
func timeSize(t time.Time) int {
	secs := uint64(t.Unix())
	if secs>>34 == 0 {
		if (uint64(t.Nanosecond())<<34|secs)&0xffffffff00000000 == 0 {
			return 6
		}
		return 10
	}
	return 15
}

func appendTime(dst []byte, t time.Time) []byte {
	secs := uint64(t.Unix())
	if secs>>34 == 0 {
		data := uint64(t.Nanosecond())<<34 | secs
		if data&0xffffffff00000000 == 0 {
			return binary.BigEndian.AppendUint32(append(dst, 0xd6, 0xff), uint32(data))
		}
		return binary.BigEndian.AppendUint64(append(dst, 0xd7, 0xff), data)
	}
	dst = append(dst, 0xc7, 12, 0xff)
	dst = binary.BigEndian.AppendUint32(dst, uint32(t.Nanosecond()))
	return binary.BigEndian.AppendUint64(dst, secs)
}
