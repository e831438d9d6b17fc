package acs

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

func TestACSEncodersParse(t *testing.T) {
	var p Parser
	var in Inbound
	ts := time.Date(2025, 3, 14, 9, 26, 53, 589_123_000, time.UTC)
	parse := func(msg []byte) {
		t.Helper()
		if err := p.Parse(msg, &in); err != nil {
			t.Fatalf("%s: %v", msg, err)
		}
	}

	parse(AppendAudioMetadata(nil, "sub-1", 24000))
	if in.Kind != KindAudioMetadata || in.AudioMetadata != (AudioMetadata{"sub-1", "PCM", 24000, 1, 960}) {
		t.Errorf("metadata %+v", in.AudioMetadata)
	}
	for _, part := range []string{"", "4:+14255550123", "odd \"id\"\n\x01é"} {
		pcm := pcmOf(640)
		parse(AppendAudioData(nil, ts, part, pcm, true))
		a := in.AudioData
		if in.Kind != KindAudioData || !a.Timestamp.Equal(ts) || string(a.Participant) != part || !bytes.Equal(a.PCM, pcm) || !a.Silent {
			t.Errorf("audio for %q: %+v", part, a)
		}
	}
	parse(AppendDtmf(nil, ts, "4:+1", "#"))
	if in.Kind != KindDtmfData || in.Dtmf.Tone != "#" || in.Dtmf.Participant != "4:+1" || !in.Dtmf.Timestamp.Equal(ts) {
		t.Errorf("dtmf %+v", in.Dtmf)
	}
	parse(EncodeTranscriptionMetadata("s", "call", "corr", "en-US"))
	if in.TranscriptionMetadata.CallConnectionID != "call" || in.TranscriptionMetadata.CorrelationID != "corr" {
		t.Errorf("transcription metadata %+v", in.TranscriptionMetadata)
	}
	td := TranscriptionData{Text: "hi there", Format: "display", Confidence: 0.5, Offset: 1234567890123456789, Duration: -1,
		Words: []Word{{"hi", 1234567890123456789, 100}, {"there", 1234567890123456889, -1}}, Participant: "8:acs:x", Final: true}
	parse(EncodeTranscriptionData(td))
	if !reflect.DeepEqual(in.TranscriptionData, td) {
		t.Errorf("transcription\n got %+v\nwant %+v", in.TranscriptionData, td)
	}
}
