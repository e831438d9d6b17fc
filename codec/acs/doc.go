// Package acs is the wire format of Azure Communication Services' media and
// transcription WebSockets: the JSON messages ACS sends (AudioMetadata,
// AudioData, DtmfData, TranscriptionMetadata, TranscriptionData) and those
// it accepts back in bidirectional mode (AudioData, StopAudio).
//
// It is pure: bytes in, values out, and imports nothing of audiofan's. The
// AudioData path runs 50 times a second per participant, so it has a
// hand-written scanner that allocates nothing but the decoded audio; every
// other message goes through encoding/json. The encoders are what a fake ACS
// (sim, the tests) sends.
package acs
