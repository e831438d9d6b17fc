package subscribers

import (
	"fmt"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

// Message is a bus message decoded by its subject.
type Message struct {
	Subject string
	Info    broker.SubjectInfo
	// Payload is a *codec.Frame, *codec.Transcript, *codec.Dtmf,
	// *codec.Lifecycle, *codec.Event or *codec.Outbound.
	Payload any
}

// Decode reads a message of the stream, its subject as the stream stores it
// (partitioned, or as published). A subject outside the scheme or a payload
// that does not decode is an error: a consumer should refuse it for good
// rather than retry.
func Decode(subj broker.Subjects, subject string, data []byte) (Message, error) {
	info, err := subj.ParseStored(subject)
	if err != nil {
		return Message{}, err
	}
	var v any
	switch info.Kind {
	case broker.KindAudio:
		f := &codec.Frame{}
		if err := codec.UnmarshalFrame(data, f); err != nil {
			return Message{}, fmt.Errorf("%s: %w", subject, err)
		}
		return Message{Subject: subject, Info: info, Payload: f}, nil
	case broker.KindTranscript:
		v = &codec.Transcript{}
	case broker.KindDtmf:
		v = &codec.Dtmf{}
	case broker.KindLifecycle:
		v = &codec.Lifecycle{}
	case broker.KindEvents:
		v = &codec.Event{}
	case broker.KindOutbound:
		v = &codec.Outbound{}
	}
	if err := codec.Unmarshal(data, v); err != nil {
		return Message{}, fmt.Errorf("%s: %w", subject, err)
	}
	return Message{Subject: subject, Info: info, Payload: v}, nil
}
