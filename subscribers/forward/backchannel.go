package forward

import (
	"errors"
	"io"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
)

// readBack reads what the target sends until the socket ends: AudioData
// and StopAudio, in any casing the SDKs emit, go into the call through its
// outbound subject, as the receiver holding the call's ACS socket relays
// them; anything else, or anything past AUDIOFAN_FORWARD_MAX_MESSAGE, is
// dropped and counted. Every target may speak: what each sends is relayed
// as it comes (speak=false mutes one).
func (l *link) readBack(conn *websocket.Conn) {
	limit := int64(l.f.cfg.MaxMessage)
	for {
		typ, r, err := conn.NextReader()
		if err != nil {
			return
		}
		data, err := io.ReadAll(io.LimitReader(r, limit+1))
		if err != nil {
			return
		}
		if int64(len(data)) > limit {
			_, _ = io.Copy(io.Discard, r) // the rest of it; the socket stays
			l.back(backTooLarge, "message from target too large; dropped", nil)
			continue
		}
		if typ != websocket.TextMessage {
			l.back(backInvalid, "binary message from target; dropped", nil)
			continue
		}
		if !l.t.Speak {
			l.back(backMuted, "", nil)
			continue
		}
		out, err := acs.ParseOutbound(data)
		if err == nil && out.Kind == acs.OutboundAudioData && (len(out.PCM) == 0 || len(out.PCM)%2 != 0) {
			err = errOddPCM
		}
		if err != nil {
			l.back(backInvalid, "message from target is not outbound audio ACS would take; dropped", err)
			continue
		}
		o := codec.Outbound{V: codec.Version, Kind: codec.OutboundKindStop, Data: []byte{}}
		if out.Kind == acs.OutboundAudioData {
			o.Kind, o.Data = codec.OutboundKindAudio, out.PCM
		}
		msg, err := codec.Marshal(&o)
		if err == nil {
			err = l.f.nc.Publish(l.f.pub.Outbound(l.c.info.Token), msg)
		}
		if err != nil {
			l.back(backFailed, "outbound from target not published", err)
			continue
		}
		l.back(backRelayed, "", nil)
	}
}

// back counts what became of a target's message, and logs a refusal
// (without flooding).
func (l *link) back(r backResult, warnMsg string, err error) {
	l.m.back[r].Inc()
	if warnMsg != "" {
		l.f.warn.Warn(warnMsg, "target", l.t.Name, "call", l.c.info.ID, "err", err)
	}
}

// errOddPCM: outbound audio that is not whole 16-bit samples.
var errOddPCM = errors.New("outbound audio of no samples, or not whole 16-bit samples")
