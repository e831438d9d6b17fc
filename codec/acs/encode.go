package acs

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
)

// The encoders below write inbound ACS messages, the way ACS sends them: what
// a fake ACS (audiofan sim, tests) needs. Their output parses with Parser.

// ACSTimestampLayout is how the encoders write timestamps: RFC 3339 in UTC
// with microseconds (ACS usually sends milliseconds; the receiver takes 0 to 9
// fractional digits, and the finer time lets a simulator measure latency).
const ACSTimestampLayout = "2006-01-02T15:04:05.000000Z"

// AppendAudioMetadata appends an AudioMetadata message for 16-bit mono PCM.
func AppendAudioMetadata(dst []byte, subscriptionID string, sampleRate int) []byte {
	dst = append(dst, `{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":`...)
	dst = appendJSONString(dst, subscriptionID)
	dst = append(dst, `,"encoding":"PCM","sampleRate":`...)
	dst = strconv.AppendInt(dst, int64(sampleRate), 10)
	dst = append(dst, `,"channels":1,"length":`...)
	dst = strconv.AppendInt(dst, int64(sampleRate/50*2), 10)
	return append(dst, `}}`...)
}

// AppendAudioData appends an AudioData message. An empty participant
// leaves participantRawID out, as ACS does for mixed audio.
func AppendAudioData(dst []byte, ts time.Time, participant string, pcm []byte, silent bool) []byte {
	dst = append(dst, `{"kind":"AudioData","audioData":{"timestamp":"`...)
	dst = ts.UTC().AppendFormat(dst, ACSTimestampLayout)
	dst = append(dst, '"')
	if participant != "" {
		dst = append(dst, `,"participantRawID":`...)
		dst = appendJSONString(dst, participant)
	}
	dst = append(dst, `,"data":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, pcm)
	dst = append(dst, `","silent":`...)
	dst = strconv.AppendBool(dst, silent)
	return append(dst, `}}`...)
}

// AppendDtmf appends a DtmfData message.
func AppendDtmf(dst []byte, ts time.Time, participant, tone string) []byte {
	dst = append(dst, `{"kind":"DtmfData","dtmfData":{"data":`...)
	dst = appendJSONString(dst, tone)
	dst = append(dst, `,"timestamp":"`...)
	dst = ts.UTC().AppendFormat(dst, ACSTimestampLayout)
	dst = append(dst, '"')
	if participant != "" {
		dst = append(dst, `,"participantRawID":`...)
		dst = appendJSONString(dst, participant)
	}
	return append(dst, `}}`...)
}

// EncodeTranscriptionMetadata returns the first message of a transcription socket.
func EncodeTranscriptionMetadata(subscriptionID, callConnectionID, correlationID, locale string) []byte {
	b, _ := json.Marshal(map[string]any{"kind": "TranscriptionMetadata", "transcriptionMetadata": map[string]any{
		"subscriptionId": subscriptionID, "locale": locale, "callConnectionId": callConnectionID, "correlationId": correlationID}})
	return b
}

// EncodeTranscriptionData returns a TranscriptionData message; a negative
// duration (call or word) is left out, as early services did.
func EncodeTranscriptionData(t TranscriptionData) []byte {
	words := make([]map[string]any, len(t.Words))
	for i, w := range t.Words {
		words[i] = map[string]any{"text": w.Text, "offset": w.Offset}
		if w.Duration >= 0 {
			words[i]["duration"] = w.Duration
		}
	}
	status := "Intermediate"
	if t.Final {
		status = "Final"
	}
	body := map[string]any{"text": t.Text, "format": t.Format, "confidence": t.Confidence, "offset": t.Offset,
		"words": words, "resultStatus": status}
	if t.Duration >= 0 {
		body["duration"] = t.Duration
	}
	if t.Participant != "" {
		body["participantRawID"] = t.Participant
	}
	b, _ := json.Marshal(map[string]any{"kind": "TranscriptionData", "transcriptionData": body})
	return b
}

// appendJSONString appends s as a JSON string; ids are nearly always plain
// ASCII, which is copied as it is.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
