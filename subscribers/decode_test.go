package subscribers

import (
	"errors"
	"testing"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
)

func TestDecode(t *testing.T) {
	subj := broker.Subjects{Published: broker.Published{Prefix: "calls"}}
	data, err := codec.Marshal(&codec.Frame{V: 1, Call: "4:+1", Participant: "8:acs:x", Seq: 9, Data: []byte{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(subj, subj.Audio(codec.EncodeToken("4:+1"), codec.EncodeToken("8:acs:x")), data)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := m.Payload.(*codec.Frame)
	if !ok || f.Seq != 9 || m.Info.Call != "4:+1" || m.Info.Participant != "8:acs:x" || m.Info.Kind != broker.KindAudio {
		t.Fatalf("got %+v %+v", m.Info, m.Payload)
	}
	if _, err := Decode(subj, "other.x.audio.y", data); !errors.Is(err, broker.ErrNotOurSubject) {
		t.Errorf("foreign subject: %v", err)
	}
	if _, err := Decode(subj, "calls.c.lifecycle", []byte{0xc1}); err == nil {
		t.Error("undecodable payload accepted")
	}
	if _, err := Decode(subj, "calls.c_ZZ.lifecycle", data); !errors.Is(err, codec.ErrBadToken) {
		t.Errorf("bad token: %v", err)
	}
}
