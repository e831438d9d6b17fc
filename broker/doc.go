// Package broker is audiofan's side of NATS: it knows the subject scheme and
// the CALLS stream, runs the embedded server, and holds the receiver, the
// WebSocket endpoint ACS streams calls into, which turns every ACS message
// into a bus payload (see package codec) and publishes it to JetStream.
//
// The receiver keeps state per socket only (the metadata, sequence numbers
// and frame counts of that socket), so any replica can take any call.
package broker
