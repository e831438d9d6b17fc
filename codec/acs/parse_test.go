package acs

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// pcmOf returns n bytes of distinct, recognisable PCM.
func pcmOf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

func audioJSON(ts, participant string, pcm []byte, silent bool) string {
	return fmt.Sprintf(`{"kind":"AudioData","audioData":{"timestamp":%q,"participantRawID":%q,"data":%q,"silent":%v}}`,
		ts, participant, base64.StdEncoding.EncodeToString(pcm), silent)
}

func TestParseAudioData(t *testing.T) {
	pcm := pcmOf(640)
	want := time.Date(2025, 3, 14, 9, 26, 53, 589_000_000, time.UTC)
	for name, msg := range map[string]string{
		"documented": audioJSON("2025-03-14T09:26:53.589Z", "8:acs:6a1f", pcm, false),
		"reordered":  `{"audioData":{"silent":false,"data":"` + base64.StdEncoding.EncodeToString(pcm) + `","participantRawID":"8:acs:6a1f","timestamp":"2025-03-14T09:26:53.589Z"},"kind":"AudioData"}`,
		"whitespace and extras": " {\n \"kind\" : \"AudioData\", \"extra\": [1,{\"x\":2}], \"audioData\" : {\"timestamp\":\"2025-03-14T09:26:53.589Z\",\"participantRawID\":\"8:acs:6a1f\",\"data\":\"" +
			base64.StdEncoding.EncodeToString(pcm) + "\",\"silent\":false, \"newField\": {\"a\":1}} } ",
		"escaped slash": strings.ReplaceAll(audioJSON("2025-03-14T09:26:53.589Z", "8:acs:6a1f", pcm, false), "/", `\/`),
		"offset zone":   audioJSON("2025-03-14T10:26:53.589+01:00", "8:acs:6a1f", pcm, false),
		"pascal keys":   strings.Replace(strings.Replace(audioJSON("2025-03-14T09:26:53.589Z", "8:acs:6a1f", pcm, false), `"kind"`, `"Kind"`, 1), `"audioData"`, `"AudioData"`, 1),
	} {
		t.Run(name, func(t *testing.T) {
			var p Parser
			var in Inbound
			if err := p.Parse([]byte(msg), &in); err != nil {
				t.Fatal(err)
			}
			a := in.AudioData
			if in.Kind != KindAudioData || !a.Timestamp.Equal(want) || string(a.Participant) != "8:acs:6a1f" || !bytes.Equal(a.PCM, pcm) || a.Silent {
				t.Fatalf("got kind %v %+v", in.Kind, a)
			}
		})
	}
}

func TestParseAudioDataOptionalFields(t *testing.T) {
	var p Parser
	var in Inbound
	msg := `{"kind":"AudioData","audioData":{"data":"AAE=","silent":true}}`
	if err := p.Parse([]byte(msg), &in); err != nil {
		t.Fatal(err)
	}
	if !in.AudioData.Timestamp.IsZero() || len(in.AudioData.Participant) != 0 || !in.AudioData.Silent || !bytes.Equal(in.AudioData.PCM, []byte{0, 1}) {
		t.Fatalf("got %+v", in.AudioData)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want error
	}{
		{`{"kind":"AudioData"`, ErrMalformed},
		{`not json`, ErrMalformed},
		{`[1,2]`, ErrMalformed},
		{`"AudioData"`, ErrMalformed},
		{`{}`, ErrFieldType},
		{`{"kind":3}`, ErrFieldType},
		{`{"kind":"AudioData"}`, ErrFieldType},
		{`{"kind":"AudioData","audioData":null}`, ErrFieldType},
		{`{"kind":"AudioData","audioData":{"silent":false}}`, ErrFieldType},
		{`{"kind":"AudioData","audioData":{"data":12}}`, ErrFieldType},
		{`{"kind":"AudioData","audioData":{"data":"AAAA","silent":"no"}}`, ErrFieldType},
		{`{"kind":"AudioData","audioData":{"data":"!!!!"}}`, ErrBase64},
		{`{"kind":"AudioData","audioData":{"data":"AAA"}}`, ErrBase64},
		{`{"kind":"AudioData","audioData":{"data":"AA=="}}`, ErrPCMLength},
		{`{"kind":"AudioData","audioData":{"data":"AAAA","timestamp":"yesterday"}}`, ErrTimestamp},
		{`{"kind":"AudioData","audioData":{"data":"AAAA","timestamp":"2025-02-30T00:00:00Z"}}`, ErrTimestamp},
		{`{"kind":"AudioMetadata","audioMetadata":{"sampleRate":"16000"}}`, ErrFieldType},
		{`{"kind":"TranscriptionData","transcriptionData":{"offset":1.5}}`, ErrFieldType},
		{`{"kind":"TranscriptionData","transcriptionData":{"offset":99999999999999999999}}`, ErrFieldType},
		{`{"kind":"DtmfData","dtmfData":{}}`, ErrFieldType},
		{`{"kind":"TranscriptionMetadata","transcriptionMetadata":[]}`, ErrFieldType},
	} {
		var p Parser
		var in Inbound
		if err := p.Parse([]byte(tc.msg), &in); !errors.Is(err, tc.want) {
			t.Errorf("Parse(%s) err = %v, want %v", tc.msg, err, tc.want)
		}
	}
}

