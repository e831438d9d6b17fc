package sim

import (
	"fmt"
	"io"
	"time"
)

// Summary is what a simulation did and, with verification, what was stored.
type Summary struct {
	Calls           int           `json:"calls"`
	CallsFailed     int           `json:"callsFailed"`
	Streams         int           `json:"streams"`
	Sockets         int           `json:"sockets"`
	FramesSent      uint64        `json:"framesSent"`
	Elapsed         time.Duration `json:"elapsedNs"`
	FramesPerSecond float64       `json:"framesPerSecond"`
	OutboundAudio   uint64        `json:"outboundAudio"`
	OutboundStop    uint64        `json:"outboundStop"`
	Errors          int           `json:"errors"`
	FirstErrors     []string      `json:"firstErrors,omitempty"`
	Verify          *Verification `json:"verify,omitempty"`
	// OK: every call ran without error and, if verified, everything sent
	// was stored exactly once and in order.
	OK bool `json:"ok"`
}

// Verification compares what was sent with what the stream holds.
type Verification struct {
	Streams           []StreamResult `json:"streams"`
	Sent              uint64         `json:"sent"`
	Stored            uint64         `json:"stored"`
	Missing           uint64         `json:"missing"`
	Duplicates        uint64         `json:"duplicates"`
	OutOfOrder        uint64         `json:"outOfOrder"`
	Unexpected        int            `json:"unexpectedStreams"`
	Undecodable       uint64         `json:"undecodable"`
	TranscriptsSent   uint64         `json:"transcriptsSent"`
	TranscriptsStored uint64         `json:"transcriptsStored"`
	DtmfSent          uint64         `json:"dtmfSent"`
	DtmfStored        uint64         `json:"dtmfStored"`
	Sockets           int            `json:"sockets"`
	EndedSockets      int            `json:"endedSockets"`
	LatencyP50ms      float64        `json:"latencyP50ms"`
	LatencyP99ms      float64        `json:"latencyP99ms"`
	LatencyMaxMS      float64        `json:"latencyMaxMs"`
	OK                bool           `json:"ok"`
}

// StreamResult is one participant stream (participant "" is mixed audio).
type StreamResult struct {
	Call        string `json:"call"`
	Participant string `json:"participant"`
	Sent        uint64 `json:"sent"`
	Stored      uint64 `json:"stored"`
	Missing     uint64 `json:"missing"`
	Duplicates  uint64 `json:"duplicates"`
	OutOfOrder  uint64 `json:"outOfOrder"`
	Unexpected  bool   `json:"unexpected,omitempty"`
}

func (v *Verification) add(s StreamResult) {
	v.Streams = append(v.Streams, s)
	v.Sent += s.Sent
	v.Stored += s.Stored
	v.Missing += s.Missing
	v.Duplicates += s.Duplicates
	v.OutOfOrder += s.OutOfOrder
	if s.Unexpected {
		v.Unexpected++
	}
}

func (r *runner) summary(elapsed time.Duration) *Summary {
	s := &Summary{Calls: len(r.calls), Elapsed: elapsed, FramesSent: r.framesSent.Load()}
	for _, c := range r.calls {
		s.Streams += len(c.streams)
		n := int(c.sockets.Load())
		s.Sockets += n
		want := 1
		if r.cfg.Transcripts {
			want = 2
		}
		if n < want {
			s.CallsFailed++
		}
		s.OutboundAudio += c.outAudio.Load()
		s.OutboundStop += c.outStop.Load()
	}
	s.FramesPerSecond = float64(s.FramesSent) / elapsed.Seconds()
	r.errMu.Lock()
	s.Errors, s.FirstErrors = r.errCount, r.errs
	r.errMu.Unlock()
	return s
}

// WriteText prints the summary for people: totals, then every stream with a
// problem.
func (s *Summary) WriteText(w io.Writer) {
	fmt.Fprintf(w, "sim: %d calls (%d failed), %d streams, %d frames in %s (%.0f frames/s), %d errors\n",
		s.Calls, s.CallsFailed, s.Streams, s.FramesSent, s.Elapsed.Round(time.Millisecond), s.FramesPerSecond, s.Errors)
	for _, e := range s.FirstErrors {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	if s.OutboundAudio+s.OutboundStop > 0 {
		fmt.Fprintf(w, "  received from the receiver: %d audio, %d stop\n", s.OutboundAudio, s.OutboundStop)
	}
	v := s.Verify
	if v == nil {
		return
	}
	fmt.Fprintf(w, "verify: stored %d of %d frames: missing %d, duplicated %d, out of order %d; latency send→stored p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		v.Stored-v.Duplicates, v.Sent, v.Missing, v.Duplicates, v.OutOfOrder, v.LatencyP50ms, v.LatencyP99ms, v.LatencyMaxMS)
	fmt.Fprintf(w, "        transcripts %d/%d, dtmf %d/%d, sockets ended %d/%d\n",
		v.TranscriptsStored, v.TranscriptsSent, v.DtmfStored, v.DtmfSent, v.EndedSockets, v.Sockets)
	shown := 0
	for _, st := range v.Streams {
		if st.Missing+st.Duplicates+st.OutOfOrder == 0 && !st.Unexpected {
			continue
		}
		if shown++; shown > 20 {
			fmt.Fprintf(w, "  … more streams with problems (--json lists all)\n")
			break
		}
		fmt.Fprintf(w, "  %s %q: sent %d, stored %d, missing %d, duplicated %d, out of order %d%s\n", st.Call, st.Participant,
			st.Sent, st.Stored, st.Missing, st.Duplicates, st.OutOfOrder, map[bool]string{true: " (not sent by this run)"}[st.Unexpected])
	}
	if v.OK {
		fmt.Fprintln(w, "verify: OK")
	} else {
		fmt.Fprintln(w, "verify: FAILED")
	}
}
