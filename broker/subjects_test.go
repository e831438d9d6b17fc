package broker

import (
	"errors"
	"testing"
)

func TestSubjectsRoundTrip(t *testing.T) {
	s := Published{Prefix: "calls"}
	for subject, want := range map[string]SubjectInfo{
		s.Audio("c1", "4_3A_2B1"):       {Call: "c1", CallToken: "c1", Kind: KindAudio, Participant: "4:+1", ParticipantToken: "4_3A_2B1"},
		s.Audio("c1", "_mixed"):         {Call: "c1", CallToken: "c1", Kind: KindAudio, ParticipantToken: "_mixed"},
		s.Transcript("c_2E1", "_mixed"): {Call: "c.1", CallToken: "c_2E1", Kind: KindTranscript, ParticipantToken: "_mixed"},
		s.Dtmf("c1", "x"):               {Call: "c1", CallToken: "c1", Kind: KindDtmf, Participant: "x", ParticipantToken: "x"},
		s.Lifecycle("c1"):               {Call: "c1", CallToken: "c1", Kind: KindLifecycle},
		s.Events("c1", "analytics"):     {Call: "c1", CallToken: "c1", Kind: KindEvents, Source: "analytics"},
		s.Outbound("c1"):                {Call: "c1", CallToken: "c1", Kind: KindOutbound},
	} {
		got, err := s.Parse(subject)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", subject, got, err, want)
		}
	}
	for _, bad := range []string{"calls", "calls.c1", "other.c1.lifecycle", "calls.c1.audio", "calls.c1.lifecycle.x", "calls.c1.video.x"} {
		if _, err := s.Parse(bad); !errors.Is(err, ErrNotOurSubject) {
			t.Errorf("Parse(%q) err = %v", bad, err)
		}
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"64KiB": 64 << 10, "10GiB": 10 << 30, "500MB": 500e6, "123": 123, "-1": -1, " 2 MiB ": 2 << 20} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err != nil || b != want {
			t.Errorf("%q -> %d, %v", in, b, err)
		}
	}
	for _, in := range []string{"", "lots", "1.5GiB", "99999999999TiB"} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	if ByteSize(64<<10).String() != "64KiB" || ByteSize(1000).String() != "1000" {
		t.Error(ByteSize(64 << 10).String())
	}
}
