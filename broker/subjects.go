package broker

import (
	"errors"
	"fmt"
	"strings"

	"github.com/audiofan/audiofan/codec"
)

// Kind is a subject's kind: the token after the call's, which says what its
// messages are. (Not an ACS message's kind, acs.Kind, nor an outbound
// payload's, codec.OutboundKind, nor a moderation rule's.)
type Kind string

// The subject kinds.
const (
	KindLifecycle  Kind = "lifecycle"
	KindAudio      Kind = "audio"
	KindTranscript Kind = "transcript"
	KindDtmf       Kind = "dtmf"
	KindEvents     Kind = "events"
	KindOutbound   Kind = "outbound"
)

// ErrNotOurSubject is returned by Subjects.Parse for a subject outside the scheme.
var ErrNotOurSubject = errors.New("subject outside the audiofan scheme")

// Published builds and parses the subjects of the contract as published:
// <prefix>.<call>.<kind>[.<participant or source>]. It is all a publisher
// needs (StreamRef.Published), and knows nothing of partitions.
type Published struct {
	Prefix string
}

// Subjects is the bus's whole scheme: the published subjects, and how they
// are stored, <prefix>.<partition>.<call>.<kind>[...]. Only the bus knows
// its partitions, so a Subjects comes from a Layout (Bus.Subjects,
// StreamConfig.Subjects, ReadSubjects), never from a stream's name: a
// scheme without its partition count would put every call in partition 0.
type Subjects struct {
	Published
	// The bus's partitions and whether it is mapped are the layout's
	// (Layout.Subjects, SubjectsOf): a scheme cannot be given a partition
	// count of its own, and one without (the zero Subjects) partitions
	// nothing.
	partitions int
	mapped     bool
}

// Partitions is how many partitions the bus spreads calls over; 0 for a
// scheme not read from a bus.
func (s Subjects) Partitions() int { return s.partitions }

// Mapped says whether the server's account mapping, not the stream,
// inserts the partition token (a sharded bus): core NATS subscribers then
// see the stored form too (Live).
func (s Subjects) Mapped() bool { return s.mapped }

// Audio is the subject of a participant's frames; the tokens are already encoded.
func (s Published) Audio(callTok, partTok codec.Token) string {
	return s.Prefix + "." + string(callTok) + "." + string(KindAudio) + "." + string(partTok)
}

// Transcript is the subject of a participant's transcripts.
func (s Published) Transcript(callTok, partTok codec.Token) string {
	return s.Prefix + "." + string(callTok) + "." + string(KindTranscript) + "." + string(partTok)
}

// Dtmf is the subject of a participant's DTMF tones.
func (s Published) Dtmf(callTok, partTok codec.Token) string {
	return s.Prefix + "." + string(callTok) + "." + string(KindDtmf) + "." + string(partTok)
}

// Lifecycle is the subject of a call's started/ended messages.
func (s Published) Lifecycle(callTok codec.Token) string {
	return s.Prefix + "." + string(callTok) + "." + string(KindLifecycle)
}

// Events is the subject a subscriber role reports on.
func (s Published) Events(callTok codec.Token, source string) string {
	return s.Prefix + "." + string(callTok) + "." + string(KindEvents) + "." + source
}

// Outbound is the subject that speaks into a call.
func (s Published) Outbound(callTok codec.Token) string {
	return s.Prefix + "." + string(callTok) + "." + string(KindOutbound)
}

// All matches every subject of the scheme: what the stream stores.
func (s Published) All() string { return s.Prefix + ".>" }

// SubjectInfo is what a subject says: the decoded call id, the kind, and the
// decoded participant id ("" for mixed) or the event source.
type SubjectInfo struct {
	Call        string // the raw id
	CallToken   codec.Token
	Kind        Kind
	Participant string // the raw id; "" with ParticipantToken MixedToken
	// ParticipantToken is set for audio, transcript and DTMF subjects.
	ParticipantToken codec.Token
	Source           string
	// Partitioned is set when the subject was in the stored, partitioned
	// form (ParseStored).
	Partitioned bool
}

// Parse reads a subject of the scheme as published (what core NATS
// subscribers see); ParseStored reads what a stream consumer sees.
func (s Published) Parse(subject string) (SubjectInfo, error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".")
	if !ok {
		return SubjectInfo{}, fmt.Errorf("%w: %q", ErrNotOurSubject, subject)
	}
	return parseRest(subject, rest)
}

// parseRest reads rest, the tokens of subject after the prefix (and the
// partition, for a stored one): <call>.<kind>[.<participant or source>].
func parseRest(subject, rest string) (SubjectInfo, error) {
	toks := strings.Split(rest, ".")
	if len(toks) < 2 {
		return SubjectInfo{}, fmt.Errorf("%w: %q", ErrNotOurSubject, subject)
	}
	call, err := codec.DecodeToken(codec.Token(toks[0]))
	if err != nil {
		return SubjectInfo{}, fmt.Errorf("subject %q: call: %w", subject, err)
	}
	info := SubjectInfo{Call: call, CallToken: codec.Token(toks[0]), Kind: Kind(toks[1])}
	switch info.Kind {
	case KindLifecycle, KindOutbound:
		if len(toks) != 2 {
			return SubjectInfo{}, fmt.Errorf("%w: %q", ErrNotOurSubject, subject)
		}
	case KindAudio, KindTranscript, KindDtmf:
		if len(toks) != 3 {
			return SubjectInfo{}, fmt.Errorf("%w: %q", ErrNotOurSubject, subject)
		}
		info.ParticipantToken = codec.Token(toks[2])
		if info.Participant, err = codec.DecodeToken(info.ParticipantToken); err != nil {
			return SubjectInfo{}, fmt.Errorf("subject %q: participant: %w", subject, err)
		}
	case KindEvents:
		if len(toks) != 3 {
			return SubjectInfo{}, fmt.Errorf("%w: %q", ErrNotOurSubject, subject)
		}
		info.Source = toks[2]
	default:
		return SubjectInfo{}, fmt.Errorf("%w: kind %q", ErrNotOurSubject, info.Kind)
	}
	return info, nil
}
