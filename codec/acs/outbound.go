package acs

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
)

// The outbound messages audiofan sends to ACS in bidirectional mode. ACS
// matches them case-insensitively (its own SDK helpers disagree on casing);
// we always emit the PascalCase kind and camelCase body documented by
// Microsoft.

// AppendOutboundAudio appends the JSON message that plays pcm (16-bit PCM in
// the call's format) into the call.
func AppendOutboundAudio(dst, pcm []byte) []byte {
	dst = append(dst, `{"kind":"AudioData","audioData":{"data":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, pcm)
	return append(dst, `"}}`...)
}

// OutboundKind is the kind of an outbound message, as ACS names it.
type OutboundKind string

// The outbound kinds.
const (
	OutboundAudioData OutboundKind = "AudioData" // play audio into the call
	OutboundStopAudio OutboundKind = "StopAudio" // drop what is queued for playing
)

// StopAudioMessage is the JSON message that drops audio ACS has queued for
// playing (barge-in).
const StopAudioMessage = `{"kind":"StopAudio","stopAudio":{}}`

// Outbound is an outbound message as ACS would read it.
type Outbound struct {
	Kind OutboundKind
	PCM  []byte
}

// ParseOutbound reads an outbound message in any of the casings the
// official helpers emit (JS: kind "audioData" with a spurious "stopAudio":{};
// .NET and Python: "Kind"/"AudioData"/"Data"). It is what a fake ACS needs.
func ParseOutbound(msg []byte) (Outbound, error) {
	var env struct {
		Kind      string `json:"kind"`
		AudioData *struct {
			Data string `json:"data"`
		} `json:"audioData"`
	}
	if err := json.Unmarshal(msg, &env); err != nil {
		return Outbound{}, fmt.Errorf("%w: outbound: %v", ErrMalformed, err)
	}
	switch {
	case strings.EqualFold(env.Kind, "AudioData"):
		if env.AudioData == nil {
			return Outbound{}, fmt.Errorf("%w: outbound audioData missing", ErrFieldType)
		}
		pcm, err := base64.StdEncoding.DecodeString(env.AudioData.Data)
		if err != nil {
			return Outbound{}, fmt.Errorf("%w: outbound: %v", ErrBase64, err)
		}
		return Outbound{Kind: OutboundAudioData, PCM: pcm}, nil
	case strings.EqualFold(env.Kind, "StopAudio"):
		return Outbound{Kind: OutboundStopAudio}, nil
	}
	return Outbound{}, fmt.Errorf("%w: outbound kind %q", ErrFieldType, env.Kind)
}
