package acs

// The receiver's whole decode path: ACS JSON in, a bus payload out.

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/vmihailenco/msgpack/v5"
)

var benchMsg = []byte(audioJSON("2025-03-14T09:26:53.589Z", "8:acs:6a1f0c2e-1111-2222-3333-444455556666_0000001a-2b3c", pcmOf(640), false))

// BenchmarkAudioFrameBaseline is the same work done the obvious way:
// encoding/json into a struct, encoding/base64, msgpack/v5 by reflection.
// BenchmarkAudioFrame is measured against it.
func BenchmarkAudioFrameBaseline(b *testing.B) {
	run := baselineFrame()
	b.SetBytes(int64(len(benchMsg)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		run(b, i)
	}
}

// BenchmarkAudioFrame is the receiver's hot path: parse, look the participant
// up in the socket's table (as the receiver does, to reuse its string), encode
// into one exactly sized buffer.
func BenchmarkAudioFrame(b *testing.B) {
	run := fastFrame()
	b.SetBytes(int64(len(benchMsg)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		run(b, i)
	}
}

// BenchmarkAudioFrameSpeedup runs both in alternating rounds, so that a noisy
// machine slows both alike, and reports how many times faster the hot path is.
func BenchmarkAudioFrameSpeedup(b *testing.B) {
	base, fast := baselineFrame(), fastFrame()
	const round = 2000
	var tBase, tFast time.Duration
	for b.Loop() {
		start := time.Now()
		for i := 0; i < round; i++ {
			base(b, i)
		}
		mid := time.Now()
		for i := 0; i < round; i++ {
			fast(b, i)
		}
		tBase, tFast = tBase+mid.Sub(start), tFast+time.Since(mid)
	}
	b.ReportMetric(float64(tBase)/float64(tFast), "x-faster")
	b.ReportMetric(float64(tBase.Nanoseconds())/float64(b.N*round), "baseline-ns/frame")
	b.ReportMetric(float64(tFast.Nanoseconds())/float64(b.N*round), "fast-ns/frame")
}

func baselineFrame() func(b *testing.B, i int) {
	type body struct {
		Timestamp        time.Time `json:"timestamp"`
		ParticipantRawID string    `json:"participantRawID"`
		Data             string    `json:"data"`
		Silent           bool      `json:"silent"`
	}
	var env struct {
		Kind      string `json:"kind"`
		AudioData body   `json:"audioData"`
	}
	now := time.Now()
	return func(b *testing.B, i int) {
		if err := json.Unmarshal(benchMsg, &env); err != nil {
			b.Fatal(err)
		}
		pcm, err := base64.StdEncoding.DecodeString(env.AudioData.Data)
		if err != nil {
			b.Fatal(err)
		}
		f := codec.Frame{V: codec.Version, Call: "call-1", Participant: env.AudioData.ParticipantRawID, Seq: uint64(i), Timestamp: env.AudioData.Timestamp,
			ReceivedAt: now, SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Silent: env.AudioData.Silent, Data: pcm}
		if _, err := msgpack.Marshal(&f); err != nil {
			b.Fatal(err)
		}
	}
}

func fastFrame() func(b *testing.B, i int) {
	var p Parser
	var in Inbound
	participants := map[string]string{}
	now := time.Now()
	return func(b *testing.B, i int) {
		if err := p.Parse(benchMsg, &in); err != nil {
			b.Fatal(err)
		}
		a := &in.AudioData
		part, ok := participants[string(a.Participant)]
		if !ok {
			part = string(a.Participant)
			participants[part] = part
		}
		f := codec.Frame{V: codec.Version, Call: "call-1", Participant: part, Seq: uint64(i), Timestamp: a.Timestamp,
			ReceivedAt: now, SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Silent: a.Silent, Data: a.PCM}
		buf := codec.AppendFrame(make([]byte, 0, codec.FrameSize(&f)), &f)
		if len(buf) == 0 {
			b.Fatal("empty")
		}
	}
}
