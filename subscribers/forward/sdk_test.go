package forward_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// Every message the forwarder sends parses with Microsoft's own Call
// Automation SDK (StreamingData.parse of @azure/communication-call-automation,
// pinned in tools/acs-sdk-check), and reads as what the call sent: unmixed
// 24 kHz audio with each frame's timestamp, participant, silence and PCM,
// DTMF, and transcription; and mixed 16 kHz audio, whose frames name no
// participant. make test sets AUDIOFAN_ACS_SDK_CHECK after installing it.
func TestForwardSDKParses(t *testing.T) {
	check := os.Getenv("AUDIOFAN_ACS_SDK_CHECK")
	if check == "" {
		t.Skip("AUDIOFAN_ACS_SDK_CHECK is not set: make test installs the SDK (make acs-sdk) and sets it")
	}
	for _, tc := range []struct {
		name  string
		rate  int
		parts []string
	}{
		{"unmixed 24 kHz", 24000, []string{"8:acs:7f3e2a-alice", "4:+14255550199"}},
		{"mixed 16 kHz", 16000, []string{""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			a := newTarget(t)
			r.forwarder(a.url("#name=agent&kinds=audio,dtmf,transcript"), nil)
			id := "8:acs:sdk-" + tc.name[:5]
			h := map[string][]string{"x-ms-call-connection-id": {id}}
			ws, _, err := websocket.DefaultDialer.Dial(r.rcv.URL(""), h)
			if err != nil {
				t.Fatal(err)
			}
			c := &acsCall{id: id, ws: ws}
			c.send(acs.AppendAudioMetadata(nil, "sub-sdk", tc.rate))
			bytesPerFrame := tc.rate / 50 * 2
			frameOf := func(p, i int) []byte {
				b := bytes.Repeat(pcm(p, i), 2)[:bytesPerFrame]
				return b
			}
			const n = 40
			for i := range n {
				for p, part := range tc.parts {
					c.send(acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), part, frameOf(p, i), i%9 == 0))
				}
			}
			c.send(acs.AppendDtmf(nil, t0.Add(time.Second), "4:+14255550199", "7"))
			// Transcription comes on a socket of its own, so its order
			// against the audio is the bus's: open it once the audio is
			// through.
			conformance.WaitFor(t, "the audio at the target", func() bool {
				s := a.all()
				return len(s) == 1 && len(s[0].messages()) >= 2+n*len(tc.parts)
			})
			tr, _, err := websocket.DefaultDialer.Dial(r.rcv.URL(""), h)
			if err != nil {
				t.Fatal(err)
			}
			_ = tr.WriteMessage(websocket.TextMessage, acs.EncodeTranscriptionMetadata("tsub", id, "corr", "en-US"))
			_ = tr.WriteMessage(websocket.TextMessage, acs.EncodeTranscriptionData(acs.TranscriptionData{Text: "hello there", Format: "display",
				Confidence: 0.9, Offset: 1, Duration: 2, Participant: "4:+14255550199", Final: true}))
			// The call ends when all its sockets have: close the audio one
			// once the transcript is through, or the call may be over first.
			conformance.WaitFor(t, "the transcript at the target", func() bool {
				return len(a.all()[0].messages()) >= 4+n*len(tc.parts)
			})
			_ = tr.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
			c.hangUp()
			conformance.WaitFor(t, "the target's socket closed", func() bool {
				s := a.all()
				if len(s) != 1 {
					return false
				}
				select {
				case <-s[0].closed:
					return true
				default:
					return false
				}
			})
			msgs := a.all()[0].messages()
			file := filepath.Join(t.TempDir(), "sent.jsonl")
			if err := os.WriteFile(file, append(bytes.Join(msgs, []byte("\n")), '\n'), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("node", check, file).CombinedOutput()
			if err != nil {
				t.Fatalf("the SDK refused what was sent: %v\n%s", err, out)
			}
			type parsed struct {
				Kind, SubscriptionID, Encoding, Data, Timestamp, Participant, Text string
				SampleRate, Channels                                               int
				IsSilent                                                           bool
			}
			var got []parsed
			for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
				var p parsed
				if err := json.Unmarshal(line, &p); err != nil {
					t.Fatalf("%v: %s", err, line)
				}
				got = append(got, p)
			}
			if len(got) != len(msgs) {
				t.Fatalf("%d messages sent, the SDK read %d", len(msgs), len(got))
			}
			if m := got[0]; m.Kind != "AudioMetadata" || m.SampleRate != tc.rate || m.Channels != 1 || m.Encoding != "PCM" || m.SubscriptionID != "sub-sdk" {
				t.Errorf("metadata as the SDK reads it: %+v", m)
			}
			frames, dtmf, transcripts := 0, 0, 0
			for _, m := range got[1:] {
				switch m.Kind {
				case "AudioData":
					i, p := frames/len(tc.parts), frames%len(tc.parts)
					pcm, err := base64.StdEncoding.DecodeString(m.Data)
					ts, terr := time.Parse(time.RFC3339Nano, m.Timestamp)
					if err != nil || terr != nil || !bytes.Equal(pcm, frameOf(p, i)) || !ts.Equal(t0.Add(time.Duration(i)*20*time.Millisecond)) ||
						m.Participant != tc.parts[p] || m.IsSilent != (i%9 == 0) {
						t.Fatalf("frame %d as the SDK reads it: %+v (%v, %v)", frames, m, err, terr)
					}
					frames++
				case "DtmfData":
					dtmf++
					if m.Data != "7" {
						t.Errorf("DTMF %+v", m)
					}
				case "TranscriptionData":
					transcripts++
					if m.Text != "hello there" || m.Participant != "4:+14255550199" {
						t.Errorf("transcript %+v", m)
					}
				}
			}
			if frames != n*len(tc.parts) || dtmf != 1 || transcripts != 1 {
				t.Errorf("%d frames, %d DTMF, %d transcripts, want %d, 1, 1", frames, dtmf, transcripts, n*len(tc.parts))
			}
		})
	}
}
