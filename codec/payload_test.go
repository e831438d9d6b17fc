package codec

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestAppendFrameMatchesMsgpack(t *testing.T) {
	long := string(bytes.Repeat([]byte("p"), 300))
	for _, f := range []Frame{
		{V: Version, Call: "c", Participant: "8:acs:x", Seq: 1, Timestamp: time.Date(2025, 3, 14, 9, 26, 53, 589_000_000, time.UTC),
			ReceivedAt: time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC), SampleRate: 16000, Channels: 1, Encoding: EncodingPCM16, Silent: true, Data: pcmOf(640)},
		{V: Version, Call: long, Participant: "", Seq: 1 << 40, Timestamp: time.Date(2600, 1, 1, 0, 0, 0, 1, time.UTC),
			ReceivedAt: time.Unix(1, 0).UTC(), SampleRate: 24000, Channels: 1, Encoding: EncodingPCM16, Data: pcmOf(70000)},
		{V: Version, Seq: 200, Data: []byte{}},
		{V: Version, Seq: 70000, Call: long[:40], Data: pcmOf(300)},
	} {
		got := AppendFrame(nil, &f)
		if len(got) != FrameSize(&f) {
			t.Errorf("FrameSize = %d, encoding has %d bytes", FrameSize(&f), len(got))
		}
		want, err := msgpack.Marshal(&f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("AppendFrame differs from msgpack/v5 for seq %d", f.Seq)
		}
		var back Frame
		if err := Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if !back.Timestamp.Equal(f.Timestamp) || !back.ReceivedAt.Equal(f.ReceivedAt) {
			t.Errorf("times: %v %v", back.Timestamp, back.ReceivedAt)
		}
		back.Timestamp, back.ReceivedAt, f.Timestamp, f.ReceivedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if len(back.Data) == 0 && len(f.Data) == 0 {
			back.Data, f.Data = nil, nil
		}
		if !reflect.DeepEqual(back, f) {
			t.Errorf("round trip:\n got %+v\nwant %+v", back, f)
		}
	}
}

// TestPayloadKeys pins the contract: every listed key is present, zero values
// included, under its documented name.
func TestPayloadKeys(t *testing.T) {
	for name, tc := range map[string]struct {
		v    any
		keys []string
	}{
		"Frame":      {&Frame{}, []string{"v", "call", "participant", "seq", "timestamp", "receivedAt", "sampleRate", "channels", "encoding", "silent", "data"}},
		"Transcript": {&Transcript{}, []string{"v", "call", "participant", "text", "format", "confidence", "offset", "duration", "words", "final", "sentiment", "language", "receivedAt"}},
		"Dtmf":       {&Dtmf{}, []string{"v", "call", "participant", "tone", "timestamp", "receivedAt"}},
		"Lifecycle":  {&Lifecycle{}, []string{"v", "call", "type", "stream", "connection", "receiver", "subscriptionId", "correlationId", "sampleRate", "channels", "encoding", "at", "reason", "frames"}},
		"Event":      {&Event{}, []string{"v", "call", "source", "type", "participant", "at", "data"}},
		"Outbound":   {&Outbound{}, []string{"v", "kind", "data"}},
	} {
		b, err := Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := msgpack.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(m) != len(tc.keys) {
			t.Errorf("%s has %d keys, want %d: %v", name, len(m), len(tc.keys), m)
		}
		for _, k := range tc.keys {
			if _, ok := m[k]; !ok {
				t.Errorf("%s lacks key %q", name, k)
			}
		}
	}
}

func TestTranscriptRoundTrip(t *testing.T) {
	in := Transcript{V: Version, Call: "c", Participant: "4:+1", Text: "héllo", Format: "display", Confidence: 0.5,
		Offset: 9223372036854775000, Duration: -1, Words: []Word{{"héllo", 9223372036854775000, -1}}, Final: true,
		ReceivedAt: time.Unix(1741944413, 5).UTC()}
	b, err := Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	var out Transcript
	if err := Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	out.ReceivedAt = out.ReceivedAt.UTC()
	if !reflect.DeepEqual(in, out) {
		t.Errorf("got %+v", out)
	}
}

// The hand-written frame decoder gives what msgpack/v5's reflective one
// gives, on any input: on the fast path and off it.
func FuzzUnmarshalFrame(f *testing.F) {
	f.Add(AppendFrame(nil, &Frame{V: 1, Call: "c", Participant: "p", Seq: 7, Timestamp: time.Unix(1700000000, 123),
		ReceivedAt: time.Unix(1700000000, 0), SampleRate: 16000, Channels: 1, Encoding: EncodingPCM16, Silent: true, Data: []byte{1, 2}}))
	f.Add(AppendFrame(nil, &Frame{}))
	f.Add(AppendFrame(nil, &Frame{Timestamp: time.Unix(1<<40, 5), Data: make([]byte, 300)}))
	if b, err := msgpack.Marshal(&Frame{V: 1, Seq: 3, SampleRate: 24000}); err == nil {
		f.Add(b)
	}
	f.Add([]byte{0x81, 0xa1, 'v', 0xff})
	// Found by the fuzzer: nil for a time field made msgpack/v5 panic; a
	// bin32 length of 4 GiB made it allocate that much.
	f.Add([]byte("\x8b\xa100\xab000000000000\xa3000\xcf00000000\xa9timestamp\xc0"))
	f.Add([]byte{0x81, 0xa4, 'd', 'a', 't', 'a', 0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast, slow Frame
		errFast := UnmarshalFrame(b, &fast)
		errSlow := Unmarshal(b, &slow) // msgpack/v5, a panic turned into an error
		if (errFast == nil) != (errSlow == nil) {
			t.Fatalf("fast err %v, reflective err %v", errFast, errSlow)
		}
		if errFast == nil && !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast %+v\nreflective %+v", fast, slow)
		}
	})
}

// pcmOf returns n bytes of distinct, recognisable PCM.
func pcmOf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}