func TestParseOtherKinds(t *testing.T) {
	var p Parser
	parse := func(msg string) Inbound {
		t.Helper()
		var in Inbound
		if err := p.Parse([]byte(msg), &in); err != nil {
			t.Fatalf("Parse(%s): %v", msg, err)
		}
		return in
	}

	in := parse(`{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f","encoding":"PCM","sampleRate":24000,"channels":1,"length":960,"futureField":{"x":[1]}}}`)
	if want := (AudioMetadata{"0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f", "PCM", 24000, 1, 960}); in.Kind != KindAudioMetadata || in.AudioMetadata != want {
		t.Errorf("metadata: %v %+v", in.Kind, in.AudioMetadata)
	}

	in = parse(`{"kind":"DtmfData","dtmfData":{"data":"3","timestamp":"2025-03-14T09:26:53Z","participantRawID":"4:+14255550123"}}`)
	if in.Kind != KindDtmfData || in.Dtmf.Tone != "3" || in.Dtmf.Participant != "4:+14255550123" || in.Dtmf.Timestamp.Unix() != 1741944413 {
		t.Errorf("dtmf: %+v", in.Dtmf)
	}

	in = parse(`{"kind":"TranscriptionMetadata","transcriptionMetadata":{"subscriptionId":"not-a-guid","locale":"en-us","callConnectionId":"call-1","correlationId":"corr-1","speechRecognitionModelEndpointId":"ep","locales":"oops","enableSentimentAnalysis":true}}`)
	tm := in.TranscriptionMetadata
	if in.Kind != KindTranscriptionMetadata || tm.CallConnectionID != "call-1" || tm.CorrelationID != "corr-1" || tm.SpeechModelEndpointID != "ep" || tm.Locale != "en-us" || !tm.EnableSentimentAnalysis {
		t.Errorf("transcription metadata: %+v", tm)
	}

	in = parse(`{"kind":"TranscriptionData","transcriptionData":{"text":"Hello world","format":"display","confidence":0.98,"offset":9223372036854775000,"words":[{"text":"Hello","offset":9223372036854775000,"duration":2000000},{"text":"world","offset":9223372036854775100}],"participantRawID":"8:acs:x","resultStatus":"final","sentimentAnalysisResult":{"sentiment":"positive"},"languageIdentified":"en-US"}}`)
	want := TranscriptionData{Text: "Hello world", Format: "display", Confidence: 0.98, Offset: 9223372036854775000, Duration: -1,
		Words:       []Word{{"Hello", 9223372036854775000, 2000000}, {"world", 9223372036854775100, -1}},
		Participant: "8:acs:x", Final: true, Sentiment: "positive", Language: "en-US"}
	if in.Kind != KindTranscriptionData || !reflect.DeepEqual(in.TranscriptionData, want) {
		t.Errorf("transcription:\n got %+v\nwant %+v", in.TranscriptionData, want)
	}

	in = parse(`{"kind":"TranscriptionData","transcriptionData":{"text":"hm","resultStatus":"Intermediate","offset":1,"duration":2,"words":[]}}`)
	if in.TranscriptionData.Final || in.TranscriptionData.Duration != 2 || in.TranscriptionData.Words != nil {
		t.Errorf("intermediate: %+v", in.TranscriptionData)
	}

	in = parse(`{"kind":"SomethingNew","somethingNew":{"a":1}}`)
	if in.Kind != KindUnknown || in.KindName != "SomethingNew" {
		t.Errorf("unknown kind: %v %q", in.Kind, in.KindName)
	}
}

func TestParseTimestampForms(t *testing.T) {
	for _, s := range []string{"2025-03-14T09:26:53Z", "2025-03-14T09:26:53.5Z", "2025-03-14T09:26:53.123456789Z", "2025-03-14T11:26:53.589+02:00", "2024-02-29T23:59:59.999Z"} {
		got, err := ParseTimestamp([]byte(s))
		ref, _ := time.Parse(time.RFC3339Nano, s)
		if err != nil || !got.Equal(ref) || got.Location() != time.UTC {
			t.Errorf("ParseTimestamp(%q) = %v, %v; want %v", s, got, err, ref)
		}
	}
}

