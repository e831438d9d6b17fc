package receiver_test

import (
	"bytes"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
)

// sentFrame is what a test client sent, to compare with what was stored.
type sentFrame struct {
	participant string
	ts          time.Time
	pcm         []byte
	silent      bool
}

type callPlan struct {
	name         string
	header       http.Header
	query        string
	subscription string
	wantCall     string
	rate         int
	participants []string // "" = mixed
	frames       int
	dtmf         bool
}

func TestEndToEnd(t *testing.T) {
	h := newHarness(t, nil)
	t0 := time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)
	plans := []callPlan{
		{name: "mixed 16k by header", header: http.Header{"X-Ms-Call-Connection-Id": {"0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f"}, "X-Ms-Call-Correlation-Id": {"corr-1"}},
			subscription: "sub-1", wantCall: "0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f", rate: 16000, participants: []string{""}, frames: 60, dtmf: true},
		{name: "unmixed 24k by query", query: "?callId=" + "call.with*odd%20id", subscription: "sub-2", wantCall: "call.with*odd id", rate: 24000,
			participants: []string{"4:+14255550123", "8:acs:res_user-1", "8:orgid:0f6c2e1a"}, frames: 40},
		{name: "by subscription id", subscription: "sub-3-only", wantCall: "sub-3-only", rate: 16000, participants: []string{"8:acs:a", "28:orgid:bot"}, frames: 25},
	}
	var mu sync.Mutex
	sent := map[string][]sentFrame{} // call -> frames in send order
	var wg sync.WaitGroup
	for _, p := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialACS(t, h.wsURL(p.query), p.header)
			c.audioMetadata(p.subscription, p.rate)
			size := p.rate / 50 * 2
			var mine []sentFrame
			for i := 0; i < p.frames; i++ {
				for pi, part := range p.participants {
					f := sentFrame{part, t0.Add(time.Duration(i) * 20 * time.Millisecond), frameOf(pi, i, size), i%7 == 3}
					c.audio(f.ts, f.participant, f.pcm, f.silent)
					mine = append(mine, f)
				}
				if p.dtmf && i == 10 {
					c.sendRaw(`{"kind":"DtmfData","dtmfData":{"data":"3","participantRawID":"4:+14255550123"}}`)
				}
			}
			c.sendRaw(`{"kind":"SomethingNew","somethingNew":{"x":1}}`)
			c.close()
			mu.Lock()
			sent[p.wantCall] = mine
			mu.Unlock()
		}()
	}
	// A transcription socket for the first call, named only by its metadata.
	tc := dialACS(t, h.wsURL(""), nil)
	tc.sendRaw(`{"kind":"TranscriptionMetadata","transcriptionMetadata":{"subscriptionId":"tsub","locale":"en-US","callConnectionId":"0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f","correlationId":"corr-1"}}`)
	tc.sendRaw(`{"kind":"TranscriptionData","transcriptionData":{"text":"Hello there","format":"display","confidence":0.93,"offset":1234567890123456789,"words":[{"text":"Hello","offset":1234567890123456789,"duration":3000000},{"text":"there","offset":1234567890126456789}],"participantRawID":"4:+14255550123","resultStatus":"Final"}}`)
	tc.sendRaw(`{"kind":"TranscriptionData","transcriptionData":{"text":"uh","format":"display","confidence":0.4,"offset":1,"duration":2,"words":[],"resultStatus":"Intermediate"}}`)
	tc.close()
	wg.Wait()

	msgs := h.readStream(len(plans) + 1)

	// Every message carries a unique <connection>/<n> id, n from 1 per socket.
	seen := map[string]bool{}
	perConn := map[string]int{}
	for _, m := range msgs {
		if seen[m.msgID] {
			t.Fatalf("Nats-Msg-Id %q stored twice", m.msgID)
		}
		seen[m.msgID] = true
		conn, n, ok := strings.Cut(m.msgID, "/")
		if !ok || len(conn) != 32 {
			t.Fatalf("Nats-Msg-Id %q is not <connection>/<n>", m.msgID)
		}
		perConn[conn]++
		if want := fmt.Sprint(perConn[conn]); n != want {
			t.Fatalf("Nats-Msg-Id %q: n = %s, want %s (stream order)", m.msgID, n, want)
		}
	}

	for _, p := range plans {
		t.Run(p.name, func(t *testing.T) {
			callTok := codec.EncodeToken(p.wantCall)
			var lcs []*codec.Lifecycle
			var frames []*codec.Frame
			var dtmf []*codec.Dtmf
			for _, m := range msgs {
				if m.info.Call != p.wantCall {
					continue
				}
				stored := h.sc.Subjects().Stored(callTok)
				if !strings.HasPrefix(m.subject, stored+".") {
					t.Errorf("subject %q lacks the call token %q", m.subject, callTok)
				}
				switch v := m.payload.(type) {
				case *codec.Lifecycle:
					if v.Stream == codec.StreamAudio {
						lcs = append(lcs, v)
					}
				case *codec.Frame:
					if m.info.Participant != v.Participant || m.subject != stored+".audio."+string(codec.EncodeToken(v.Participant)) {
						t.Errorf("frame of %q on subject %q", v.Participant, m.subject)
					}
					frames = append(frames, v)
				case *codec.Dtmf:
					dtmf = append(dtmf, v)
				}
			}
			want := sent[p.wantCall]
			if len(frames) != len(want) {
				t.Fatalf("stored %d frames, sent %d", len(frames), len(want))
			}
			// Per participant, stored order is send order, seq counts from 1.
			next := map[string]int{}
			byPart := map[string][]sentFrame{}
			for _, f := range want {
				byPart[f.participant] = append(byPart[f.participant], f)
			}
			for _, f := range frames {
				i := next[f.Participant]
				next[f.Participant]++
				w := byPart[f.Participant][i]
				if f.V != 1 || f.Call != p.wantCall || f.Seq != uint64(i+1) || !f.Timestamp.Equal(w.ts) || f.SampleRate != p.rate || f.Channels != 1 ||
					f.Encoding != "pcm_s16le" || f.Silent != w.silent || !bytes.Equal(f.Data, w.pcm) || time.Since(f.ReceivedAt) > time.Minute {
					t.Fatalf("frame %d of %q: got %+v", i, f.Participant, *f)
				}
			}
			if len(lcs) != 2 || lcs[0].Type != "started" || lcs[1].Type != "ended" {
				t.Fatalf("lifecycle: %+v", lcs)
			}
			st, en := lcs[0], lcs[1]
			wantFrames := map[string]uint64{}
			for part, fs := range byPart {
				wantFrames[part] = uint64(len(fs))
			}
			if st.Connection != en.Connection || st.Receiver != "test-receiver" || st.SubscriptionID != p.subscription || st.SampleRate != p.rate ||
				st.Channels != 1 || st.Encoding != "pcm_s16le" || st.Call != p.wantCall || en.Reason != "peer" || !reflect.DeepEqual(en.Frames, wantFrames) || len(st.Frames) != 0 {
				t.Errorf("lifecycle started %+v ended %+v, want frames %v", st, en, wantFrames)
			}
			if p.header.Get("X-Ms-Call-Correlation-Id") != st.CorrelationID {
				t.Errorf("correlation id %q", st.CorrelationID)
			}
			// started is the socket's first stored message, ended its last.
			var first, last string
			for _, m := range msgs {
				if strings.HasPrefix(m.msgID, st.Connection+"/") {
					if first == "" {
						first = m.msgID
					}
					last = m.msgID
				}
			}
			if first != st.Connection+"/1" || !strings.HasSuffix(last, fmt.Sprintf("/%d", len(want)+len(dtmf)+2)) {
				t.Errorf("first %s last %s", first, last)
			}
			if p.dtmf {
				if len(dtmf) != 1 || dtmf[0].Tone != "3" || dtmf[0].Participant != "4:+14255550123" || dtmf[0].Timestamp.IsZero() {
					t.Errorf("dtmf: %+v", dtmf)
				}
			}
		})
	}

	t.Run("transcription", func(t *testing.T) {
		var ts []*codec.Transcript
		var lcs []*codec.Lifecycle
		for _, m := range msgs {
			switch v := m.payload.(type) {
			case *codec.Transcript:
				ts = append(ts, v)
				if want := h.sc.Subjects().Stored("0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f") + ".transcript." + string(codec.EncodeToken(v.Participant)); m.subject != want {
					t.Errorf("subject %q want %q", m.subject, want)
				}
			case *codec.Lifecycle:
				if v.Stream == codec.StreamTranscription {
					lcs = append(lcs, v)
				}
			}
		}
		if len(ts) != 2 {
			t.Fatalf("%d transcripts", len(ts))
		}
		a, b := ts[0], ts[1]
		wantWords := []codec.Word{{Text: "Hello", Offset: 1234567890123456789, Duration: 3000000}, {Text: "there", Offset: 1234567890126456789, Duration: -1}}
		if a.Text != "Hello there" || a.Offset != 1234567890123456789 || a.Duration != -1 || !a.Final || a.Confidence != 0.93 ||
			a.Participant != "4:+14255550123" || a.Format != "display" || !reflect.DeepEqual(a.Words, wantWords) {
			t.Errorf("transcript %+v", a)
		}
		if b.Final || b.Participant != "" || b.Duration != 2 || b.Words == nil || len(b.Words) != 0 {
			t.Errorf("intermediate transcript %+v", b)
		}
		if len(lcs) != 2 || lcs[0].Call != "0f6c2e1a-5b7d-4c39-9e1f-2a8b7c6d5e4f" || lcs[0].CorrelationID != "corr-1" || lcs[0].SubscriptionID != "tsub" ||
			lcs[0].Encoding != "" || lcs[1].Type != "ended" {
			t.Errorf("transcription lifecycle %+v", lcs)
		}
	})

	if got := h.counter("audiofan_receiver_messages_total", "kind", "Unknown"); got != float64(len(plans)) {
		t.Errorf("unknown kinds counted %v", got)
	}
}
