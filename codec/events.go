package codec

import (
	"fmt"
	"time"
)

// The roles' event sources (the last token of calls.<call>.events.<source>)
// and the event types they emit.
const (
	SourceRecording  = "recording"
	SourceAnalytics  = "analytics"
	SourceModeration = "moderation"

	EventRecording = "recording" // a call's files, once it is recorded
	EventProgress  = "progress"  // analytics while the call goes on
	EventSummary   = "summary"   // analytics once the call is over
	EventHit       = "hit"       // a moderation rule that hit
	// EventParked: a role stopped working on a call that kept failing; its
	// messages wait on the bus and the call is re-driven from there (data:
	// reason, error, applied: the stream sequence applied up to).
	EventParked = "parked"
	// EventPartial: a role rebuilt a call (a takeover, a re-drive) from the
	// stream after its retention had removed the call's start; its output
	// misses that span (data: reason, firstSeq and resumedSeq, the stream
	// sequences of the call's first message and of the first one left,
	// missingFrom and missingTo, when they were stored).
	EventPartial = "partial"
)

// Recording is the data of a recording event: the files a call was
// recorded to. An Event carries it as a map with these keys (EventData),
// so other languages read it as the README documents it.
type Recording struct {
	Reason     string          `msgpack:"reason" json:"reason"` // ended or idle
	SampleRate int             `msgpack:"sampleRate" json:"sampleRate"`
	Start      time.Time       `msgpack:"start" json:"start"` // capture time of the call's first frame
	DurationMs int64           `msgpack:"durationMs" json:"durationMs"`
	Files      []RecordingFile `msgpack:"files" json:"files"` // none for a call without audio
}

// RecordingFile is one file of a recording.
type RecordingFile struct {
	Name        string `msgpack:"name" json:"name"`
	Participant string `msgpack:"participant" json:"participant"` // raw id; "" for mixed audio, the mix and the outbound track
	Mix         bool   `msgpack:"mix" json:"mix"`
	Outbound    bool   `msgpack:"outbound" json:"outbound"`
	Path        string `msgpack:"path" json:"path"`     // under AUDIOFAN_DATA_DIR; "" when not on disk
	Object      string `msgpack:"object" json:"object"` // <bucket>/<call token>/<name> (Object Store), a blob store's URL of the file (contract 1.1); "" when in neither
	Bytes       int64  `msgpack:"bytes" json:"bytes"`
	SHA256      string `msgpack:"sha256" json:"sha256"`
	DurationMs  int64  `msgpack:"durationMs" json:"durationMs"`
	Frames      int    `msgpack:"frames" json:"frames"`
	Duplicates  int    `msgpack:"duplicates" json:"duplicates"`
	Gaps        int    `msgpack:"gaps" json:"gaps"`
	Cut         int    `msgpack:"cut" json:"cut"`
}

// Analysis is the data of an analytics event: the call's figures so far
// (progress) or in all (summary).
type Analysis struct {
	Final            bool                  `msgpack:"final" json:"final"`
	Reason           string                `msgpack:"reason,omitempty" json:"reason,omitempty"` // the summary's: ended or idle
	DurationMs       int64                 `msgpack:"durationMs" json:"durationMs"`
	Participants     []ParticipantAnalysis `msgpack:"participants" json:"participants"`
	OvertalkMs       int64                 `msgpack:"overtalkMs" json:"overtalkMs"`
	OvertalkCount    int64                 `msgpack:"overtalkCount" json:"overtalkCount"`
	DeadAirMs        int64                 `msgpack:"deadAirMs" json:"deadAirMs"`
	DeadAirCount     int64                 `msgpack:"deadAirCount" json:"deadAirCount"`
	LongestDeadAirMs int64                 `msgpack:"longestDeadAirMs" json:"longestDeadAirMs"`
}

// ParticipantAnalysis is one participant's figures.
type ParticipantAnalysis struct {
	Participant              string  `msgpack:"participant" json:"participant"`
	TalkMs                   int64   `msgpack:"talkMs" json:"talkMs"`
	SilenceMs                int64   `msgpack:"silenceMs" json:"silenceMs"`
	TalkShare                float64 `msgpack:"talkShare" json:"talkShare"`
	Turns                    int     `msgpack:"turns" json:"turns"`
	LongestMonologueMs       int64   `msgpack:"longestMonologueMs" json:"longestMonologueMs"`
	SpeechLevelDbfs          float64 `msgpack:"speechLevelDbfs" json:"speechLevelDbfs"`
	PeakDbfs                 float64 `msgpack:"peakDbfs" json:"peakDbfs"`
	ClippedFrames            int     `msgpack:"clippedFrames" json:"clippedFrames"`
	Level                    string  `msgpack:"level" json:"level"` // ok, silent, low or high
	Frames                   int     `msgpack:"frames" json:"frames"`
	VadSpeechAcsSilentFrames int     `msgpack:"vadSpeechAcsSilentFrames" json:"vadSpeechAcsSilentFrames"`
	AcsSpeechVadSilentFrames int     `msgpack:"acsSpeechVadSilentFrames" json:"acsSpeechVadSilentFrames"`
	AcsAgreement             float64 `msgpack:"acsAgreement" json:"acsAgreement"`
}

// Hit is the data of a moderation hit.
type Hit struct {
	Rule       string `msgpack:"rule" json:"rule"`
	Kind       string `msgpack:"kind" json:"kind"`
	Action     string `msgpack:"action" json:"action"`
	CallTimeMs int64  `msgpack:"callTimeMs" json:"callTimeMs"` // audio: from the call's first frame; transcripts: ACS's offset
	// Evidence depends on the rule's kind (a map of a level and a duration,
	// clipped frames, silence, a talk share, or transcript text with its
	// matches): shown, never interpreted, so any value is kept as it came.
	Evidence any `msgpack:"evidence" json:"evidence"`
}

// EventData turns a typed event body (Recording, Analysis, Hit) into the
// map an Event carries: the keys of the body's msgpack tags, so the wire
// stays what the contract documents and every consumer reads the same
// names the producer wrote.
func EventData(body any) (map[string]any, error) {
	b, err := Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("event data: %w", err)
	}
	var m map[string]any
	if err := Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("event data: %w", err)
	}
	return m, nil
}

// DecodeEventData reads an Event's data into a typed body.
func DecodeEventData(data map[string]any, body any) error {
	b, err := Marshal(data)
	if err != nil {
		return fmt.Errorf("event data: %w", err)
	}
	if err := Unmarshal(b, body); err != nil {
		return fmt.Errorf("event data: %w", err)
	}
	return nil
}

// NewEvent is an Event of type typ whose data is body (EventData).
func NewEvent(typ string, body any) (Event, error) {
	data, err := EventData(body)
	if err != nil {
		return Event{}, err
	}
	return Event{Type: typ, Data: data}, nil
}