// FuzzParse checks that no input crashes the parser, and that the fast path
// agrees with the encoding/json reference on every message it accepts.
func FuzzParse(f *testing.F) {
	pcm := pcmOf(640)
	for _, s := range []string{
		audioJSON("2025-03-14T09:26:53.589Z", "8:acs:6a1f0c2e", pcm, false),
		audioJSON("2025-03-14T09:26:53Z", "", pcmOf(4), true),
		`{"kind":"AudioData","audioData":{"data":"AAAA"}}`,
		`{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f","encoding":"PCM","sampleRate":16000,"channels":1,"length":640}}`,
		`{"kind":"DtmfData","dtmfData":{"data":"3"}}`,
		`{"kind":"TranscriptionMetadata","transcriptionMetadata":{"subscriptionId":"x","locale":"en-US","callConnectionId":"c","correlationId":"d"}}`,
		`{"kind":"TranscriptionData","transcriptionData":{"text":"hi","format":"display","confidence":0.9,"offset":1234567890123456789,"duration":100,"words":[{"text":"hi","offset":1,"duration":2}],"participantRawID":"4:+1","resultStatus":"Final"}}`,
		`{"kind":"StopAudio","stopAudio":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		var fast, slow Parser
		var in, ref Inbound
		fastOK := fast.fastAudio(msg, &in.AudioData)
		slowErr := slow.parseSlow(msg, &ref)
		if !fastOK {
			return
		}
		if slowErr != nil || ref.Kind != KindAudioData {
			t.Fatalf("fast path accepted %q, reference says %v (kind %v)", msg, slowErr, ref.Kind)
		}
		a, b := in.AudioData, ref.AudioData
		if !a.Timestamp.Equal(b.Timestamp) || !bytes.Equal(a.Participant, b.Participant) || !bytes.Equal(a.PCM, b.PCM) || a.Silent != b.Silent {
			t.Fatalf("fast %+v != reference %+v for %q", a, b, msg)
		}
	})
}

// FuzzParseTimestamp checks the fast timestamp path against time.Parse.
func FuzzParseTimestamp(f *testing.F) {
	for _, s := range []string{"2025-03-14T09:26:53.589Z", "2024-02-29T00:00:00Z", "2025-03-14T09:26:53.123456789Z", "0000-01-01T00:00:00Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseTimestampFast([]byte(s))
		if !ok {
			return
		}
		ref, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || !ref.Equal(got) {
			t.Fatalf("fast parse of %q = %v, time.Parse = %v, %v", s, got, ref, err)
		}
	})
}

func FuzzParseOutbound(f *testing.F) {
	f.Add([]byte(AppendOutboundAudio(nil, pcmOf(8))))
	f.Add([]byte(StopAudioMessage))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, _ = ParseOutbound(msg)
	})
}

func TestOutboundACSForms(t *testing.T) {
	pcm := pcmOf(64)
	b64 := base64.StdEncoding.EncodeToString(pcm)
	for _, msg := range []string{
		string(AppendOutboundAudio(nil, pcm)),
		`{"kind":"audioData","audioData":{"data":"` + b64 + `","isSilent":false},"stopAudio":{}}`,
		`{"Kind":"AudioData","AudioData":{"Data":"` + b64 + `"},"StopAudio":null}`,
	} {
		got, err := ParseOutbound([]byte(msg))
		if err != nil || got.Kind != OutboundAudioData || !bytes.Equal(got.PCM, pcm) {
			t.Errorf("ParseOutbound(%s) = %+v, %v", msg, got, err)
		}
	}
	for _, msg := range []string{StopAudioMessage, `{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}`} {
		if got, err := ParseOutbound([]byte(msg)); err != nil || got.Kind != OutboundStopAudio {
			t.Errorf("ParseOutbound(%s) = %+v, %v", msg, got, err)
		}
	}
}

// FuzzDecodeBase64 checks the table decoder against encoding/base64: where
// it accepts, the bytes are the same.
func FuzzDecodeBase64(f *testing.F) {
	for _, s := range []string{base64.StdEncoding.EncodeToString(pcmOf(640)), "AAE=", "AB==", "AAAA", "AA\nA", "A=AA", "////"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		dst := make([]byte, len(src)/4*3)
		n, ok := decodeBase64(dst, src)
		ref, err := base64.StdEncoding.DecodeString(string(src))
		if ok && (err != nil || !bytes.Equal(dst[:n], ref)) {
			t.Fatalf("decodeBase64(%q) = %x, encoding/base64 = %x, %v", src, dst[:n], ref, err)
		}
		if !ok && err == nil && len(src) > 0 && len(src)%4 == 0 && !bytes.ContainsAny(src, "\r\n") {
			t.Fatalf("decodeBase64 refused %q, which encoding/base64 decodes", src)
		}
	})
}

func TestKindNames(t *testing.T) {
	for k, want := range []string{"Unknown", "AudioMetadata", "AudioData", "DtmfData", "TranscriptionMetadata", "TranscriptionData"} {
		if Kind(k).String() != want {
			t.Errorf("Kind(%d) = %q", k, Kind(k).String())
		}
	}
}
