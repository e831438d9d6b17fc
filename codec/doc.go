// Package codec converts between the three representations audiofan deals in:
// the JSON messages Azure Communication Services sends over its media and
// transcription WebSockets, the MessagePack payloads published on the bus, and
// the subject tokens that carry call and participant ids safely inside NATS
// subjects, KV keys and file names.
//
// It is pure: bytes in, values out. It knows nothing of NATS, logging or
// contexts, so every other package (and any consumer written in Go) can use it.
//
// The AudioData path runs 50 times a second per participant, so it has a
// hand-written scanner and encoder that allocate nothing but the output
// buffer; every other message goes through encoding/json and msgpack/v5.
package codec
