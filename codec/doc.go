// Package codec is the bus's data: the MessagePack payloads published on it
// (frames, transcripts, DTMF, lifecycle, events and their typed bodies,
// outbound audio), and the subject tokens that carry call and participant
// ids safely inside NATS subjects, KV keys and file names. The ACS wire
// format, what the receiver reads before it publishes, is codec/acs.
//
// It is pure: bytes in, values out. It knows nothing of NATS, logging or
// contexts, so every other package (and any consumer written in Go) can use it.
//
// Every subscriber decodes every frame, so frames have a hand-written
// encoder and decoder that allocate nothing but the output; every other
// payload goes through msgpack/v5.
package codec
