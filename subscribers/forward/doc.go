// Package forward is the forwarder role: it hands every call to existing
// ACS-speaking WebSocket services, two-way. Each configured target gets its
// own socket per call, fed from the bus with the messages ACS itself would
// send (AudioMetadata, then AudioData; DtmfData and transcription when the
// target asks for them), and what a target sends back (AudioData,
// StopAudio) goes into the call through its outbound subject.
//
// Only configured targets are ever dialled: nothing in a call chooses or
// changes one. A slow or absent target holds up only its own socket, which
// has a bounded queue (the oldest dropped, counted) and is redialled with
// backoff and jitter, resuming at live audio.
package forward
